"""Activation registry: name -> nn.Module factory.

`fastswish` is the plain reference formula (seed 001's; nn_speedups.kernels.fastswish states it); `fastswish-custom`
its custom autograd Function (saves only x), `fastswish-triton` its Triton op (on a CPU without TRITON_INTERPRET=1
that op runs the custom Function's math: see nn_speedups.kernels.fastswish_triton.backend_for). All three live in
nn_speedups/kernels/.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from nn_speedups.kernels import fastswish
from nn_speedups.kernels.fastswish import FastSwishCustom, FastSwishLayer, FastSwishReference, fastswish_reference

__all__ = [
    "ACTIVATIONS",
    "FASTSWISH_A",
    "FASTSWISH_B",
    "FastSwishReference",
    "fastswish_reference",
    "make_activation",
    "register_activation",
    "swap_activations",
]

FASTSWISH_A = fastswish.A
FASTSWISH_B = fastswish.B


def _fastswish_triton() -> nn.Module:
    from nn_speedups.kernels.fastswish_triton import (
        FastSwishTriton,
    )  # registers the torch.library op; triton loads on first use

    return FastSwishTriton()


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "gelu": lambda: nn.GELU(),
    "gelu-tanh": lambda: nn.GELU(approximate="tanh"),
    "hardswish": lambda: nn.Hardswish(),
    "relu": lambda: nn.ReLU(),
    "fastswish": FastSwishReference,
    "fastswish-custom": FastSwishCustom,
    "fastswish-triton": _fastswish_triton,
}


def register_activation(name: str, factory: Callable[[], nn.Module]) -> None:
    ACTIVATIONS[name] = factory


def make_activation(name: str) -> nn.Module:
    try:
        factory = ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(sorted(ACTIVATIONS))}") from None
    return factory()


def swap_activations(
    model: nn.Module, name: str, kinds: tuple[type[nn.Module], ...] = (nn.GELU, nn.ReLU, nn.Hardswish)
) -> int:
    """Replace every activation layer of the given kinds in `model` by `name`; returns how many were swapped."""
    swapped = 0
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, kinds) or isinstance(child, FastSwishLayer):
                setattr(parent, child_name, make_activation(name))
                swapped += 1
    return swapped
