"""What every optimization returns: a Runner, the callable that is checked and timed."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn


def _same(inputs: tuple) -> tuple:
    return inputs


@dataclass
class Runner:
    """`fn(*prepare(inputs))` computes the model's outputs the optimized way.

    prepare: one-off input conversion (memory format, dtype, device copies) done before timing, not inside it.
    model: the module that runs, for its size and parameter count (None for engines outside PyTorch).
    artifact_files: files that make up a deployable artifact (an .onnx and its external data), for model size.
    verify: raises when the optimization did not engage (graph breaks, silent provider fallback...); called after
        the first run.
    info: facts worth keeping with the result (graph count, provider, fallback reasons...).
    device_memory: "torch" when torch's CUDA allocator holds the memory, "nvml" for engines torch cannot see.
    engine_profile: for engines outside PyTorch, `engine_profile(prepared_inputs, steps, out_dir, name)` runs the
        inputs `steps` times (after one warm-up) under the engine's own profiler (ONNX Runtime's session profiling,
        TensorRT's IProfiler) and returns {"source", "steps", "ops": [{"name", "op", "us", "bytes"}], "trace_file",
        "kernels_counted"}; used by nn_speedups.trace in its untimed pass, never while timing.
    fields: figures the optimization measured itself, kept in the record as they are (not prefixed like info) and
        taking precedence over the harness's generic ones: e.g. a pruned model's own params and gflops, build_s,
        the top-1 before and after a fine-tune.
    """

    fn: Callable[..., Any]
    prepare: Callable[[tuple], tuple] = _same
    model: nn.Module | None = None
    artifact_files: tuple[str, ...] = ()
    verify: Callable[[], None] = lambda: None
    info: dict = field(default_factory=dict)
    device_memory: str = "torch"
    engine_profile: Callable[..., dict] | None = None
    fields: dict = field(default_factory=dict)

    def __call__(self, *inputs: Any) -> Any:
        return self.fn(*inputs)


class NotEngagedError(AssertionError):
    """An optimization ran but did not do what it claims (e.g. a graph break or a silent fallback)."""


# Engines outside PyTorch whose own exceptions end a case in one line (nn_speedups/measure/protocol.py: run_case), by
# the root of the exception type's module (ONNX Runtime's are onnxruntime.capi.onnxruntime_pybind11_state.Fail and kin)
ENGINES = ("onnxruntime", "tensorrt", "openvino", "polygraphy", "torch_tensorrt")
_SOURCE = re.compile(r"\S+\.(?:cc|cpp|cxx|h|hpp|cu):\d+\s*")  # a C++ source location
_SIGNATURE = re.compile(r"(?:\w+(?:<[^<>]*>)?::)+~?\w+\((?:[^()]|\([^()]*\))*\)(?:\s*const)?\s*")  # ns::f(args)
_QUALIFIED = re.compile(r"(?<!\S)(?:\w+::)+\w+(?!\S)\s*")  # a return type such as onnxruntime::common::Status


def engine_of(error: BaseException) -> str | None:
    """The engine an exception comes from (one of ENGINES), or None for any other exception."""
    root = (type(error).__module__ or "").split(".")[0]
    return root if root in ENGINES else None


def engine_message(error: BaseException, limit: int = 400) -> str:
    """An engine's exception cut to what matters, on one line: ONNX Runtime's status and message (the node it ran,
    its status message) without the C++ source locations and signatures."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    text = re.sub(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*([A-Z_]+)\s*:\s*", r"\1: ", text)
    text = _QUALIFIED.sub("", _SIGNATURE.sub("", _SOURCE.sub("", text)))
    text = re.sub(r"\s+", " ", text).strip() or type(error).__name__
    return text if len(text) <= limit else text[:limit] + " ..."
