"""One training step (forward, cross-entropy, backward, AdamW step) with the speed-ups of the seeds' training
tables: torch.compile, AMP (bf16 on a CPU; fp16 with a GradScaler on CUDA), TF32, channels-last, fused AdamW.

The seed's recipe: AdamW lr 3e-4, weight decay 0.01, cross-entropy.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nn_speedups.optimizations.amp_step import AmpStep
from nn_speedups.optimizations.base import Runner
from nn_speedups.optimizations.compile import graph_break_check
from nn_speedups.optimizations.precision import to_channels_last


@dataclass(frozen=True)
class TrainStepConfig:
    device: str = "cpu"
    compile: bool = False
    amp_dtype: torch.dtype | None = None  # autocast dtype; fp16 on CUDA also gets a GradScaler
    tf32: bool = False  # CUDA matmuls and convolutions in TF32
    channels_last: bool = False
    fused_adamw: bool = False
    lr: float = 3e-4
    weight_decay: float = 0.01


@contextlib.contextmanager
def tf32_enabled(enabled: bool):
    """TF32 for CUDA matmuls and cuDNN convolutions inside the block only (the flags are process-wide)."""
    if not enabled:
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def apply(model: nn.Module, example_inputs: tuple, config: TrainStepConfig) -> Runner:
    """A Runner whose call `fn(images, labels)` runs one training step on a private copy of `model` and returns the
    loss (detached). The copy starts from `model`'s weights, so two variants start from the same point."""
    if config.compile:
        torch._dynamo.reset()  # as in nn_speedups.optimizations.compile: no graphs of an earlier variant in the way
    net = copy.deepcopy(model).train()
    if config.channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(
        net.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True if config.fused_adamw else None
    )
    # fp16 on CUDA gets a GradScaler at torch's default scale (2**16); zero_grad before the forward
    amp_step = AmpStep(optimizer, torch.device(config.device).type, config.amp_dtype, zero_grad="before_forward")
    forward = torch.compile(net) if config.compile else net

    def loss_of(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with tf32_enabled(config.tf32):  # the forward only, as before: the backward runs outside the TF32 block
            return F.cross_entropy(forward(images).float(), labels)

    def step(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return amp_step(loss_of, images, labels)

    def prepare(inputs: tuple) -> tuple:
        images, labels = inputs
        return (to_channels_last((images,))[0] if config.channels_last else images, labels)

    info = {"optimizer": "AdamW" + (" fused" if config.fused_adamw else ""), "grad_scaler": amp_step.scaler is not None}
    verify = graph_break_check(info) if config.compile else (lambda: None)
    return Runner(fn=step, prepare=prepare, model=net, verify=verify, info=info)


def step_apply(amp: bool = False, **options):
    """apply(model, inputs, ctx) of a bench Variant: a training step with these TrainStepConfig options; `amp`
    autocasts to the variant's dtype (ctx.dtype)."""

    def apply_variant(model: nn.Module, inputs: tuple, ctx) -> Runner:
        config = TrainStepConfig(device=ctx.device, amp_dtype=ctx.dtype if amp else None, **options)
        return apply(model, inputs, config)

    return apply_variant


def saved_activation_bytes(model: nn.Module, inputs: tuple) -> int:
    """Bytes of the tensors autograd saves for backward during one forward pass (eager only: compiled graphs keep
    their own saved tensors out of sight of the hooks). Storages shared by several saves are counted once."""
    seen: dict[tuple, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        seen[(storage.data_ptr(), t.device.type)] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(*inputs)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    del out
    return sum(n for (ptr, _), n in seen.items() if ptr not in params)
