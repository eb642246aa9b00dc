"""--traces for real, small: resnet18 at 32x32, batch 1, eager and compiled, traced through pytest; the traces
opened independently (gzip + JSON) and their events counted against what extra_info says; ONNX Runtime's session
profiling on a tiny graph; bad input; a profiler failure leaving the timing intact."""

from __future__ import annotations

import copy
import gzip
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from nn_speedups import report
from nn_speedups.trace import Tracer, chrome, engine_fields, slug, write_timeline
from nn_speedups.trace import report as trace_report
from nn_speedups.trace.breakdown import CATEGORIES, category, op_breakdown
from tests.conftest import ROOT, run_suite

PRICE = 2.5
# resnet18's layers, each called once per forward: what eager's dispatched compute calls must be
RESNET18_CALLS = {"aten::conv2d": 20, "aten::batch_norm": 20, "aten::relu_": 17, "aten::add_": 8, "aten::max_pool2d": 1,
                  "aten::adaptive_avg_pool2d": 1, "aten::linear": 1}  # fmt: skip


@pytest.fixture(scope="module")
def traced_run(tmp_path_factory):
    where = tmp_path_factory.mktemp("traced")
    out = where / "run.json"
    args = [str(ROOT / "benches" / "test_inference.py"), "--rootdir", str(ROOT), "-k", "test_inference",
            "--models", "resnet18", "--batch-sizes", "1", "--image-size", "32", "--variants", "eager,compile",
            "--weights", "random", "--traces", "all", "--price-per-hour", str(PRICE), f"--benchmark-json={out}",
            "--report-dir", str(where / "reports")]  # fmt: skip
    result = run_suite(args, cwd=where)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    run = json.loads(out.read_text())
    rows = {b["extra_info"]["variant"]: b["extra_info"] for b in run["benchmarks"]}
    return result, run, rows, where


def _in_steps(events: list[dict]) -> list[dict]:
    windows = [e for e in events if e.get("cat") == "user_annotation" and e["name"].startswith("ProfilerStep#")]
    return [e for e in events if e.get("ph") == "X" and any(w["ts"] <= e["ts"] <= w["ts"] + w["dur"] for w in windows)]


def _nested_duplicates(events: list[dict]) -> int:
    """cpu_op events directly inside a cpu_op of the same name (torch.profiler's events() merges such pairs)."""
    count = 0
    by_thread: dict = {}
    for e in events:
        if e.get("cat") == "cpu_op":
            by_thread.setdefault(e["tid"], []).append(e)
    for ops in by_thread.values():
        stack: list[dict] = []
        for e in sorted(ops, key=lambda e: (e["ts"], -e["dur"])):
            while stack and stack[-1]["ts"] + stack[-1]["dur"] < e["ts"] + e["dur"]:
                stack.pop()
            count += bool(stack) and stack[-1]["name"] == e["name"]
            stack.append(e)
    return count


def test_the_run_is_timed_and_traced_untimed(traced_run):
    _, _, rows, _ = traced_run
    assert set(rows) == {"eager", "compile"}
    for info in rows.values():
        assert "trace_error" not in info, info["trace_error"]
        assert info["median_ms"] > 0 and info["rounds"] >= 5 and info["trace_steps"] >= 1
        assert info["trace_s"] > 0 and info["traced_step_ms"] > 0


