"""FastSwish's Triton kernels and their launchers. This module imports triton: import it only to launch.

Whether the kernels are compiled for the GPU or run by Triton's interpreter (on CPU tensors) is fixed when this
module is first imported, by TRITON_INTERPRET=1 in the environment (triton.jit reads it when it decorates).
The launchers take dense tensors that share one memory layout and map over their raw storage, element by element.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from nn_speedups.kernels.fastswish import JOINT, A, B, compute_dtype

BLOCK = 1024
TRITON_DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64}


@triton.jit
def fastswish_forward_kernel(
    x_ptr, y_ptr, n, A: tl.constexpr, B: tl.constexpr, JOINT: tl.constexpr, COMPUTE: tl.constexpr, BLOCK: tl.constexpr
):
    # One pass: read x, write y = f(x); fp16/bf16 are computed in fp32.
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(COMPUTE)
    middle_x = tl.minimum(tl.maximum(x, -JOINT), JOINT)  # x where -3 <= x <= 3; no overflow elsewhere
    middle = middle_x * (middle_x + A) / B
    reciprocal = 1.0 / tl.where(x >= -JOINT, -JOINT, x)  # 1/x where x < -3 (and NaN); no 1/0 elsewhere
    left = -(reciprocal * reciprocal)  # x < -3: -1 / x^2, without overflowing x * x
    y = tl.where(x > JOINT, x, tl.where(x >= -JOINT, middle, left))
    tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def fastswish_backward_kernel(
    x_ptr,
    dy_ptr,
    dx_ptr,
    n,
    A: tl.constexpr,
    B: tl.constexpr,
    JOINT: tl.constexpr,
    COMPUTE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # One pass: read x and dy, write dx = dy * f'(x).
    #   x > 3:         f = x                -> f'(x) = 1
    #   -3 <= x <= 3:  f = (x^2 + a x) / b  -> f'(x) = (2x + a) / b     (0 at x = -a/2 = -21/13, the minimum)
    #   x < -3:        f = -x^-2            -> f'(x) = 2 x^-3 = 2 / x^3
    # At the joints x = -3 and x = 3 the middle branch's slope is taken, as autograd through the reference does
    # (f is continuous there, f' jumps: at 3 from 120/81 to 1, at -3 from -2/27 to -36/81).
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(COMPUTE)
    dy = tl.load(dy_ptr + offsets, mask=mask, other=0.0).to(COMPUTE)
    reciprocal = 1.0 / tl.where(x >= -JOINT, -JOINT, x)  # 1/x where x < -3 (and NaN); no 1/0 elsewhere
    middle_x = tl.minimum(tl.maximum(x, -JOINT), JOINT)  # x where -3 <= x <= 3; no overflow elsewhere
    middle_slope = (2.0 * middle_x + A) / B
    left_slope = 2.0 * reciprocal * reciprocal * reciprocal
    slope = tl.where(x > JOINT, 1.0, tl.where(x >= -JOINT, middle_slope, left_slope))
    tl.store(dx_ptr + offsets, (dy * slope).to(dx_ptr.dtype.element_ty), mask=mask)


def _grid(n: int) -> tuple[int]:
    return (triton.cdiv(n, BLOCK),)


def launch_forward(x: torch.Tensor, y: torch.Tensor) -> None:
    """y = f(x); x and y dense with identical strides, n = x.numel() > 0."""
    n = x.numel()
    compute = TRITON_DTYPES[compute_dtype(x.dtype)]
    fastswish_forward_kernel[_grid(n)](x, y, n, A, B, JOINT, compute, BLOCK)


def launch_backward(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> None:
    """dx = dy * f'(x); x, dy and dx dense with identical strides, n = x.numel() > 0."""
    n = x.numel()
    compute = TRITON_DTYPES[compute_dtype(x.dtype)]
    fastswish_backward_kernel[_grid(n)](x, dy, dx, n, A, B, JOINT, compute, BLOCK)
