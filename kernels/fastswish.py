"""FastSwish (seed 001): the float64-capable reference, a custom autograd Function that saves only x, and modules.

    f(x) = x                  for x > 3
    f(x) = x (x + a) / b      for -3 <= x <= 3        a = 42/13, b = 81/13
    f(x) = -1 / x^2           for x < -3

Continuous at both joints (f(3) = 3, f(-3) = -1/9); the derivative jumps there. At x = -3 and x = 3 this module uses
the middle branch's derivative (the middle interval is closed), which is what autograd through the reference gives.
"""

from __future__ import annotations

import torch
from torch import nn

A = 42.0 / 13.0
B = 81.0 / 13.0
JOINT = 3.0
MINIMUM_AT = -21.0 / 13.0  # f'(x) = (2x + a) / b = 0

LOW_PRECISION = (torch.float16, torch.bfloat16)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp16 and bf16 are computed in fp32 (as the seed did); fp32 and fp64 in themselves."""
    return torch.float32 if dtype in LOW_PRECISION else dtype


def fastswish_reference(x: torch.Tensor) -> torch.Tensor:
    """f(x) in plain torch ops, in x's own dtype (float64 included); autograd differentiates it.

    Each branch is fed x only where it is the branch taken (elsewhere a harmless constant), so the branches that
    torch.where does not pick stay finite and autograd's 0 * (their derivative) stays 0: fed x everywhere, -1/x^2
    gives a NaN gradient at x = 0 or wherever x * x underflows. (Not clamp: its gradient is 0 at the clamp bounds,
    which would lose the slope at x = -3 and x = 3.) NaN reaches the x < -3 branch and propagates.
    """
    middle_x = torch.where((x >= -JOINT) & (x <= JOINT), x, 0.0)
    left_x = torch.where(x >= -JOINT, -JOINT, x)
    middle = middle_x * (middle_x + A) / B
    left = -left_x.pow(-2)
    return torch.where(x > JOINT, x, torch.where(x >= -JOINT, middle, left))


def fastswish_values(x: torch.Tensor) -> torch.Tensor:
    """f(x) without autograd bookkeeping: computed in compute_dtype(x.dtype), returned in x.dtype."""
    x_c = x.to(compute_dtype(x.dtype))
    reciprocal = 1.0 / x_c  # only the x < -3 branch is kept, where it is finite
    y = torch.where(x_c > JOINT, x_c, torch.where(x_c >= -JOINT, x_c * (x_c + A) / B, -(reciprocal * reciprocal)))
    return y.to(x.dtype)


def fastswish_grad_values(x: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """dx = dy * f'(x), computed in compute_dtype(x.dtype), returned in x.dtype.

    f'(x) = 1                for x > 3          (f = x)
    f'(x) = (2x + a) / b     for -3 <= x <= 3   (f = (x^2 + a x) / b); zero at x = -a/2 = -21/13, the minimum
    f'(x) = 2 / x^3          for x < -3         (f = -x^-2, so f' = 2 x^-3)
    """
    x_c = x.to(compute_dtype(x.dtype))
    reciprocal = 1.0 / x_c
    slope = torch.where(x_c > JOINT, 1.0, torch.where(x_c >= -JOINT, (2.0 * x_c + A) / B, 2.0 * reciprocal**3))
    return (dy.to(x_c.dtype) * slope).to(x.dtype)


class FastSwishFunction(torch.autograd.Function):
    """Custom backward that saves only the input x (the seed's memory saving): dx = dy * f'(x)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return fastswish_values(x)

    @staticmethod
    def backward(ctx, dy: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return fastswish_grad_values(x, dy)


def fastswish_custom(x: torch.Tensor) -> torch.Tensor:
    if not x.is_floating_point():
        raise TypeError(f"fastswish needs a floating-point tensor, got {x.dtype}")
    return FastSwishFunction.apply(x)


class FastSwishLayer(nn.Module):
    """Common base of the FastSwish modules, so that model surgery can find any of them."""


class FastSwishReference(FastSwishLayer):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fastswish_reference(x)


class FastSwishCustom(FastSwishLayer):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fastswish_custom(x)
