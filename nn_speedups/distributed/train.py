"""Data-parallel training for nn_speedups.train, under torchrun:

    torchrun --nproc-per-node 2 -m nn_speedups.train --model resnet18 --data synthetic --image-size 64 --epochs 2

Started by torchrun (RANK, WORLD_SIZE and LOCAL_RANK in the environment), a run joins the process group (NCCL with
one GPU per process, cuda:LOCAL_RANK; gloo on a CPU), wraps the model in DistributedDataParallel (under --compile,
`torch.compile(DDP(model))`, so Dynamo splits the graph at DDP's buckets), and each rank reads its share of every
epoch through a DistributedSampler (reshuffled per epoch with set_epoch; the tail that does not divide evenly is
dropped). --batch-size is per process: the global batch is batch_size x world size, and --scale-lr scales to it.
Validation is sharded without padding and its sums are reduced, so every image counts once.

Rank 0 alone prints, writes metrics.json and checkpoints. A checkpoint holds the unwrapped model's state_dict, so it
resumes on any world size (or without torchrun) and loads into a plain model. A collective waiting longer than
--dist-timeout (a rank died or hangs) raises, and torchrun then ends every rank and reports the first failure.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset, Sampler

from nn_speedups.distributed import Rank
from nn_speedups.train.config import ConfigError, TrainConfig


class ShardSampler(Sampler[int]):
    """Indices rank, rank + world, ...: each sample on exactly one rank, none repeated (evaluation)."""

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.indices = range(rank, length, world_size)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


@dataclass(frozen=True)
class DistContext(Rank):
    """This rank of a training run (nn_speedups.distributed.Rank) and what the training loop does with it."""

    def wrap(self, model: nn.Module, compile: bool) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        wrapped = DistributedDataParallel(model, device_ids=ids, output_device=ids[0] if ids else None)
        return torch.compile(wrapped) if compile else wrapped

    def train_sampler(self, dataset: Dataset, seed: int):
        from torch.utils.data.distributed import DistributedSampler

        return DistributedSampler(
            dataset, num_replicas=self.world_size, rank=self.rank, shuffle=True, seed=seed, drop_last=True
        )

    def eval_sampler(self, dataset: Dataset) -> ShardSampler:
        return ShardSampler(len(dataset), self.rank, self.world_size)

    def sum(self, *values) -> list:
        """Each value (a number or a 0-d tensor) summed over the ranks, as Python numbers."""
        return self._reduce(values, "sum")

    def max(self, *values) -> list:
        return self._reduce(values, "max")

    def _reduce(self, values, op: str) -> list:
        import torch.distributed as dist

        packed = torch.stack([torch.as_tensor(v, dtype=torch.float64).detach().cpu() for v in values]).to(self.device)
        dist.all_reduce(packed, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return packed.tolist()

    def describe(self, batch_size: int) -> dict:
        return {
            "world_size": self.world_size,
            "backend": self.backend,
            "per_rank_batch_size": batch_size,
            "global_batch_size": batch_size * self.world_size,
        }

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def setup(config: TrainConfig, device: torch.device) -> DistContext | None:
    """Join torchrun's process group on `device`'s kind (None when this process was not started by torchrun)."""
    from nn_speedups.distributed import in_torchrun, init_group

    if not in_torchrun():
        return None
    try:
        group = init_group(device.type, config.dist_timeout_s)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return DistContext(group.rank, group.world_size, group.local_rank, group.device, group.backend)


def check_split(ctx: DistContext, train_size: int, batch_size: int) -> None:
    if train_size // ctx.world_size < batch_size:
        raise ConfigError(
            f"the train split has {train_size} samples: {train_size // ctx.world_size} per rank at world size "
            f"{ctx.world_size}, fewer than --batch-size {batch_size} (per rank); use fewer ranks or a smaller batch"
        )
