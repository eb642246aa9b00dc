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


def test_gpu_workflow_saves_a_baseline_on_main_and_gates_pull_requests():
    text = (ROOT / ".github" / "workflows" / "gpu-bench.yml").read_text()
    assert "--benchmark-autosave" in text
    assert "--benchmark-compare --benchmark-compare-fail=median:10%" in " ".join(text.split())
    assert "self-hosted" in text


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make test" in ci
    assert "make bench" in readme
