"""A variant is a small frozen record; each bench file keeps a module-level list of them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from nn_speedups.matrix.axes import DTYPES, Profile, low_precision
from nn_speedups.models.registry import ModelSpec
from nn_speedups.optimizations.base import Runner


@dataclass(frozen=True)
class VariantContext:
    """What an apply function may need to know beyond the model and its example inputs."""

    device: str
    dtype: torch.dtype
    spec: ModelSpec
    image_size: int
    data: str = "synthetic"  # the data source, for calibration images
    profile: Profile | None = None  # the run's profile (e.g. its fine-tune steps)
    eval_samples: int = 128  # evaluation images for accuracy (variants that measure it while they build)
    weights: str = "random"  # where the baseline's weights came from ("random" or a file)


@dataclass(frozen=True)
class Variant:
    name: str
    apply: Callable[..., Runner]  # apply(model, example_inputs, VariantContext) -> Runner
    check: str  # "exact" | "lowp" | "lossy" (nn_speedups.measure.correctness.CHECKS)
    dtype: str = "fp32"  # fp32 | fp16 | bf16 | int8 | "lowp" (the device's fast 16-bit float)
    marks: tuple[str, ...] = ()  # registered marker names: gpu, slow, triton, ort, trt
    only: str | None = None  # a ModelSpec tag the model must carry, e.g. "conv" or "nlp"
    compiles: bool = False  # subject to the profile's compile_models
    onnx_file: bool = False  # also runs on a model given as an ONNX file (--onnx), which has no torch model
    trained_only: bool = False  # judged by top-1 on labelled images: skipped where the weights are not trained
    vs_compiled: bool = False  # also report speedup_vs_compiled (over the same model compiled, uncompressed)

    def dtype_name(self, device: str) -> str:
        return low_precision(device) if self.dtype == "lowp" else self.dtype

    def torch_dtype(self, device: str) -> torch.dtype:
        return DTYPES[self.dtype_name(device)]

    def label(self, device: str) -> str:
        """Readable id part: the variant name, with its dtype appended unless the name already ends with it."""
        dtype = self.dtype_name(device)
        return self.name if self.name.endswith(dtype) else f"{self.name}-{dtype}"

    def unsuitable(self, spec: ModelSpec) -> str | None:
        """Why this variant does not apply to `spec`, or None."""
        if "onnx-file" in spec.tags and not self.onnx_file:
            return (
                f"{self.name} needs a torch model; {spec.name} is an ONNX file (--onnx): the ONNX Runtime and "
                "TensorRT benches run it, against ONNX Runtime fp32"
            )
        if self.only and self.only not in spec.tags:
            what = {"conv": "convolutional nets with 4-D image inputs", "nlp": "transformer language models"}
            return f"{self.name} applies to {what.get(self.only, self.only + ' models')}; {spec.name} is not one"
        return None


def eager_runner(model, example_inputs: tuple, ctx: VariantContext) -> Runner:
    own = getattr(model, "eager_runner", None)  # a module that runs outside PyTorch (an ONNX file's session)
    return own(example_inputs, ctx) if own is not None else Runner(fn=model, model=model)


def compile_runner(model, example_inputs: tuple, ctx: VariantContext) -> Runner:
    from nn_speedups.optimizations import compile as compile_

    return compile_.apply(model, example_inputs, compile_.CompileConfig(device=ctx.device))


# Every bench file times eager fp32 in its own groups: the baseline of its speedups.
EAGER = Variant("eager", eager_runner, check="exact")
COMPILE = Variant("compile", compile_runner, check="exact", compiles=True)
