"""Data-parallel training steps on torch.distributed: DistributedDataParallel (bucket size, bf16 gradient
compression, torch.compile, AMP) and FSDP2 (`torch.distributed.fsdp.fully_shard`).

`apply(model, example_inputs, config)` runs inside a process of an initialized process group (torchrun): it wraps a
private copy of `model` and returns a Runner whose call `fn(images, labels)` runs one training step on this rank's
slice of the global batch (forward, cross-entropy, backward with the gradients averaged over the ranks, AdamW step at
the seed's lr 3e-4 and weight decay 0.01) and returns this rank's loss (detached). The ranks' averaged gradient and
updated parameters, whole even when FSDP2 shards them, come from `full_gradients` and `full_parameters`.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nn_speedups.optimizations.amp_step import AmpStep, default_amp_dtype
from nn_speedups.optimizations.base import Runner

WRAPPERS = ("ddp", "fsdp2")
COMM_HOOKS = (None, "bf16")
DDP_DEFAULT_BUCKET_MB = 25.0  # DistributedDataParallel's bucket_cap_mb default
# FSDP2 shards each of these blocks as one unit (one all-gather / reduce-scatter each), then the root
FSDP_BLOCKS = ("Block", "BasicBlock", "Bottleneck", "_DenseLayer", "InvertedResidual", "CNBlock")


@dataclass(frozen=True)
class DistConfig:
    """One data-parallel training step; plain values only, so it travels to the ranks as JSON."""

    wrapper: str = "ddp"  # ddp | fsdp2
    compile: bool = False
    amp: bool = False  # autocast: bf16 on a CPU; fp16 with a GradScaler on CUDA
    comm_hook: str | None = None  # "bf16": DDP's bf16_compress_hook (gradients travel as bf16, averaged in fp32)
    bucket_cap_mb: float | None = None  # DDP's gradient bucket size; None: its default (25 MB)
    lr: float = 3e-4
    weight_decay: float = 0.01

    def __post_init__(self) -> None:
        if self.wrapper not in WRAPPERS:
            raise ValueError(f"wrapper {self.wrapper!r}: valid: {', '.join(WRAPPERS)}")
        if self.comm_hook not in COMM_HOOKS:
            raise ValueError(f"comm_hook {self.comm_hook!r}: valid: None, bf16")
        if self.wrapper == "fsdp2" and (self.comm_hook or self.bucket_cap_mb):
            raise ValueError("comm_hook and bucket_cap_mb are DDP options; FSDP2 has neither")

    def as_dict(self) -> dict:
        return asdict(self)


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def apply(model: nn.Module, example_inputs: tuple, config: DistConfig) -> Runner:
    """Wrap a copy of `model` (already on this rank's device) for data-parallel training; needs an initialized
    default process group. Every rank must call it with the same weights (DDP broadcasts rank 0's anyway)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        raise RuntimeError(
            "nn_speedups.optimizations.distributed.apply needs torch.distributed initialized (run under torchrun)"
        )
    if config.compile:
        torch._dynamo.reset()
    device = _device_of(model)
    net = copy.deepcopy(model).train()
    info: dict = {"wrapper": config.wrapper, "backend": dist.get_backend()}
    if config.wrapper == "ddp":
        wrapped = _ddp(net, device, config, info)
    else:
        wrapped = _fsdp2(net, device, info)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    amp_dtype = default_amp_dtype(device.type) if config.amp else None  # fp16 on CUDA, bf16 on a CPU
    # fp16: a GradScaler starting at 2**10, not 2**16: a first step skipped for overflow (common from random
    # weights at 2**16) would leave the correctness check no update to compare; the scale grows from there.
    # unscale: the gradients stay readable (full_gradients) after the step.
    amp_step = AmpStep(optimizer, device.type, amp_dtype, init_scale=2.0**10, unscale=True, zero_grad="before_forward")
    forward = torch.compile(wrapped) if config.compile else wrapped
    info.update(
        amp_dtype=str(amp_dtype).removeprefix("torch.") if amp_dtype else None, grad_scaler=amp_step.scaler is not None
    )

    def loss_of(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(forward(images).float(), labels)

    def step(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return amp_step(loss_of, images, labels)

    verify = ddp_graph_break_check(info) if config.compile else (lambda: None)
    return Runner(fn=step, model=net, verify=verify, info=info)


# Dynamo does not trace DistributedDataParallel.forward's own bookkeeping (by design: it compiles the wrapped
# module, split at the gradient buckets by its DDPOptimizer); those graph breaks are DDP's, not the model's.
DDP_BREAK_MARKS = ("DistributedDataParallel", "_inside_ddp_forward", "set_runtime_stats_and_log", "Reducer")


def ddp_graph_break_check(info: dict):
    """A verify() for torch.compile(DDP(model)): at least one graph, and no graph break but DDP's own wrapper's."""

    def verify() -> None:
        from torch._dynamo.utils import counters

        from nn_speedups.optimizations.base import NotEngagedError

        breaks = dict(counters["graph_break"])
        ours = {reason: n for reason, n in breaks.items() if not any(mark in reason for mark in DDP_BREAK_MARKS)}
        info.update(
            graphs=counters["stats"]["unique_graphs"],
            graph_breaks=sum(ours.values()),
            ddp_wrapper_graph_breaks=sum(breaks.values()) - sum(ours.values()),
        )
        if info["graphs"] < 1:
            raise NotEngagedError("torch.compile produced no graph: the model ran eagerly")
        if ours:
            reasons = "; ".join(f"{reason.splitlines()[0]} (x{n})" for reason, n in list(ours.items())[:5])
            raise NotEngagedError(f"{info['graph_breaks']} graph breaks in the model: {reasons}")

    return verify


def _ddp(net: nn.Module, device: torch.device, config: DistConfig, info: dict) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    kwargs = {}
    if config.bucket_cap_mb is not None:
        kwargs["bucket_cap_mb"] = config.bucket_cap_mb
    if device.type == "cuda":
        kwargs.update(device_ids=[device.index], output_device=device.index)
    wrapped = DistributedDataParallel(net, **kwargs)
    if config.comm_hook == "bf16":
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        wrapped.register_comm_hook(state=None, hook=default_hooks.bf16_compress_hook)
    info.update(bucket_cap_mb=config.bucket_cap_mb or DDP_DEFAULT_BUCKET_MB, comm_hook=config.comm_hook)
    return wrapped


def _fsdp2(net: nn.Module, device: torch.device, info: dict) -> nn.Module:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    blocks = [m for m in net.modules() if type(m).__name__ in FSDP_BLOCKS]
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(net, mesh=mesh)
    info.update(fsdp_units=len(blocks) + 1, reshard_after_forward=True)
    return net


def _whole(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor shard (FSDP2) gathered whole; a plain tensor as is."""
    full = getattr(tensor, "full_tensor", None)
    return full() if full is not None else tensor


def full_gradients(model: nn.Module) -> torch.Tensor:
    """Every parameter's gradient (the ranks' average after a data-parallel step), flattened, float64 on the CPU;
    zeros where a parameter has none. Collective under FSDP2: every rank must call it."""
    parts = []
    for p in model.parameters():
        grad = torch.zeros_like(p) if p.grad is None else p.grad
        parts.append(_whole(grad).detach().to("cpu", torch.float64).reshape(-1))
    return torch.cat(parts)


def full_parameters(model: nn.Module) -> torch.Tensor:
    """Every parameter, whole, flattened, float64 on the CPU. Collective under FSDP2: every rank must call it."""
    return torch.cat([_whole(p).detach().to("cpu", torch.float64).reshape(-1) for p in model.parameters()])


@dataclass(frozen=True)
class VariantApply:
    """The apply of a bench Variant: `config` travels to the ranks, which call it there."""

    config: DistConfig

    def __call__(self, model: nn.Module, example_inputs: tuple, ctx=None) -> Runner:
        return apply(model, example_inputs, self.config)


def step_apply(**options) -> VariantApply:
    """apply(model, inputs, ctx) of a bench Variant: a data-parallel training step with these DistConfig options."""
    return VariantApply(DistConfig(**options))
