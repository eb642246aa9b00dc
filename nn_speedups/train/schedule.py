"""The learning-rate schedule: seed 003's linear scaling with the batch size and a per-step linear warmup."""

from __future__ import annotations

import math

from nn_speedups.train.config import TrainConfig


def effective_lr(config: TrainConfig, world_size: int = 1) -> float:
    """The peak LR: `lr`, linearly scaled by the global batch / base_batch_size with scale_lr (seed 003); the global
    batch is batch_size (per process) x world_size under torchrun."""
    if config.scale_lr:
        return config.lr * config.batch_size * world_size / config.base_batch_size
    return config.lr


def warmup_steps(config: TrainConfig, steps_per_epoch: int) -> int:
    return math.ceil(config.warmup_epochs * steps_per_epoch) if config.warmup_epochs > 0 else 0


def lr_at_step(config: TrainConfig, step: int, steps_per_epoch: int, world_size: int = 1) -> float:
    """The LR of optimizer step `step` (0-based, counted over the whole run): linear warmup, then constant."""
    peak = effective_lr(config, world_size)
    warm = warmup_steps(config, steps_per_epoch)
    return peak * (step + 1) / warm if step < warm else peak
