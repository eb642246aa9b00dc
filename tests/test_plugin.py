"""The suite run for real, small: the saved JSON's fields, the report, bad input, and what collection must not do."""

import json
import re
import subprocess
import sys

import pytest
import torch

from nn_speedups.core.capabilities import has_cuda
from tests.conftest import ROOT, run_suite

REQUIRED_FIELDS = {
    "model", "variant", "device", "dtype", "batch_size", "rounds", "median_ms", "p90_ms", "p99_ms", "samples_per_s",
    "speedup_vs_eager", "peak_device_mb", "peak_host_mb", "params", "gflops", "compile_s", "model_size_mb",
}  # fmt: skip


def test_saved_run_has_every_field(tiny_run):
    _, run, _ = tiny_run
    names = {b["name"] for b in run["benchmarks"]}
    assert {"test_inference[resnet18-bs1-eager-fp32]", "test_inference[resnet18-bs2-compile-fp32]"} <= names
    for bench in run["benchmarks"]:
        info = bench["extra_info"]
        assert REQUIRED_FIELDS <= set(info), REQUIRED_FIELDS - set(info)
        assert info["model"] == "resnet18" and info["device"] == "cpu" and info["rounds"] >= 5
        assert info["median_ms"] > 0
        # quick profile: resnet18 is trained once on the synthetic set (a 10-class head) for the accuracy columns
        assert info["weights"].endswith("last.pt") and info["params"] == 11_689_512 - 513 * 990
        assert 0.1 < info["top1"] <= info["top5"] and info["eval_images"] > 0
        assert info["inputs"] == "evaluation images of synthetic"  # a trained model is checked on its data
        assert info["samples_per_s"] == pytest.approx(info["batch_size"] / info["median_ms"] * 1e3)
        assert info["speedup_vs_eager"] == pytest.approx(info["eager_median_ms"] / info["median_ms"])
        assert info["peak_device_mb"] is None and info["peak_host_mb"] > 100
        assert info["gflops"] > 0 and info["model_size_mb"] > (40 if info["dtype"] == "fp32" else 20)
        assert bench["group"] == f"inference/resnet18-bs{info['batch_size']}" and info["family"] == "inference"
        # eager run twice on the same images: reported, whatever it is (a CPU's fp32 conv is usually bitwise stable)
        assert isinstance(info["eager_deterministic"], bool) and info["eager_repeat_max_abs"] >= 0
        assert info["model_load_s"] > 0 and info["compile_s"] > 0  # the two parts of a cold start this case has
        assert info["eager_deterministic"] == (info["eager_repeat_max_abs"] == 0)


def test_eager_is_its_own_baseline_and_others_share_it(tiny_run):
    _, run, _ = tiny_run
    by_name = {b["name"]: b["extra_info"] for b in run["benchmarks"]}
    eager = by_name["test_inference[resnet18-bs2-eager-fp32]"]
    assert eager["speedup_vs_eager"] == 1.0
    half = by_name["test_inference[resnet18-bs2-half-bf16]"]
    assert half["eager_median_ms"] == eager["median_ms"]
    assert half["dtype"] == "bf16" and half["check"] == "lowp" and half["cosine"] >= 0.99
    assert half["model_size_mb"] < eager["model_size_mb"] / 1.9


def test_compiled_variant_records_compile_time_and_no_graph_breaks(tiny_run):
    _, run, _ = tiny_run
    info = next(b["extra_info"] for b in run["benchmarks"] if b["extra_info"]["variant"] == "compile")
    assert info["compile_s"] > 1.0 and info["info_graph_breaks"] == 0 and info["info_graphs"] >= 1
    assert info["check"] == "exact"


def test_machine_info_is_saved(tiny_run):
    _, run, _ = tiny_run
    machine = run["machine_info"]
    assert machine["versions"]["torch"] == torch.__version__.split("+")[0] or machine["versions"]["torch"]
    assert "cpu_isa" in machine and "cpu_model" in machine and "gpu_name" in machine
    assert machine["nn_speedups"] == {"profile": "quick", "device": "cpu", "image_size": 32}


def test_gpu_only_variant_skips_with_a_reason(tiny_run):
    result, _, _ = tiny_run
    if has_cuda():
        pytest.skip("this machine has CUDA")
    assert "amp-fp16 is GPU-only: needs a CUDA device" in result.stdout


