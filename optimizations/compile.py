"""torch.compile (Inductor), optionally with autocast and channels-last, checked for graph breaks."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from nn_speedups.optimizations.base import NotEngagedError, Runner
from nn_speedups.optimizations.precision import autocast_fn, to_channels_last


@dataclass(frozen=True)
class CompileConfig:
    device: str = "cpu"
    mode: str | None = None  # None (default), "max-autotune", "reduce-overhead" (CUDA graphs)
    backend: str = "inductor"
    dynamic: bool | None = False
    autocast_dtype: torch.dtype | None = None
    channels_last: bool = False
    allowed_graph_breaks: int = 0


def _graph_stats() -> tuple[int, int, dict]:
    from torch._dynamo.utils import counters

    breaks = dict(counters["graph_break"])
    return sum(breaks.values()), counters["stats"]["unique_graphs"], breaks


def graph_break_check(info: dict, allowed: int = 0):
    """A verify() for a compiled Runner: at least one graph, at most `allowed` graph breaks (recorded in info).

    Dynamo's counters are process-wide and survive torch._dynamo.reset(): what this Runner compiled is what they
    gained since this check was made (before the first call, which compiles)."""
    breaks_before, graphs_before, reasons_before = _graph_stats()

    def verify() -> None:
        n_breaks, n_graphs, all_breaks = _graph_stats()
        n_breaks, n_graphs = n_breaks - breaks_before, n_graphs - graphs_before
        breaks = {r: n - reasons_before.get(r, 0) for r, n in all_breaks.items() if n > reasons_before.get(r, 0)}
        info.update(graph_breaks=n_breaks, graphs=n_graphs)
        if n_graphs < 1:
            raise NotEngagedError("torch.compile produced no graph: the model ran eagerly")
        if n_breaks > allowed:
            reasons = "; ".join(f"{reason} (x{count})" for reason, count in list(breaks.items())[:5])
            raise NotEngagedError(f"{n_breaks} graph breaks (allowed {allowed}): {reasons}")

    return verify


def apply(model: nn.Module, example_inputs: tuple, config: CompileConfig) -> Runner:
    # A fresh Dynamo state per variant: cached graphs of an earlier variant would otherwise count against the
    # recompile limit, past which Dynamo silently runs eager.
    torch._dynamo.reset()
    prepare = to_channels_last if config.channels_last else (lambda inputs: inputs)
    if config.channels_last:
        model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    compiled = torch.compile(model, mode=config.mode, backend=config.backend, dynamic=config.dynamic)
    fn = autocast_fn(compiled, config.device, config.autocast_dtype) if config.autocast_dtype else compiled
    info: dict = {"compile_mode": config.mode or "default", "backend": config.backend}
    verify = graph_break_check(info, config.allowed_graph_breaks)

    return Runner(fn=fn, prepare=prepare, model=model, verify=verify, info=info)
