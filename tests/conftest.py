"""Self-test fixtures: the real suite run in a fresh interpreter, and the Triton interpreter switch."""

import json
import os
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