def test_end_of_run_report_is_printed_and_written(tiny_run):
    result, _, where = tiny_run
    assert "nn-speedups report" in result.stdout and "### inference: resnet18 (cpu)" in result.stdout
    outcome = result.stdout.strip().splitlines()[-1]  # "=== 10 passed, 3 skipped, 8 deselected in 42.29s ==="
    passed, skipped = (int(re.search(rf"(\d+) {what}", outcome)[1]) for what in ("passed", "skipped"))
    assert f"[family 1/1] inference: {passed} cases to run, {skipped} skipped" in result.stdout  # the plan held
    written = sorted(p.name for p in (where / "reports").iterdir())
    assert any(n.endswith(".md") for n in written) and any(n.endswith(".csv") for n in written)
    assert any(n.endswith("-speedup.png") for n in written) and any(n.endswith("-latency.png") for n in written)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--models", "resnet18,alexnet"], "--models: unknown alexnet; valid: bert-base, convnext-seed"),
        (["--variants", "eager,turbo"], "--variants: unknown turbo; valid: amp, amp-bf16, amp-fp16"),
        (["--profile", "fast"], "argument --profile: invalid choice: 'fast'"),
        (["--batch-sizes", "1,x"], "--batch-sizes '1,x': give positive integers"),
        (["--image-size", "100"], "--image-size 100: give a positive multiple of 32"),
    ],
)
def test_bad_input_is_a_usage_error_naming_the_valid_values(args, message, tmp_path):
    result = run_suite([str(ROOT / "benches"), "--rootdir", str(ROOT), "--collect-only", "-q", *args], cwd=tmp_path)
    assert result.returncode == 4, result.stdout + result.stderr
    assert message in result.stderr


def test_cuda_device_without_cuda_is_a_clear_error(tmp_path):
    if has_cuda():
        pytest.skip("this machine has CUDA")
    result = run_suite([str(ROOT / "benches"), "--rootdir", str(ROOT), "--collect-only", "--device", "cuda"], tmp_path)
    assert result.returncode == 4
    assert "--device cuda asked for, but this machine has no usable CUDA device" in result.stderr


