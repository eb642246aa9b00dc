"""nn_speedups.report renders the same report from a saved run, and compares two runs."""

import copy
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from nn_speedups import report
from tests.conftest import ROOT, run_suite


def test_report_from_a_saved_run(tiny_run, tmp_path):
    _, run, where = tiny_run
    out = tmp_path / "from-json"
    result = subprocess.run(
        [sys.executable, "-m", "nn_speedups.report", str(where / "run.json"), "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    md = out.with_suffix(".md").read_text()
    assert "### inference: resnet18 (cpu)" in md and "| eager-fp32 |" in md and "| compile-fp32 |" in md
    assert "BS 1 ms" in md and "BS 2 speedup" in md
    with open(out.with_suffix(".csv")) as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == len(run["benchmarks"])
    eager = next(r for r in csv_rows if r["name"] == "test_inference[resnet18-bs1-eager-fp32]")
    saved = next(b["extra_info"] for b in run["benchmarks"] if b["name"] == eager["name"])
    assert float(eager["median_ms"]) == saved["median_ms"]
    assert (tmp_path / "from-json-speedup.png").stat().st_size > 1000
    assert (tmp_path / "from-json-latency.png").stat().st_size > 1000


def test_two_runs_side_by_side_with_ratios(tiny_run, tmp_path):
    _, run, _ = tiny_run
    slower = copy.deepcopy(run)
    for bench in slower["benchmarks"]:
        bench["extra_info"]["median_ms"] *= 1.5
    text = report.render_tables(slower, baseline=run)
    assert "Compared with the baseline run" in text
    ratios = [line.split("|")[-2].strip() for line in text.splitlines() if line.startswith("| resnet18 |")]
    assert ratios and all(r == "1.500" for r in ratios)


def test_report_rejects_a_file_that_is_not_a_run(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"hello": 1}))
    result = subprocess.run(
        [sys.executable, "-m", "nn_speedups.report", str(bad)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2 and "not a pytest-benchmark JSON file" in result.stderr


def test_speedup_panels_split_a_family_by_bench_function_and_drop_baseline_only_ones():
    def row(name, variant, model, batch, speedup, family="fastswish", activation=None):
        return {"name": f"{name}[{model}-{variant}]", "family": family, "variant": variant, "dtype": "fp32",
                "model": model, "activation": activation, "batch_size": batch, "speedup_vs_eager": speedup}  # fmt: skip

    rows = [
        row("test_model_inference", "eager", "convnext-seed", 8, 1.0, activation="relu"),
        row("test_model_inference", "compile", "convnext-seed", 8, 1.3, activation="relu"),
        row("test_model_training", "vanilla", "convnext-seed", 16, 1.0, activation="relu"),
        row("test_inference", "eager", "resnet18", 1, 1.0, family="inference"),
        row("test_inference", "amp", "resnet18", 1, 1.5, family="inference"),
    ]
    grids = report.speedup_grid(rows)
    assert sorted(grids) == ["fastswish model inference", "inference"]  # training: its baseline alone
    labels, names, values = grids["fastswish model inference"]
    assert names == ["convnext-seed-relu bs8"] and values == [[1.0], [1.3]] and len(labels) == 2
    assert report.plot_speedups(rows[2:3], Path("unused.png")) is None


# ------------------------------------------------------------------------------------------ failed cases

FAILED = {
    "benches/test_onnxruntime.py::test_onnxruntime[resnet18-bs1-ort-int8-minmax-int8]": (
        "nn_speedups.measure.correctness.CorrectnessError: "
        "resnet18-bs1-ort-int8-minmax-int8 [lossy] SQNR 4.87 dB is below 20 dB"
    ),
    "benches/test_fastswish.py::test_model_inference[convnext-seed-fastswish-triton-bs8-compile-fp32]": (
        "torch._dynamo.exc.BackendCompilerFailed: backend='inductor' raised: boom"
    ),
    "benches/test_kernel.py::test_kernel[triton-fwd-fp32-n1M]": "AssertionError: assert 0.5 > 0.9",
}


def fake_run(failed: dict, passed: bool = True) -> dict:
    record = {"family": "onnxruntime", "model": "resnet18", "variant": "ort-cpu", "dtype": "fp32", "device": "cpu",
              "batch_size": 1, "median_ms": 2.0, "samples_per_s": 500.0, "speedup_vs_eager": 1.5,
              "peak_host_mb": 700.0, "check": "exact", "max_abs_err": 1e-6}  # fmt: skip
    benchmarks = [{"name": "test_onnxruntime[resnet18-bs1-ort-cpu-fp32]", "group": "onnxruntime/resnet18-bs1",
                   "extra_info": record}] if passed else []  # fmt: skip
    skipped = {"benches/test_inference.py::test_inference[resnet18-bs1-amp-fp16]": "amp-fp16 is GPU-only"}
    return {"machine_info": {}, "benchmarks": benchmarks, "nn_speedups": {"failed": failed, "skipped": skipped}}


def test_failure_reasons_are_one_trimmed_line():
    assert report.reason_line(FAILED[next(iter(FAILED))], "resnet18-bs1-ort-int8-minmax-int8") == (
        "[lossy] SQNR 4.87 dB is below 20 dB"
    )  # the suite's own error: its message, without the type or the case's id
    assert report.reason_line("Failed: resnet18-bs1-x: CUDA out of memory (peak 3 MB)\nmore", "resnet18-bs1-x") == (
        "CUDA out of memory (peak 3 MB)"
    )  # pytest.fail's one line
    assert report.reason_line("AssertionError: assert 0.5 > 0.9") == "assert 0.5 > 0.9"
    assert report.reason_line("onnxruntime.capi.onnxruntime_pybind11_state.Fail: [ShapeInferenceError] x") == (
        "Fail: [ShapeInferenceError] x"
    )  # another library's: its type without the module path
    assert report.reason_line("\n\n  RuntimeError: boom  \n") == "RuntimeError: boom"
    assert report.reason_line("") == "failed (no message)"
    assert len(report.reason_line("ValueError: " + "x" * 1000)) == 300


def test_failed_cases_get_a_section_in_the_tables_and_rows_in_the_csv(tmp_path):
    run = fake_run(FAILED)
    text = report.render_tables(run)
    section = text[text.index("### Failed cases (3)") :]
    assert "| onnxruntime | resnet18 | ort-int8-minmax-int8 | 1 | [lossy] SQNR 4.87 dB is below 20 dB |" in section
    assert "| fastswish | convnext-seed (fastswish-triton) | compile-fp32 | 8 | BackendCompilerFailed: " in section
    assert "| kernel | - | triton-fwd-fp32-n1M | - | assert 0.5 > 0.9 |" in section  # no case id: the test's own
    assert "1 skipped (see -rs)." in section
    assert "### onnxruntime: resnet18" in text  # the passed case's tables are as before
    paths = report.write_report(run, tmp_path / "r")
    assert "### Failed cases (3)" in (tmp_path / "r.md").read_text()
    with open(tmp_path / "r.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert [r["status"] for r in csv_rows] == ["passed", "failed", "failed", "failed"]
    assert csv_rows[0]["reason"] == "" and csv_rows[0]["median_ms"] == "2.0"
    failed = {r["name"]: r for r in csv_rows[1:]}
    int8 = failed["test_onnxruntime[resnet18-bs1-ort-int8-minmax-int8]"]
    assert (int8["family"], int8["model"], int8["variant"], int8["batch_size"]) == (
        "onnxruntime", "resnet18", "ort-int8-minmax-int8", "1"
    )  # fmt: skip
    assert int8["reason"] == "[lossy] SQNR 4.87 dB is below 20 dB" and int8["median_ms"] == ""
    assert failed["test_model_inference[convnext-seed-fastswish-triton-bs8-compile-fp32]"]["activation"] == (
        "fastswish-triton"
    )
    assert tmp_path / "r.csv" in paths


def test_a_run_where_every_case_failed_still_gets_its_report(tmp_path):
    run = fake_run(FAILED, passed=False)
    assert "### Failed cases (3)" in report.render_tables(run)
    paths = report.write_report(run, tmp_path / "r")
    assert {p.name for p in paths} == {"r.md", "r.csv"}  # no plots of nothing
    with open(tmp_path / "r.csv") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["failed"] * 3
    quiet = fake_run({})
    assert "Failed cases" not in report.render_tables(quiet) and "1 skipped (see -rs)." in report.render_tables(quiet)


FAILING_MODELS = '''
import torch
from torch import nn


class Noisy(nn.Module):
    """Not deterministic: eager against itself fails the exact check."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        return self.lin(x) + torch.randn(x.shape[0], 3)


def make_noisy():
    return Noisy().eval(), torch.randn(2, 4)


def make_steady():
    return nn.Linear(4, 3).eval(), torch.randn(2, 4)
'''


@pytest.mark.parametrize("models", [("steady", "noisy"), ("noisy",)], ids=["some-failed", "all-failed"])
def test_a_real_run_reports_its_failed_case_with_the_reason(models, tmp_path):
    (tmp_path / "team.py").write_text(FAILING_MODELS)
    args = [str(ROOT / "benches" / "test_inference.py"), "--rootdir", str(ROOT), "-k", "test_inference",
            "--batch-sizes", "1", "--variants", "eager,channels-last", "--report-dir", str(tmp_path / "reports"),
            "-rs"] + [a for m in models for a in ("--model", f"team:make_{m}")]  # fmt: skip
    result = run_suite(args, cwd=tmp_path, timeout=600)
    assert result.returncode == 1, result.stdout[-4000:] + result.stderr[-4000:]  # the noisy case failed
    reason = "| inference | noisy | eager-fp32 | 1 | [exact] differs from eager in "
    summary = result.stdout[result.stdout.index("nn-speedups report") :]
    assert "### Failed cases (1)" in summary and reason in summary  # the terminal summary
    assert f"{len(models)} skipped (see -rs)." in summary  # channels-last: no conv
    (md,) = (tmp_path / "reports").glob("*.md")
    assert reason in md.read_text()
    (csv_path,) = (tmp_path / "reports").glob("*.csv")
    with open(csv_path) as f:
        csv_rows = {r["name"]: r for r in csv.DictReader(f)}
    noisy = csv_rows["test_inference[noisy-bs1-eager-fp32]"]
    assert noisy["status"] == "failed" and noisy["reason"].startswith("[exact] differs from eager in")
    assert noisy["model"] == "noisy" and noisy["variant"] == "eager" and noisy["batch_size"] == "1"
    if "steady" in models:
        steady = csv_rows["test_inference[steady-bs1-eager-fp32]"]
        assert steady["status"] == "passed" and steady["reason"] == "" and float(steady["median_ms"]) > 0
    else:
        assert len(csv_rows) == 1
