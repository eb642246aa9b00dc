"""The suite's one training step: loss under autocast, backward (GradScaler-scaled for fp16 on CUDA), optimizer step.

Used by nn_speedups.optimizations.training (the training benches), nn_speedups.optimizations.distributed (DDP and
FSDP2 steps), nn_speedups.optimizations.finetune (fp32, no autocast) and nn_speedups.train (the training program).
What differs between them on purpose is a parameter:

- `init_scale`: the GradScaler's starting scale (2**16, torch's default; the distributed steps start at 2**10);
- `unscale`: unscale the gradients before the step, so they hold their true values afterwards (the distributed
  correctness check reads them);
- `zero_grad`: "before_forward" (the benches) or "before_backward" (the training program and the fine-tune), always
  with set_to_none=True.

Nothing here initializes CUDA: a GradScaler is built only for fp16 autocast on a CUDA device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

ZERO_GRAD = ("before_forward", "before_backward")
DEFAULT_INIT_SCALE = 2.0**16  # torch.amp.GradScaler's default


def default_amp_dtype(device_type: str) -> torch.dtype:
    """The autocast dtype of an `--amp` that names none: fp16 on CUDA (with a GradScaler), bf16 elsewhere."""
    return torch.float16 if device_type == "cuda" else torch.bfloat16


def grad_scaler(
    device_type: str, amp_dtype: torch.dtype | None, init_scale: float = DEFAULT_INIT_SCALE
) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 autocast on CUDA (fp16 gradients underflow without one); None for bf16, fp32 or a
    CPU."""
    if amp_dtype == torch.float16 and device_type == "cuda":
        return torch.amp.GradScaler(device_type, init_scale=init_scale)
    return None


class AmpStep:
    """One optimizer step of `optimizer` around a loss: `step(compute_loss, *inputs)` calls `compute_loss(*inputs)`
    (the forward and the loss) under autocast when `amp_dtype` is given, backpropagates, steps and returns the loss,
    detached.

    The order, as the callers had it: zero_grad(set_to_none=True) (before the forward or before the backward, per
    `zero_grad`), forward + loss under autocast, then with a scaler scale(loss).backward(), unscale_ (if `unscale`),
    scaler.step, scaler.update; without one loss.backward(), optimizer.step().
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        device_type: str = "cpu",
        amp_dtype: torch.dtype | None = None,
        *,
        init_scale: float = DEFAULT_INIT_SCALE,
        unscale: bool = False,
        zero_grad: str = "before_forward",
    ) -> None:
        if zero_grad not in ZERO_GRAD:
            raise ValueError(f"zero_grad {zero_grad!r}: valid: {', '.join(ZERO_GRAD)}")
        self.optimizer = optimizer
        self.device_type = device_type
        self.amp_dtype = amp_dtype
        self.unscale = unscale
        self.zero_grad = zero_grad
        self.scaler = grad_scaler(device_type, amp_dtype, init_scale)

    def autocast(self):
        """The autocast context of the forward pass (a null context without `amp_dtype`)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.amp_dtype)

    def __call__(self, compute_loss: Callable[..., torch.Tensor], *inputs) -> torch.Tensor:
        optimizer, scaler = self.optimizer, self.scaler
        if self.zero_grad == "before_forward":
            optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            loss = compute_loss(*inputs)
        if self.zero_grad == "before_backward":
            optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if self.unscale:
                scaler.unscale_(optimizer)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        return loss.detach()