def test_the_chrome_trace_opens_and_its_events_match_extra_info(traced_run):
    _, _, rows, _ = traced_run
    for info in rows.values():
        with gzip.open(info["trace_file"], "rt") as f:
            events = json.load(f)["traceEvents"]
        inside = _in_steps(events)
        steps = sum(1 for e in inside if e.get("cat") == "user_annotation" and e["name"].startswith("ProfilerStep#"))
        assert steps == info["trace_steps"]
        counts = Counter(e.get("cat") for e in inside)
        said = info["trace_event_counts"]
        assert counts["python_function"] == said["python_function"] > 0
        assert counts["user_annotation"] == said["user_annotation"]
        assert counts["cpu_op"] - _nested_duplicates(inside) == said["cpu_op"]
        named = Counter(e["name"] for e in inside if e.get("cat") == "cpu_op")
        assert info["kernels_per_step"] == pytest.approx(sum(info["kernel_calls_per_step"].values()))
        if info["variant"] == "eager":
            assert info["kernel_calls_per_step"] == RESNET18_CALLS
            assert all(named[op] == n * steps for op, n in RESNET18_CALLS.items())
            assert "graph_count" not in info and info["roofline_bound"] in ("memory", "compute")
        else:
            # Inductor's C++ kernels: C calls under the generated wrapper, seen by the Python tracer
            cpp_calls = sum(1 for e in inside if e["name"] == "<built-in function kernel>")
            said_cpp = sum(n for k, n in info["kernel_calls_per_step"].items() if k.startswith("cpp_fused"))
            assert cpp_calls == said_cpp * steps > 0
            assert info["kernel_calls_per_step"]["aten::convolution"] == 20  # Inductor calls the convs as extern
            assert info["kernels_per_step"] < rows["eager"]["kernels_per_step"]  # fusion: fewer calls per step
            assert info["graph_count"] == 1 and info["graph_calls_per_step"] == 1
            distinct = {k for k in info["kernel_calls_per_step"] if k.startswith("cpp_fused")}
            assert len(distinct) <= info["generated_kernels"] <= said_cpp
            assert "roofline" in info["roofline_note"] or "compiled" in info["roofline_note"]


def test_tensorboard_run_and_flame_chart_are_written(traced_run):
    _, _, rows, _ = traced_run
    for info in rows.values():
        assert list(Path(info["trace_tb_dir"]).glob("*.pt.trace.json.gz"))
        png = Path(info["trace_flame_png"])
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_op_shares_sum_to_one_and_account_for_the_step(traced_run):
    _, _, rows, _ = traced_run
    for info in rows.values():
        shares = [info[f"{c}_share"] for c in CATEGORIES]
        assert sum(shares) == pytest.approx(1.0) and all(0 <= s <= 1 for s in shares)
        assert 0.2 < info["op_share_of_step"] <= 1.0
        assert sum(info["op_ms_per_step"].values()) == pytest.approx(info["op_ms_per_step_total"], rel=1e-3)
        ranked = [o["ms_per_step"] for o in info["top_ops"]]
        assert ranked == sorted(ranked, reverse=True) and len(ranked) <= 10
    assert rows["eager"]["matmul_share"] > 0.3  # resnet18 is convolutions
    assert rows["compile"]["fused_share"] > 0  # time inside Inductor's generated kernels


def test_price_and_energy_fields(traced_run):
    _, run, rows, _ = traced_run
    for info in rows.values():
        expected = PRICE / 3600 * (info["median_ms"] / 1e3 / info["batch_size"]) * 1e6
        assert info["usd_per_million_samples"] == pytest.approx(expected)
        assert "joules_per_sample" in info and "avg_watts" in info
    energy = run["machine_info"]["energy"]
    if energy["cpu"] is None:  # no readable RAPL here: null, and machine_info says why
        assert energy["cpu_reason"] and all(info["joules_per_sample"] is None for info in rows.values())
    assert run["machine_info"]["cpu_llc_bytes"] > 0 and run["machine_info"]["nn_speedups"]["traces"] == "all"


def test_report_links_the_traces(traced_run):
    result, _, _, where = traced_run
    assert "### Where the time goes (traced cases)" in result.stdout
    md = next((where / "reports").glob("*.md"))
    text = md.read_text()
    assert "Roofline position" in text and "Energy, clocks and cost" in text
    links = [line.split("](", 1)[1].split(")", 1)[0] for line in text.split("[png")[1:]]
    assert len(links) == 2 and all((md.parent / link).exists() for link in links)
    assert (md.parent / md.stem / "traces").is_dir()  # the report and its traces share the run's name


