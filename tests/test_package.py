"""The suite as a package: a wheel built from the repository installs one top-level package and nothing generic, an
installed suite stays out of other projects' pytest sessions, its benches load the plugin from a user's own folder,
old names fail in one line naming the new one, and torchrun ranks import the package that launched them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

import nn_speedups
from tests.conftest import PACKAGE_FOLDERS, ROOT


def tracked_code() -> set[str]:
    """The repository's code files as the wheel names them: benches/x.py -> nn_speedups/benches/x.py."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", *PACKAGE_FOLDERS],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if listed.returncode != 0:
        pytest.skip("needs the repository's git checkout to list its files")
    names = {n for n in listed.stdout.split() if n.endswith(".py")}
    return {n if n.startswith("nn_speedups/") else f"nn_speedups/{n}" for n in names}


def test_the_wheel_installs_one_top_level_package_with_every_code_file(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(info).decode()
        entry_points = archive.read(info.replace("METADATA", "entry_points.txt")).decode()
    tops = {n.split("/", 1)[0] for n in names}
    assert tops == {"nn_speedups", info.split("/", 1)[0]}, tops
    missing = tracked_code() - set(names)
    assert not missing, f"code files the wheel leaves out: {sorted(missing)}"
    assert f"Version: {nn_speedups.__version__}" in metadata  # one version source
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: MIT" in metadata
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    base = [r for r in requires if "extra ==" not in r]
    assert base and not any("hypothesis" in r or "onnxruntime" in r for r in base), base  # self-test / flavour deps
    assert any(r.startswith("Requires-Dist: onnxruntime>") and 'extra == "ort"' in r for r in requires)
    assert any(r.startswith("Requires-Dist: onnxruntime-gpu") and 'extra == "ort-gpu"' in r for r in requires)
    assert "nn-speedups = nn_speedups.cli:main" in entry_points
    assert "nn_speedups = nn_speedups.pytest_plugin" in entry_points


THROWAWAY_CONFTEST = """
import sys

def pytest_addoption(parser):
    parser.addoption("--device", default="their-device")
    parser.addoption("--profile", action="store_true")
    parser.addoption("--model", default="their-model")

def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: their own gpu marker")
"""

THROWAWAY_TESTS = """
import sys

import pytest

import models  # the project's own models/ package, not the suite's
from harness import NAME  # and its own harness/


def test_own_options(pytestconfig):
    assert pytestconfig.getoption("--device") == "cpu-please"
    assert pytestconfig.getoption("--profile") is True
    assert pytestconfig.getoption("--model") == "their-model"
    assert models.OWN and NAME == "theirs"


@pytest.mark.gpu
def test_marked_gpu_runs_here():
    assert True


def test_the_suite_imported_nothing_heavy():
    heavy = sorted(m for m in ("torch", "torchvision", "onnxruntime", "nn_speedups.plugin") if m in sys.modules)
    assert not heavy, heavy
"""


@pytest.fixture
def throwaway(tmp_path) -> Path:
    """Another project: its own conftest with --device/--profile/--model, tests marked gpu, models/ and harness/."""
    project = tmp_path / "their_project"
    (project / "models").mkdir(parents=True)
    (project / "models" / "__init__.py").write_text("OWN = True\n")
    (project / "harness").mkdir()
    (project / "harness" / "__init__.py").write_text("NAME = 'theirs'\n")
    (project / "conftest.py").write_text(THROWAWAY_CONFTEST)
    (project / "test_theirs.py").write_text(THROWAWAY_TESTS)
    (project / "pytest.ini").write_text("[pytest]\naddopts = --strict-markers\n")
    return project


def session(python: Path, args: list[str], cwd: Path, installed: Path, timeout: int = 600):
    env = {**os.environ, "PYTHONPATH": str(installed)}
    env.pop("PYTEST_ADDOPTS", None)
    command = [str(python), "-m", "pytest", "-p", "no:cacheprovider", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_an_installed_suite_stays_out_of_another_projects_session(bare_python, installed, throwaway):
    result = session(bare_python, ["--device", "cpu-please", "--profile", "-v"], throwaway, installed)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "3 passed" in result.stdout and "skipped" not in result.stdout
    helped = session(bare_python, ["--help"], throwaway, installed)
    assert helped.returncode == 0 and "--batch-sizes" not in helped.stdout  # none of the suite's options


def test_the_installed_benches_load_the_plugin_and_the_old_form_names_the_new(bare_python, installed, tmp_path):
    shown = session(bare_python, ["--pyargs", "nn_speedups.benches.test_inference", "--help"], tmp_path, installed)
    assert shown.returncode == 0 and "--batch-sizes" in shown.stdout, shown.stdout[-2000:] + shown.stderr[-2000:]
    old = session(bare_python, ["--pyargs", "benches.test_inference", "--model", "m:f"], tmp_path, installed)
    assert old.returncode == 4
    assert "nn-speedups: the installed benches are now nn_speedups.benches" in old.stderr
    assert "pytest --pyargs nn_speedups.benches.test_inference" in old.stderr
    assert "Traceback" not in old.stderr


def test_nothing_generic_is_importable_and_the_cli_runs(bare_python, installed, tmp_path):
    code = textwrap.dedent(
        """
        import importlib.util, sys
        import nn_speedups.models, nn_speedups.kernels.fastswish, nn_speedups.optimizations.base
        print("FILE", nn_speedups.models.__file__)
        print("GENERIC", [n for n in ("models", "harness", "optimizations", "benches") if importlib.util.find_spec(n)])
        """
    )
    env = {**os.environ, "PYTHONPATH": str(installed)}
    result = subprocess.run([str(bare_python), "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"FILE {installed / 'nn_speedups' / 'models' / '__init__.py'}" in result.stdout
    assert "GENERIC []" in result.stdout
    cli = [str(bare_python), "-m", "nn_speedups.cli", "--help"]
    helped = subprocess.run(cli, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert helped.returncode == 0 and "gate" in helped.stdout and "trace" in helped.stdout
    bad = subprocess.run([*cli[:-1], "gates"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown command 'gates'" in bad.stderr


RANK = """
import os, sys
import nn_speedups.models
print("RANK", os.environ.get("RANK"), nn_speedups.__file__, flush=True)
"""


def test_a_rank_imports_the_installed_package_that_launched_it(bare_python, installed, tmp_path):
    """The launcher found the suite only on its own sys.path (no PYTHONPATH): the ranks get the folder it came from."""
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(installed)!r})
        from nn_speedups.distributed import launch
        result = launch([{str(script)!r}], nproc=2, timeout_s=240)
        print(result.returncode)
        print(result.stdout)
        print(result.stderr[-2000:], file=sys.stderr)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [str(bare_python), "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.splitlines()[0] == "0", result.stdout[-3000:] + result.stderr[-3000:]
    where = installed / "nn_speedups" / "__init__.py"
    for rank in ("0", "1"):
        assert f"RANK {rank} {where}" in result.stdout


@pytest.mark.parametrize(
    "module, new",
    [("harness.gate", "nn_speedups.gate"), ("harness.report", "nn_speedups.report")],
)
def test_an_old_module_name_fails_in_one_line_naming_the_new(module, new):
    result = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0
    assert f"{module} -> {new}" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
