"""Ghost Batch Normalization (Hoffer, Hubara and Soudry 2017; seed 003's first large-batch technique).

In training mode a large batch is cut into "ghost" batches of `ghost_batch_size` samples along dim 0 and each is
normalized with its own mean and variance, so the noise of BN's batch statistics stays that of a small batch while
the optimizer sees the large one. In eval mode the running statistics are used, exactly as in nn.BatchNorm2d.

`GhostBatchNorm2d` subclasses nn.BatchNorm2d and adds no parameters or buffers: its state_dict has the same keys
(weight, bias, running_mean, running_var, num_batches_tracked), so checkpoints move freely between ghost and plain
models. Training-mode output and running statistics equal those of the plain BatchNorm2d applied to each chunk in
turn: the running averages are updated once per ghost batch (num_batches_tracked counts ghost batches).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GhostBatchNorm2d(nn.BatchNorm2d):
    def __init__(self, num_features: int, ghost_batch_size: int, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        if ghost_batch_size < 1:
            raise ValueError(f"ghost_batch_size must be >= 1, got {ghost_batch_size}")
        self.ghost_batch_size = ghost_batch_size

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d, ghost_batch_size: int) -> GhostBatchNorm2d:
        """A ghost copy of `bn`: same hyperparameters, parameters, buffers, device, dtype and train/eval mode."""
        ghost = cls(
            bn.num_features,
            ghost_batch_size,
            eps=bn.eps,
            momentum=bn.momentum,
            affine=bn.affine,
            track_running_stats=bn.track_running_stats,
        )
        reference = bn.weight if bn.affine else bn.running_mean
        if reference is not None:
            ghost = ghost.to(device=reference.device, dtype=reference.dtype)
        ghost.load_state_dict(bn.state_dict())
        return ghost.train(bn.training)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, ghost_batch_size={self.ghost_batch_size}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        uses_batch_stats = self.training or not self.track_running_stats
        if not uses_batch_stats or x.shape[0] <= self.ghost_batch_size:
            return super().forward(x)
        self._check_input_dim(x)
        outputs = []
        for chunk in x.split(self.ghost_batch_size):  # [N, C, H, W] -> ceil(N / g) x [<=g, C, H, W]
            factor = 0.0
            if self.training and self.track_running_stats:
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            outputs.append(
                F.batch_norm(
                    chunk,
                    self.running_mean if self.track_running_stats else None,
                    self.running_var if self.track_running_stats else None,
                    self.weight,
                    self.bias,
                    True,
                    factor,
                    self.eps,
                )
            )
        return torch.cat(outputs)


def use_ghost_batchnorm(model: nn.Module, ghost_batch_size: int) -> int:
    """Replace every nn.BatchNorm2d in `model` (in place) by a GhostBatchNorm2d; returns how many were replaced.

    Layers that already are GhostBatchNorm2d get the new ghost size. Other norms (BatchNorm1d, LayerNorm, ...) are
    left alone.
    """
    replaced = 0
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, GhostBatchNorm2d):
                child.ghost_batch_size = ghost_batch_size
                replaced += 1
            elif isinstance(child, nn.BatchNorm2d):
                setattr(module, child_name, GhostBatchNorm2d.from_batchnorm(child, ghost_batch_size))
                replaced += 1
    return replaced