def test_trace_cli_summarizes_and_draws(traced_run, tmp_path):
    _, _, rows, where = traced_run
    trace = rows["compile"]["trace_file"]
    out = subprocess.run([sys.executable, "-m", "nn_speedups.trace", "summarize", trace, "--json"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    said_cpp = sum(n for k, n in rows["compile"]["kernel_calls_per_step"].items() if k.startswith("cpp_fused"))
    assert (
        summary["inductor_cpp_kernel_calls_per_step"] == said_cpp and summary["steps"] == rows["compile"]["trace_steps"]
    )
    shown = subprocess.run([sys.executable, "-m", "nn_speedups.trace", "show", str(where / "run.json")], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert shown.returncode == 0 and "Where the time goes" in shown.stdout and "resnet18 bs1 compile" in shown.stdout
    png = tmp_path / "step.png"
    drawn = subprocess.run([sys.executable, "-m", "nn_speedups.trace", "flame", trace, "--out", str(png)], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert drawn.returncode == 0 and png.stat().st_size > 5000, drawn.stderr


def test_comparison_names_the_operators_that_grew(traced_run):
    _, run, _, _ = traced_run
    slower = copy.deepcopy(run)
    for bench in slower["benchmarks"]:
        info = bench["extra_info"]
        if info["variant"] == "compile":
            info["median_ms"] *= 1.5
            grown = info["top_ops"][0]["op"]
            info["op_ms_per_step"][grown] += 7.0
    text = report.render_tables(slower, baseline=run)
    assert "What got slower: operators whose time grew most" in text
    section = text.split("What got slower")[1]
    assert "resnet18 bs1 compile-fp32" in section and f"| {grown} |" in section and "+7.000" in section
    assert "eager-fp32:" not in section  # eager did not slow down


@pytest.mark.parametrize(
    "args, message",
    [
        (["--traces", "no-such-case"], "--traces 'no-such-case' matches no collected benchmark case"),
        (["--trace", "all"], "--trace is pytest's own (break into pdb at every test); to profile cases use --traces"),
        (["--price-per-hour", "-1"], "--price-per-hour -1.0: give the machine's price in USD per hour"),
    ],
)
def test_bad_trace_input_is_a_usage_error(args, message, tmp_path):
    bench = str(ROOT / "benches" / "test_inference.py")
    result = run_suite([bench, "--rootdir", str(ROOT), "--collect-only", "-q", *args], cwd=tmp_path)
    assert result.returncode == 4, result.stdout[-2000:] + result.stderr[-2000:]
    assert message in result.stderr


def test_an_unwritable_trace_folder_is_a_usage_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    bench = str(ROOT / "benches" / "test_inference.py")
    args = [bench, "--rootdir", str(ROOT), "--collect-only", "-q", "--traces", "all", "--report-dir", str(blocker)]
    result = run_suite(args, cwd=tmp_path)
    assert result.returncode == 4 and "--traces: cannot write traces under" in result.stderr, result.stderr[-2000:]


# ------------------------------------------------------------------------------------------- in-process, small


def test_a_failing_profiler_is_recorded_and_raises_nothing(tmp_path):
    tracer = Tracer.create(tmp_path, "run", "all")
    calls = []

    def step():
        calls.append(1)
        raise RuntimeError("the step broke under the profiler")

    fields = tracer.trace("benches/test_x.py::test_y[case]", step, lambda: None, "cpu", {"median_ms": 1.0})
    assert fields["trace_error"] == "RuntimeError: the step broke under the profiler" and calls
    assert "top_ops" not in fields and fields["trace_s"] >= 0


def test_an_engine_profile_failure_keeps_torchs_breakdown(tmp_path):
    class Runner:
        def engine_profile(self, *args):
            raise OSError("no profile file")

    tracer = Tracer.create(tmp_path, "run", "all")
    model, x = torch.nn.Linear(16, 16), torch.randn(4, 16)
    with torch.inference_mode():
        fields = tracer.trace("t[linear]", lambda: model(x), lambda: None, "cpu", {"median_ms": 0.1}, Runner(), (x,))
    assert fields["trace_error"] == "engine profile: OSError: no profile file"
    assert fields["kernel_calls_per_step"] == {"aten::linear": 1.0} and "aten::addmm" in fields["op_ms_per_step"]


def _tiny_onnx(path: Path) -> Path:
    """Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm on a 1x3x8x8 input, written with onnx.helper."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {"w": rng.standard_normal((4, 3, 3, 3)), "fc": rng.standard_normal((2, 4)), "b": np.zeros(2)}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc", "b"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), path)
    return path


def test_onnxruntime_session_profiling_into_the_breakdown(tmp_path):
    pytest.importorskip("onnxruntime", reason="needs onnxruntime: pip install -e .")
    from types import SimpleNamespace

    from nn_speedups.optimizations import onnxruntime as ort_

    path = _tiny_onnx(tmp_path / "tiny.onnx")
    artifact = SimpleNamespace(path=path, files=(path,))
    runner = ort_.apply(None, (), ort_.OrtConfig(graph_level="disabled", intra_op_threads=1), artifact)
    inputs = runner.prepare((torch.randn(1, 3, 8, 8),))
    profile = runner.engine_profile(inputs, 3, tmp_path, "tiny")
    assert profile["steps"] == 3 and profile["step_ms"] > 0
    ops = Counter(o["op"] for o in profile["ops"])
    assert ops == {"Conv": 3, "Relu": 3, "GlobalAveragePool": 3, "Flatten": 3, "Gemm": 3}
    conv = next(o for o in profile["ops"] if o["op"] == "Conv")
    assert conv["bytes"] == 4 * (3 * 8 * 8 + 4 * 3 * 3 * 3 + 4 * 8 * 8)  # x and w in, c out, float32
    events = chrome.load(profile["trace_file"])  # the gzipped ORT profile, opened independently
    assert sum(1 for e in events if e.get("name") == "model_run") == 4  # one warm-up + 3 profiled runs
    fields = engine_fields(profile, None, cuda=False)
    assert fields["kernels_per_step"] == 5 and fields["kernels_counted"] == "ONNX Runtime node kernels"
    assert fields["top_ops"][0]["op"] in ops and sum(fields[f"{c}_share"] for c in CATEGORIES) == pytest.approx(1)
    assert fields["_bytes_per_step"] == sum(o["bytes"] for o in profile["ops"]) / 3


def test_tensorrt_layer_times_become_a_timeline_and_a_breakdown(tmp_path):
    from nn_speedups.optimizations.tensorrt import layer_types

    info = json.dumps({"Layers": [{"Name": "conv1 + relu1", "LayerType": "CaskConvolution"},
                                  {"Name": "reformat", "LayerType": "Reformat"}]})  # fmt: skip
    types = layer_types(info)
    assert (
        types == {"conv1 + relu1": "CaskConvolution", "reformat": "Reformat"} and layer_types('{"Layers": ["a"]}') == {}
    )
    ops = [{"name": n, "op": types[n], "us": us, "bytes": None, "run": r}
           for r in range(2) for n, us in (("conv1 + relu1", 300.0), ("reformat", 100.0))]  # fmt: skip
    fields = engine_fields(
        {"source": "tensorrt", "steps": 2, "ops": ops, "kernels_counted": "TensorRT layers"}, 0.5, True
    )
    assert fields["matmul_share"] == pytest.approx(0.75) and fields["memcpy_share"] == pytest.approx(0.25)
    assert fields["op_share_of_step"] == pytest.approx(0.4 / 0.5) and "kernels_per_step" not in fields  # GPU: CUPTI's
    timeline = write_timeline(ops, 2, tmp_path / "trt.json.gz")
    summary = chrome.summarize(timeline)
    assert summary["steps"] == 2 and summary["top_ops"][0]["op"] == "conv1 + relu1"
    assert summary["op_ms_per_step_total"] == pytest.approx(0.4)


def test_categories_of_operator_and_kernel_names():
    expected = {
        "aten::addmm": "matmul", "aten::_slow_conv2d_forward": "matmul", "QLinearConv": "matmul",
        "sm90_xmma_gemm_f32f32_tf32f32_f32_nn_n": "matmul", "triton_tem_fused_mm_2": "matmul",
        "aten::add_": "elementwise", "aten::relu_": "elementwise", "triton_poi_fused_add_relu_0": "elementwise",
        "QLinearAdd": "elementwise", "DequantizeLinear": "elementwise", "aten::hardswish": "elementwise",
        "aten::copy_": "memcpy", "Memcpy HtoD (Pageable -> Device)": "memcpy", "ReorderOutput": "memcpy",
        "Reformatting CopyNode for Input Tensor 0 to conv1": "memcpy", "aten::_to_copy": "memcpy",
        "cpp_fused_add_relu_3": "fused", "aten::native_batch_norm": "other", "triton_red_fused_mean_1": "other",
        "aten::native_layer_norm": "other", "Softmax": "other",
    }  # fmt: skip
    assert {name: category(name) for name in expected} == expected


def test_breakdown_arithmetic():
    fields = op_breakdown(
        [("aten::mm", 600.0), ("aten::add", 200.0), ("aten::mm", 600.0), ("aten::sum", 600.0)], 2, 1.0
    )
    assert fields["op_ms_per_step"] == {"aten::mm": 0.6, "aten::sum": 0.3, "aten::add": 0.1}
    assert fields["matmul_share"] == pytest.approx(0.6) and fields["other_share"] == pytest.approx(0.3)
    assert fields["top_ops"][0] == {"op": "aten::mm", "ms_per_step": 0.6, "share": 0.6, "calls_per_step": 1.0,
                                    "category": "matmul"}  # fmt: skip
    assert fields["op_share_of_step"] == pytest.approx(1.0)


def test_trace_file_names_are_unique_per_test():
    assert slug("benches/test_inference.py::test_activation[convnext-seed-relu-bs1-eager-fp32]") == (
        "test_inference.test_activation.convnext-seed-relu-bs1-eager-fp32"
    )
    assert (
        slug("benches/test_fastswish.py::test_kernel[relu-fwd-fp32-n64K]")
        == "test_fastswish.test_kernel.relu-fwd-fp32-n64K"
    )


def test_seed_001_kernel_table_comes_from_traced_activation_rows():
    compiled = {"graph_count": 1, "generated_kernels": 9}
    rows = [
        {"model": "convnext-seed", "activation": act, "variant": variant, "dtype": "fp32", "batch_size": 1,
         "family": "inference", "median_ms": 1.0, "kernels_per_step": k, "kernels_counted": "CUDA kernel events",
         **(compiled if variant == "compile" else {})}
        for act, variant, k in ((None, "eager", 300), (None, "compile", 40), ("relu", "compile", 50))
    ]  # fmt: skip
    ((title, table),) = trace_report.activation_kernels(rows)
    assert title.startswith("convnext-seed: kernels per step by activation")
    assert "| gelu-tanh | 1 | 300 | 40 | 1 | 9 |" in table and "| relu | 1 | - | 50 | 1 | 9 |" in table


def test_graph_counts_are_per_variant_not_per_process():
    """Dynamo's counters survive torch._dynamo.reset(): each compiled Runner reports what it compiled itself."""
    from nn_speedups.optimizations import compile as compile_
    from nn_speedups.optimizations.base import NotEngagedError

    class Breaks(torch.nn.Module):
        def forward(self, x):
            y = x.relu()
            torch._dynamo.graph_break()
            return y + 1

    broken = compile_.apply(Breaks(), (torch.randn(4),), compile_.CompileConfig())
    broken(torch.randn(4))
    with pytest.raises(NotEngagedError):
        broken.verify()
    for _ in range(2):  # after a variant with a break and two graphs, a clean one still has 1 graph and no break
        runner = compile_.apply(torch.nn.Linear(4, 4), (torch.randn(2, 4),), compile_.CompileConfig())
        runner(torch.randn(2, 4))
        runner.verify()
        assert runner.info["graphs"] == 1 and runner.info["graph_breaks"] == 0
