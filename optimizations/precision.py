"""Precision and layout: autocast (AMP), whole-model half precision, channels-last memory format."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from nn_speedups.optimizations.base import Runner


def autocast_fn(fn, device: str, dtype: torch.dtype):
    """`fn` run under torch.autocast on `device`'s type with `dtype`."""
    device_type = torch.device(device).type

    def run(*inputs):
        with torch.autocast(device_type, dtype=dtype):
            return fn(*inputs)

    return run


def to_channels_last(inputs: tuple) -> tuple:
    return tuple(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x for x in inputs)


def cast_floats(inputs: tuple, dtype: torch.dtype) -> tuple:
    return tuple(x.to(dtype) if x.is_floating_point() else x for x in inputs)


@dataclass(frozen=True)
class AmpConfig:
    device: str
    dtype: torch.dtype


def apply_amp(model: nn.Module, example_inputs: tuple, config: AmpConfig) -> Runner:
    return Runner(fn=autocast_fn(model, config.device, config.dtype), model=model, info={"autocast": str(config.dtype)})


@dataclass(frozen=True)
class HalfConfig:
    dtype: torch.dtype


def apply_half(model: nn.Module, example_inputs: tuple, config: HalfConfig) -> Runner:
    """Weights and activations in `dtype` throughout (no fp32 master copy): model.to(dtype)."""
    half = copy.deepcopy(model).to(config.dtype)
    return Runner(fn=half, prepare=lambda inputs: cast_floats(inputs, config.dtype), model=half)


@dataclass(frozen=True)
class ChannelsLastConfig:
    pass


def apply_channels_last(model: nn.Module, example_inputs: tuple, config: ChannelsLastConfig) -> Runner:
    nhwc = copy.deepcopy(model).to(memory_format=torch.channels_last)
    return Runner(fn=nhwc, prepare=to_channels_last, model=nhwc)
