"""A variant is a small frozen record; each bench file keeps a module-level list of them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from harness.axes import DTYPES, low_precision
from models.registry import ModelSpec
from optimizations.base import Runner


@dataclass(frozen=True)
class VariantContext:
    """What an apply function may need to know beyond the model and its example inputs."""

    device: str
    dtype: torch.dtype
    spec: ModelSpec
    image_size: int


@dataclass(frozen=True)
class Variant:
    name: str
    apply: Callable[..., Runner]  # apply(model, example_inputs, VariantContext) -> Runner
    check: str  # "exact" | "lowp" | "lossy" (harness.correctness.CHECKS)
    dtype: str = "fp32"  # fp32 | fp16 | bf16 | int8 | "lowp" (the device's fast 16-bit float)
    marks: tuple[str, ...] = ()  # registered marker names: gpu, slow, triton, ort, trt
    conv_only: bool = False
    compiles: bool = False  # subject to the profile's compile_models

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
        if self.conv_only and not spec.is_conv:
            return f"{self.name} applies to convolutional nets with 4-D image inputs; {spec.name} has none"
        return None
