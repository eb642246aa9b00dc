"""What this machine can do, asked once and cached. Nothing here initializes CUDA or imports heavy optional packages."""

from __future__ import annotations

import functools
import importlib.util
import os
import shlex
import shutil
import sys


@functools.cache
def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@functools.cache
def sm_at_least(major: int, minor: int = 0) -> bool:
    if not has_cuda():
        return False
    import torch

    return torch.cuda.get_device_capability() >= (major, minor)


@functools.cache
def has_module(name: str) -> bool:
    """True when `name` can be imported, found without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def can_run_triton() -> bool:
    """Triton kernels run on a CUDA device, or on the CPU under TRITON_INTERPRET=1."""
    return has_module("triton") and (has_cuda() or triton_interpreted())


@functools.cache
def ort_providers() -> tuple[str, ...]:
    """ONNX Runtime's execution providers (imports onnxruntime: call at test time, never during collection)."""
    if not has_module("onnxruntime"):
        return ()
    import onnxruntime

    return tuple(onnxruntime.get_available_providers())


def _ort_provider(name: str):
    return lambda: has_cuda() and name in ort_providers()


# requirement marker -> (check, reason shown when it skips)
REQUIREMENTS = {
    "gpu": (has_cuda, "needs a CUDA device (torch.cuda.is_available() is False)"),
    "triton": (can_run_triton, "needs triton and a CUDA device, or TRITON_INTERPRET=1 on a CPU"),
    "ort": (
        lambda: has_module("onnxruntime"),
        "needs onnxruntime: pip install -e '.[ort]' (or .[ort-gpu] on a CUDA machine)",
    ),
    "ort_cuda": (
        _ort_provider("CUDAExecutionProvider"),
        "needs a CUDA device and onnxruntime's CUDAExecutionProvider (onnxruntime-gpu: pip install -e '.[ort-gpu]')",
    ),
    "ort_trt": (
        _ort_provider("TensorrtExecutionProvider"),
        "needs a CUDA device, onnxruntime-gpu's TensorrtExecutionProvider and TensorRT's libraries "
        "(pip install -e '.[ort-gpu,trt]')",
    ),
    "trt": (lambda: has_module("tensorrt"), "needs tensorrt: pip install -e .[trt] (from NVIDIA's package index)"),
    "torchrun": (lambda: torchrun_problem() is None, lambda: torchrun_problem()),
    "torchao": (
        lambda: has_module("torchao"),
        "needs torchao: pip install -e . (or pip install 'torchao>=0.18,<0.19')",
    ),
    "pruning": (
        lambda: has_module("torch_pruning"),
        "needs torch-pruning: pip install -e . (or pip install torch-pruning)",
    ),
    "sm80": (lambda: sm_at_least(8, 0), "needs a CUDA GPU of compute capability >= 8.0 (2:4 sparse tensor cores)"),
}


def missing_requirement(marker: str) -> str | None:
    """The skip reason when requirement `marker` is not met, else None."""
    check, reason = REQUIREMENTS[marker]
    if check():
        return None
    return reason() if callable(reason) else reason


def require_module(name: str, extra: str = "") -> None:
    """Raise a clear ImportError naming the fix when an optional package is missing."""
    if not has_module(name):
        hint = f"pip install -e .[{extra}]" if extra else f"pip install {name}"
        raise ImportError(f"this needs the optional package {name!r}: {hint}")


# torchrun, for the `torchrun` requirement marker and nn_speedups.distributed's launcher


class TorchrunMissing(RuntimeError):
    """torchrun cannot be launched here; the message names the fix."""


def torchrun_command() -> list[str]:
    """The torchrun to launch: $TORCHRUN when set (a command line), else `python -m torch.distributed.run` with
    this interpreter (torchrun's own module, so the ranks run the same Python and torch as this process)."""
    override = os.environ.get("TORCHRUN")
    if override:
        parts = shlex.split(override)
        if not parts or shutil.which(parts[0]) is None:
            raise TorchrunMissing(
                f"TORCHRUN={override!r}: no such executable; point TORCHRUN at torchrun (e.g. .venv/bin/torchrun) or "
                "unset it to use this Python's torch.distributed.run"
            )
        return parts
    import torch

    if not torch.distributed.is_available():
        raise TorchrunMissing(
            "this torch build has no torch.distributed (torch.distributed.is_available() is False): install the "
            "registry's default torch wheel (pip install torch)"
        )
    return [sys.executable, "-m", "torch.distributed.run"]


def torchrun_problem() -> str | None:
    """Why torchrun jobs cannot run here, or None (the `torchrun` requirement marker)."""
    try:
        torchrun_command()
    except TorchrunMissing as error:
        return str(error)
    return None