def test_collection_neither_initializes_cuda_nor_imports_heavy_engines():
    code = (
        "import sys, pytest, torch\n"
        f"code = pytest.main(['-q', '--collect-only', '-p', 'no:cacheprovider', '--rootdir', {str(ROOT)!r}, "
        f"{str(ROOT / 'benches')!r}])\n"
        "assert code == 0, code\n"
        "assert not torch.cuda.is_initialized(), 'CUDA initialized during collection'\n"
        "heavy = [m for m in ('onnxruntime', 'tensorrt') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_a_graph_break_fails_the_compiled_variant():
    from nn_speedups.optimizations import compile as compile_
    from nn_speedups.optimizations.base import NotEngagedError

    class Breaks(torch.nn.Module):
        def forward(self, x):
            y = x.relu()
            torch._dynamo.graph_break()
            return y + 1

    runner = compile_.apply(Breaks(), (torch.randn(4),), compile_.CompileConfig())
    runner(torch.randn(4))
    with pytest.raises(NotEngagedError, match="graph break"):
        runner.verify()


def test_full_profile_runs_the_deployment_tables_batch_sizes(tmp_path):
    bench = str(ROOT / "benches" / "test_onnxruntime.py")
    args = [bench, "--rootdir", str(ROOT), "--collect-only", "-q", "--profile", "full", "--variants", "ort-cpu"]
    ids = run_suite(args, cwd=tmp_path).stdout
    for batch in (1, 4, 8, 16, 32):  # seed 004's table
        assert f"[densenet121-bs{batch}-ort-cpu-fp32]" in ids
    for batch in (1, 8, 32, 64, 128, 256):  # seed 002's BERT sweep
        assert f"[bert-base-bs{batch}-ort-cpu-fp32]" in ids
    assert "[resnet50-bs64-ort-cpu-fp32]" in ids and "[resnet50-bs4-ort-cpu-fp32]" not in ids  # the profile's
    explicit = run_suite([*args, "--batch-sizes", "2"], cwd=tmp_path).stdout  # --batch-sizes wins everywhere
    assert "[densenet121-bs2-ort-cpu-fp32]" in explicit and "bs256" not in explicit


def test_training_bench_checks_losses_and_times_the_data_pipeline_apart(tmp_path):
    out = tmp_path / "train.json"
    args = [str(ROOT / "benches" / "test_training.py"), "--rootdir", str(ROOT), "-k", "test_training[",
            "--models", "resnet50", "--image-size", "64", "--batch-sizes", "8", "--variants", "vanilla,fused-adamw",
            f"--benchmark-json={out}", "--report-dir", str(tmp_path / "reports")]  # fmt: skip
    result = run_suite(args, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    rows = {b["extra_info"]["variant"]: b["extra_info"] for b in json.loads(out.read_text())["benchmarks"]}
    assert set(rows) == {"vanilla", "fused-adamw"}
    for info in rows.values():
        assert info["loss_last"] < info["loss_first"] and abs(info["loss_drift"]) <= 0.02
        assert info["images_per_s"] == pytest.approx(8 / info["median_ms"] * 1e3)
        assert info["epoch_s_projected"] == pytest.approx(100_000 / info["images_per_s"])
        assert info["data_source"] == "synthetic" and info["data_workers"] == 0 and info["data_images_per_s"] > 0
        assert info["data_epoch_s_projected"] == pytest.approx(100_000 / info["data_images_per_s"])
        # no loader workers on a CPU: the loader runs in the training process, so its time adds to the step's
        total = info["epoch_s_projected"] + info["data_epoch_s_projected"]
        assert info["epoch_s_projected_with_data"] == pytest.approx(total)
    assert rows["fused-adamw"]["speedup_vs_eager"] == pytest.approx(
        rows["vanilla"]["median_ms"] / rows["fused-adamw"]["median_ms"]
    )
    assert "Data pipeline, timed apart from the step (synthetic, 0 loader workers)" in result.stdout


def test_smoke_profile_lists_every_gpu_only_path_and_on_a_cpu_skips_each_with_its_reason(tmp_path):
    if has_cuda():
        pytest.skip("this machine has CUDA: the smoke profile would run the GPU paths")
    result = run_suite([str(ROOT / "benches"), "--rootdir", str(ROOT), "--profile", "smoke", "-q"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    out = result.stdout
    summary = out[out.index("nn-speedups smoke: every GPU-only path") :]
    for case in ("test_inference[resnet18-bs2-compile-cudagraphs-fp32]", "test_inference[resnet18-bs2-amp-fp16]",
                 "test_onnxruntime[resnet18-bs2-ort-cuda-fp32]", "test_onnxruntime[resnet18-bs2-ort-trt-fp16]",
                 "test_tensorrt[resnet18-bs2-trt-int8]", "test_training[convnext-seed-bs4-tf32-fp32]",
                 "test_compression[bert-base-bs2-sparse-2to4-fp16]",
                 "test_distributed[convnext-seed-bs4-fsdp2-fp32-ws1]"):  # fmt: skip
        assert f"skipped  {case}: " in summary and "GPU-only: needs a CUDA device" in summary, case
    assert "test_kernel[triton-fwd-fp32-n1M]: the smoke profile times the compiled Triton kernels" in summary
    assert "-bs2-half-" not in out and "test_kernel[relu" not in out  # paths that run on a CPU are not listed
    assert " passed" not in out.splitlines()[-1]  # nothing ran on this CPU


def test_progress_lines_name_each_family_with_an_estimate_of_what_is_left():
    from nn_speedups.plugin.progress import RunProgress

    cases = {"a1": ("inference", True), "a2": ("inference", True), "a3": ("inference", False), "b1": ("ort", True)}
    progress = RunProgress(cases, previous={"b1": 30.0})
    first = progress.starting("a1")
    assert first.startswith("[family 1/2] inference: 2 cases to run, 1 skipped") and "after the first cases" in first
    assert progress.starting("a2") is None  # one line per family
    progress.finished("a1", 10.0)
    progress.finished("a2", 20.0)
    assert progress.left_s() == 30.0  # b1's time in the earlier run
    assert progress.starting("b1").endswith("about 30s left")
    fresh = RunProgress(cases)
    fresh.finished("a1", 12.0)
    assert fresh.left_s() == 24.0  # a2 at inference's mean so far, b1 at the mean of everything finished
    fresh.finished("a3", 0.001)  # skipped at collection: its near-zero time must not pull the means down
    assert fresh.left_s() == 24.0
    primed = RunProgress(cases, prior={"inference": 5.0, "ort": 2.0})  # a fresh clone: no earlier run
    primed.finished("a1", 10.0)  # this machine took twice the prior's time for inference
    assert primed.left_s() == 10.0 + 4.0  # a2 at inference's mean so far, b1 at the prior scaled by 2


USER_MODEL_OPTIONS = ("--model", "--onnx", "--onnx-dim", "--onnx-inputs", "--onnx-input")


def test_rerun_args_carry_every_value_of_the_repeatable_user_model_options(pytester):
    """nn_speedups.gate --confirm re-runs cases in a fresh pytest process with the saved rerun_args: a user model
    run's repeatable options go with them, one `--opt value` pair per value in the order given, so the re-run
    registers the same models under the same node ids."""
    from nn_speedups.plugin import rerun_args

    given = ["--models", "resnet18,mine=my_model:make_model", "--model", "my_model:make_model",
             "--model", "bert=hf:./bert-folder", "--onnx", "asr=asr.onnx", "--onnx", "b.onnx",
             "--onnx-dim", "sequence=128", "--onnx-dim", "frames=50", "--onnx-inputs", "asr-inputs.npz",
             "--onnx-inputs", "b-inputs.npz", "--onnx-input", "sr=16000", "--onnx-input", "k=3",
             "--seq-len", "16"]  # fmt: skip
    config = pytester.parseconfig("-p", "nn_speedups.plugin", *given)  # a real Config: the plugin's own parser
    args = rerun_args(config)
    assert args == [*given, "-p", "nn_speedups.plugin"]
    again = pytester.parseconfig(*args)  # what the re-run's pytest parses
    for option in ("--models", "--seq-len", *USER_MODEL_OPTIONS):
        assert again.getoption(option) == config.getoption(option), option
    assert len(again.getoption("--onnx-input")) == 2

    plain = pytester.parseconfig("-p", "nn_speedups.plugin", "--models", "resnet18", "--batch-sizes", "1")
    assert rerun_args(plain) == ["--models", "resnet18", "--batch-sizes", "1", "-p", "nn_speedups.plugin"]
