"""The project's own files: workflows lint clean, CI runs the README's test command."""

import shutil
import subprocess

import pytest

from tests.conftest import ROOT

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def test_both_workflows_exist():
    assert {p.name for p in WORKFLOWS} >= {"ci.yml", "gpu-bench.yml"}


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_lints_against_the_github_schema(workflow):
    tool = shutil.which("check-jsonschema") or str(ROOT / ".venv" / "bin" / "check-jsonschema")
    if not shutil.which(tool):
        pytest.skip("needs check-jsonschema: pip install -e .[dev]")
    result = subprocess.run(
        [tool, "--builtin-schema", "vendor.github-workflows", str(workflow)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_gpu_workflow_saves_a_baseline_on_main_and_gates_pull_requests_with_the_gate():
    text = " ".join((ROOT / ".github" / "workflows" / "gpu-bench.yml").read_text().split())
    assert "self-hosted" in text
    # main: the baseline, saved with its rounds; pull requests: the head run with its rounds, gated by nn_speedups.gate
    assert "--benchmark-autosave --benchmark-save-data" in text
    assert "--benchmark-save-data --benchmark-json reports/head.json" in text
    gate = text[text.index("-m nn_speedups.gate .benchmarks reports/head.json") :]
    assert '--summary "$GITHUB_STEP_SUMMARY"' in gate.split("- name:")[0]
    assert "--json reports/gate.json" in gate.split("- name:")[0]
    assert "--confirm" in gate.split("- name:")[0]
    upload = text[text.index("name: gate-verdicts") - 200 :]
    assert "actions/upload-artifact" in upload and "path: reports/gate.json" in upload
    # the stock option stays documented where users look
    stock = "--benchmark-compare --benchmark-compare-fail=median:10%"
    assert stock in text and stock in (ROOT / "README.md").read_text()


def test_make_bench_keeps_round_data_for_the_gate():
    makefile = (ROOT / "Makefile").read_text()
    assert "--benchmark-autosave --benchmark-save-data" in makefile
    assert "nn_speedups.gate --aa-study" in makefile


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make test" in ci
    assert "make bench" in readme


def test_gpu_workflow_installs_tensorrt_keeps_caches_and_can_run_the_smoke_profile():
    text = " ".join((ROOT / ".github" / "workflows" / "gpu-bench.yml").read_text().split())
    assert text.count("make setup EXTRAS=dev,ort-gpu,trt") == 2  # both jobs: trt-* and ort-cuda rows on the GPU runner
    assert "TORCHINDUCTOR_CACHE_DIR" in text and ".cache/inductor artifacts" in text
    assert "make gpu-smoke EXTRAS=dev,ort-gpu,trt" in text
    makefile = (ROOT / "Makefile").read_text()
    smoke = makefile.split("\ngpu-smoke:")[1].split("\n\n")[0]
    assert "--profile smoke" in smoke and "-m nn_speedups.gate .benchmarks/smoke" in smoke
