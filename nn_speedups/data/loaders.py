"""From a source to data: `build_datasets` (its train/val Splits) and `make_loader` (a seeded DataLoader)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from nn_speedups.data.folders import imagenet_val_splits, tinyimagenet_splits
from nn_speedups.data.sources import KINDS, DataSource, Splits, parse_source
from nn_speedups.data.synthetic import synthetic_splits


def build_datasets(
    source: DataSource | str,
    image_size: int = 224,
    num_classes: int | None = None,
    eval_samples: int | None = None,
    seed: int = 0,
    train_samples: int | None = None,
) -> Splits:
    """The train/val datasets of `source` at `image_size`.

    num_classes: synthetic -> how many classes to generate (default 10); folders -> keep the first N classes in
    label order (labels unchanged), for quick runs. eval_samples: size of the validation set (synthetic: 512 by
    default; tinyimagenet: all 10,000 by default; imagenet-val: 1024 by default), a deterministic stratified subset
    for folders (`stratified_subset`). train_samples: synthetic only (default 2560).
    """
    if isinstance(source, str):
        source = parse_source(source)
    if source.kind == "synthetic":
        return synthetic_splits(image_size, num_classes, eval_samples, seed, train_samples)
    if source.kind == "tinyimagenet":
        return tinyimagenet_splits(source, image_size, num_classes, eval_samples, seed)
    if source.kind == "imagenet-val":
        return imagenet_val_splits(source, image_size, num_classes, eval_samples, seed)
    raise ValueError(f"unknown data source kind {source.kind!r}: expected one of {', '.join(KINDS)}")


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    workers: int = 0,
    seed: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
    sampler=None,
) -> DataLoader:
    """A DataLoader whose shuffling order is fixed by `seed` (a seeded generator, not the global RNG).

    With workers > 0 each worker's torch/random/numpy RNGs are seeded from that generator too, so random
    augmentations repeat; with workers=0 they draw from torch's global RNG (seed it with torch.manual_seed). A
    `sampler` (e.g. a DistributedSampler) replaces the shuffling.
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=workers,
        generator=torch.Generator().manual_seed(seed),
        drop_last=drop_last,
        pin_memory=pin_memory,
        worker_init_fn=_seed_numpy_in_worker if workers > 0 else None,
        persistent_workers=workers > 0,
    )


def _seed_numpy_in_worker(worker_id: int) -> None:
    np.random.seed(torch.initial_seed() % 2**32)
