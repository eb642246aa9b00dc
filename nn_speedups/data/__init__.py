"""Data sets for accuracy checks and training runs: a source string -> train/val datasets and loaders.

Three sources, named the way the command line names them (`parse_source`):

- ``synthetic``: the embedded default, generated on the fly, no download. A seeded, learnable image classification
  set (`SyntheticImages`): each class is an oriented sinusoidal grating with its own frequency, colour pair and bright
  blob position, blurred by per-sample jitter, a faint distractor grating and pixel noise.
- ``tinyimagenet:PATH``: the TinyImageNet-200 folder as distributed (`tinyimagenet_splits` documents the layout),
  with the seed's transforms: bicubic 64 -> 256, random crop 224, flip, ImageNet normalization; validation:
  256 then centre crop 224.
- ``imagenet-val:PATH``: an ImageNet validation folder sorted into class folders (`imagenet_val_splits`), evaluation
  only, cut to a deterministic stratified subset of ``eval_samples`` images (1024 by default, as in seed 004).

Labels are always the index of the class in ``Splits.classes``; for folders that is the *sorted* wnid order (the
torchvision/timm convention, so pretrained ImageNet heads line up). A missing or malformed folder raises
FileNotFoundError/ValueError naming the source and exactly what is missing.

The modules, each with one job (this package re-exports their names):

- sources: `parse_source`, `DataSource` and `Splits`;
- loaders: `build_datasets` (a source -> its Splits) and `make_loader` (a seeded DataLoader);
- transforms: the training and validation pipelines, `denormalize`;
- synthetic: `SyntheticImages` and `synthetic_splits`;
- folders: `tinyimagenet_splits`, `imagenet_val_splits` and what they share (`LabelledImages`, `stratified_subset`).
"""

from __future__ import annotations

from nn_speedups.data.folders import (
    IMAGENET_EVAL_SAMPLES,
    IMAGENET_VAL_LAYOUT,
    TINYIMAGENET_LAYOUT,
    LabelledImages,
    imagenet_val_splits,
    is_image,
    stratified_subset,
    tinyimagenet_splits,
)
from nn_speedups.data.loaders import build_datasets, make_loader
from nn_speedups.data.sources import KINDS, SOURCE_FORMS, DataSource, Splits, parse_source
from nn_speedups.data.synthetic import (
    SYNTHETIC_CLASSES,
    SYNTHETIC_TRAIN_SAMPLES,
    SYNTHETIC_VAL_SAMPLES,
    SyntheticImages,
    synthetic_splits,
)
from nn_speedups.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    denormalize,
    eval_transform,
    resize_for,
    train_transform,
)

__all__ = [
    "IMAGENET_EVAL_SAMPLES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGENET_VAL_LAYOUT",
    "KINDS",
    "SOURCE_FORMS",
    "SYNTHETIC_CLASSES",
    "SYNTHETIC_TRAIN_SAMPLES",
    "SYNTHETIC_VAL_SAMPLES",
    "TINYIMAGENET_LAYOUT",
    "DataSource",
    "LabelledImages",
    "Splits",
    "SyntheticImages",
    "build_datasets",
    "denormalize",
    "eval_transform",
    "imagenet_val_splits",
    "is_image",
    "make_loader",
    "parse_source",
    "resize_for",
    "stratified_subset",
    "synthetic_splits",
    "tinyimagenet_splits",
    "train_transform",
]
