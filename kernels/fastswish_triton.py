"""FastSwish as one torch.library op, `nn_speedups::fastswish`, run by Triton kernels, with its autograd and ONNX path.

- torch.compile sees one opaque op (a fake implementation gives its output's shape, dtype and strides): no graph
  break. Its backward is a second op, `nn_speedups::fastswish_backward`; the forward saves only x.
- Which code runs is `backend_for(device)`: "triton" (compiled kernels, CUDA), "triton-interpreter" (the same
  kernels under TRITON_INTERPRET=1, on CPU tensors), or "custom-function-fallback" (no usable Triton: the custom
  autograd Function's torch math from nn_speedups.kernels.fastswish, with the same save-only-x backward). Set
  TRITON_INTERPRET before the first call: triton reads it once, when the kernels module is imported.
- fp16/bf16 are computed in fp32 and returned in the input dtype. Under autocast the op passes its input's dtype
  through (no autocast rule is registered), so it follows whatever dtype the previous layer produced.
- ONNX: pass `custom_translation_table=onnx_translation_table()` to `torch.onnx.export(..., dynamo=True)`, or call
  `export_onnx(model, args, path)`.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable

import torch

from nn_speedups.kernels.fastswish import JOINT, A, B, FastSwishLayer, fastswish_grad_values, fastswish_values

TRITON = "triton"
TRITON_INTERPRETER = "triton-interpreter"
FALLBACK = "custom-function-fallback"


@functools.cache
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def backend_for(device: torch.device | str) -> str:
    """What `nn_speedups::fastswish` runs on tensors of `device`: "triton", "triton-interpreter" or
    "custom-function-fallback". Asking does not import triton or initialize CUDA."""
    if not _triton_installed():
        return FALLBACK
    if os.environ.get("TRITON_INTERPRET") == "1":
        return TRITON_INTERPRETER
    return TRITON if torch.device(device).type == "cuda" else FALLBACK


def _kernels():
    from nn_speedups.kernels import fastswish_triton_kernels

    return fastswish_triton_kernels


def _check_floating(x: torch.Tensor) -> None:
    if not x.is_floating_point():
        raise TypeError(f"fastswish needs a floating-point tensor, got {x.dtype}")


def _as_output(values: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """`values` when it already has the layout the fake implementation promises (that of `out`), else copied in."""
    return values if values.stride() == out.stride() else out.copy_(values)


def _in_layout(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`t` with the strides of the dense tensor `like` (copied only when they differ), so one flat index walks both."""
    if t.stride() == like.stride() and t.dtype == like.dtype:
        return t
    return torch.empty_like(like).copy_(t)


@torch.library.custom_op("nn_speedups::fastswish", mutates_args=())
def fastswish_op(x: torch.Tensor) -> torch.Tensor:
    _check_floating(x)
    y = torch.empty_like(x)  # x's strides when x is dense and non-overlapping, else a dense layout
    if x.numel() == 0:
        return y
    if backend_for(x.device) == FALLBACK:
        return _as_output(fastswish_values(x), y)
    _kernels().launch_forward(_in_layout(x, y), y)
    return y


@fastswish_op.register_fake
def _fastswish_fake(x: torch.Tensor) -> torch.Tensor:
    _check_floating(x)
    return torch.empty_like(x)


@torch.library.custom_op("nn_speedups::fastswish_backward", mutates_args=())
def fastswish_backward_op(x: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    dx = torch.empty_like(x)
    if x.numel() == 0:
        return dx
    if backend_for(x.device) == FALLBACK:
        return _as_output(fastswish_grad_values(x, dy), dx)
    _kernels().launch_backward(_in_layout(x, dx), _in_layout(dy, dx), dx)
    return dx


@fastswish_backward_op.register_fake
def _fastswish_backward_fake(x: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


def _setup_context(ctx, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
    (x,) = inputs
    ctx.save_for_backward(x)  # only x: f'(x) is recomputed in the backward kernel


def _backward(ctx, dy: torch.Tensor) -> torch.Tensor:
    (x,) = ctx.saved_tensors
    return fastswish_backward_op(x, dy)


fastswish_op.register_autograd(_backward, setup_context=_setup_context)


def fastswish_triton(x: torch.Tensor) -> torch.Tensor:
    return fastswish_op(x)


class FastSwishTriton(FastSwishLayer):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fastswish_op(x)


def _fastswish_onnx(x):
    """The ONNX graph of f (ONNX Script ops): computed in fp32 for fp16/bf16 inputs, like the kernels."""
    from onnxscript import ir
    from onnxscript import opset18 as op

    low_precision = x.dtype in (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)
    x_c = op.Cast(x, to=ir.DataType.FLOAT) if low_precision else x
    a, b, joint, one = (op.CastLike(value, x_c) for value in (A, B, JOINT, 1.0))
    middle = op.Div(op.Mul(x_c, op.Add(x_c, a)), b)
    reciprocal = op.Div(one, x_c)
    left = op.Neg(op.Mul(reciprocal, reciprocal))
    y = op.Where(op.Greater(x_c, joint), x_c, op.Where(op.GreaterOrEqual(x_c, op.Neg(joint)), middle, left))
    return op.CastLike(y, x) if low_precision else y


def onnx_translation_table() -> dict[Callable, Callable]:
    """`custom_translation_table` for torch.onnx.export(..., dynamo=True) of models that contain the FastSwish op."""
    return {torch.ops.nn_speedups.fastswish.default: _fastswish_onnx}


def export_onnx(model: torch.nn.Module, args: tuple, f=None, **kwargs):
    """torch.onnx.export(model, args, f, dynamo=True) with FastSwish's translation merged into any caller's table."""
    table = {**onnx_translation_table(), **(kwargs.pop("custom_translation_table", None) or {})}
    return torch.onnx.export(model, args, f, dynamo=True, custom_translation_table=table, **kwargs)
