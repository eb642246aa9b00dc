"""Self-test fixtures: the real suite run in a fresh interpreter, and the Triton interpreter switch."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent

# The Triton kernels' proofs run on every machine: compiled on CUDA, in triton's interpreter on CPU tensors elsewhere.
# Triton decides at decoration time, and the kernels module is imported lazily on first use, so setting the variable
# here, before any test module runs, is early enough. An explicit TRITON_INTERPRET (0 or 1) is left as it is.
if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"


def run_suite(args: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run the real suite in a fresh interpreter (a new pytest session with the plugin), from `cwd`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One real, small inference run: resnet18 at 32x32, batch 1 and 2, a few variants, saved as JSON."""
    where = tmp_path_factory.mktemp("tiny_run")
    out = where / "run.json"
    result = run_suite(
        [
            str(ROOT / "benches" / "test_inference.py"),
            "--rootdir",
            str(ROOT),
            "-k",
            "test_inference",
            "--models",
            "resnet18",
            "--batch-sizes",
            "1,2",
            "--image-size",
            "32",
            "--variants",
            "eager,compile,amp-bf16,half,amp-fp16,channels-last",
            f"--benchmark-json={out}",
            "--report-dir",
            str(where / "reports"),
            "-rs",
        ],
        cwd=where,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result, json.loads(out.read_text()), where


# the repository's files a built wheel must hold (under nn_speedups/), as `git ls-files` would list them
PACKAGE_FOLDERS = ("nn_speedups", "benches", "kernels", "models", "optimizations")


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """The suite built as a wheel by pip (setuptools, no network), from a copy of the sources it packages."""
    pytest.importorskip("pip", reason="building the suite's wheel needs pip")
    where = tmp_path_factory.mktemp("wheel")
    source = where / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    for folder in PACKAGE_FOLDERS:
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    command = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    result = subprocess.run([*command, "-w", str(where / "dist"), str(source)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return next((where / "dist").glob("nn_speedups-*.whl"))


@pytest.fixture(scope="session")
def installed(wheel, tmp_path_factory) -> Path:
    """That wheel installed by pip into a folder of its own (`pip install --target`): a site-packages to put on
    PYTHONPATH, holding the suite as a user's environment would."""
    site = tmp_path_factory.mktemp("installed") / "site"
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site)]
    result = subprocess.run([*command, str(wheel)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return site


@pytest.fixture(scope="session")
def bare_python(tmp_path_factory) -> Path:
    """An interpreter that sees this environment's packages (torch, pytest, ...) but not the suite: a venv whose only
    path entry is the environment's site-packages, added without running its .pth files (so the editable install's
    finder, which maps nn_speedups to this checkout, is not active). The suite is there only where PYTHONPATH says."""
    import site
    import venv

    where = tmp_path_factory.mktemp("bare") / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(where)
    python = where / "bin" / "python"
    own = subprocess.run(
        [str(python), "-c", "import site; print(site.getsitepackages()[0])"], capture_output=True, text=True
    ).stdout.strip()
    Path(own, "environment.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python
