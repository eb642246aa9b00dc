"""harness.report renders the same report from a saved run, and compares two runs."""

import copy
import csv
import json
import subprocess
import sys
from pathlib import Path

from harness import report
from tests.conftest import ROOT


def test_report_from_a_saved_run(tiny_run, tmp_path):
    _, run, where = tiny_run
    out = tmp_path / "from-json"
    result = subprocess.run(
        [sys.executable, "-m", "harness.report", str(where / "run.json"), "--out", str(out)],
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
        [sys.executable, "-m", "harness.report", str(bad)], cwd=ROOT, capture_output=True, text=True, timeout=120
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
