"""The synthetic source: `SyntheticImages`, a seeded, learnable image classification set generated per index."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset

from nn_speedups.data.sources import Splits
from nn_speedups.data.transforms import _normalize

SYNTHETIC_TRAIN_SAMPLES = 2560
SYNTHETIC_VAL_SAMPLES = 512
SYNTHETIC_CLASSES = 10

_SPLIT_IDS = {"train": 1, "val": 2}


class SyntheticImages(Dataset):
    """A seeded, learnable image classification set, generated per index (nothing on disk, nothing downloaded).

    Class c is an oriented sinusoidal grating: orientation pi * c / num_classes (evenly spaced over 180 degrees),
    a class frequency (2.5-6 cycles per image), a colour pair and a bright Gaussian blob at a class position.
    Orientation neighbours 2k and 2k + 1 share their colour pair (from a palette of ceil(C / 3), reused across
    pairs), so colour alone cannot tell classes apart. Each sample jitters all of these (orientation by a normal of
    half the class spacing, so neighbours overlap; frequency by +-20%; random phase and contrast; blob moved,
    resized and dimmed; colours shifted), adds a weaker grating at a random orientation and pixel noise.

    Measured on 2 CPU cores, 10 classes: a 3-conv CNN on 2000 samples at 32x32 gets 38-50% val after one epoch,
    53-74% after three (5 seeds) and levels off near 85%; a 6-conv BatchNorm CNN on 10,000 samples at 64x64
    reaches 83% after 3 epochs (5 minutes). Mean colour alone gets about 39%. Neighbouring classes overlap, so
    accuracy is not pinned at 100% and the accuracy cost of a lossy optimization shows.

    Sample `index` has label index % num_classes (balanced) and is a pure function of (seed, split, index): the
    train and val splits draw different samples from the same class distributions. Returns (image, label), image a
    float32 [3, image_size, image_size] tensor normalized with ImageNet's mean/std, like the folder sources.
    """

    def __init__(
        self, num_samples: int, num_classes: int = 10, image_size: int = 64, seed: int = 0, split: str = "train"
    ) -> None:
        if split not in _SPLIT_IDS:
            raise ValueError(f"split must be one of {sorted(_SPLIT_IDS)}, got {split!r}")
        if num_classes < 2 or num_samples < 1 or image_size < 8:
            raise ValueError(
                f"need num_classes >= 2, num_samples >= 1, image_size >= 8; got {num_classes}, "
                f"{num_samples}, {image_size}"
            )
        self.num_samples, self.num_classes, self.image_size = num_samples, num_classes, image_size
        self.seed, self.split = seed, split
        self.classes = [f"class{c:0{len(str(num_classes - 1))}d}" for c in range(num_classes)]
        self.targets = [i % num_classes for i in range(num_samples)]
        self._params = _class_params(num_classes, seed)
        grid = (np.arange(image_size, dtype=np.float32) + 0.5) / image_size
        self._y, self._x = np.meshgrid(grid, grid, indexing="ij")  # [H, W] coordinates in (0, 1)
        self._normalize = _normalize()

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        label = self.targets[index]
        rng = np.random.default_rng([self.seed, _SPLIT_IDS[self.split], index])
        pixels = self._render(label, rng)  # [H, W, 3] in [0, 1]
        image = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))  # [3, H, W]
        return self._normalize(image), label

    def _render(self, label: int, rng: np.random.Generator) -> np.ndarray:
        angle, freq, colours, blob = (self._params[key][label] for key in ("angle", "freq", "colours", "blob"))
        spacing = math.pi / self.num_classes
        grating = self._grating(angle + rng.normal(0, 0.5 * spacing), freq * rng.uniform(0.8, 1.2), rng)
        grating = 0.5 + rng.uniform(0.5, 1.0) * (grating - 0.5)
        low, high = (colours + rng.normal(0, 0.06, size=(2, 3))).astype(np.float32)
        pixels = low + (high - low) * grating[..., None]
        distractor = self._grating(rng.uniform(0, math.pi), rng.uniform(2.0, 7.0), rng) - 0.5
        pixels += rng.uniform(0.0, 0.4) * distractor[..., None]
        pixels += rng.uniform(0.15, 0.5) * self._blob(blob + rng.normal(0, 0.1, size=2), rng.uniform(0.07, 0.14))
        pixels += rng.normal(0, 0.12, size=pixels.shape).astype(np.float32)
        return np.clip(pixels, 0.0, 1.0, dtype=np.float32)

    def _grating(self, angle: float, freq: float, rng: np.random.Generator) -> np.ndarray:
        """0.5 + 0.5 sin(2 pi f (x cos a + y sin a) + phase): [H, W] in [0, 1], f in cycles per image."""
        along = self._x * math.cos(angle) + self._y * math.sin(angle)
        return 0.5 + 0.5 * np.sin(2 * math.pi * freq * along + rng.uniform(0, 2 * math.pi))

    def _blob(self, centre: np.ndarray, radius: float) -> np.ndarray:
        """A Gaussian bump of height 1 at `centre` (x, y in image units): [H, W, 1]."""
        dist2 = (self._x - centre[0]) ** 2 + (self._y - centre[1]) ** 2
        return np.exp(-dist2 / (2 * radius**2))[..., None]


def _class_params(num_classes: int, seed: int) -> dict[str, np.ndarray]:
    """What defines each class, the same for both splits: orientation, frequency, colour pair, blob position."""
    rng = np.random.default_rng([seed, 0])
    palette_size = max(2, math.ceil(num_classes / 3))
    palette = rng.uniform(0.1, 0.9, size=(palette_size, 2, 3)).astype(np.float32)
    classes = np.arange(num_classes)
    return {
        "angle": math.pi * classes / num_classes,
        "freq": rng.uniform(2.5, 6.0, size=num_classes),
        "colours": palette[(classes // 2) % palette_size],
        "blob": rng.uniform(0.2, 0.8, size=(num_classes, 2)),
    }


def synthetic_splits(
    image_size: int = 224,
    num_classes: int | None = None,
    eval_samples: int | None = None,
    seed: int = 0,
    train_samples: int | None = None,
) -> Splits:
    """`SyntheticImages` train and val splits, generated directly at `image_size` (no resize or crop)."""
    num_classes = SYNTHETIC_CLASSES if num_classes is None else num_classes
    train_samples = SYNTHETIC_TRAIN_SAMPLES if train_samples is None else train_samples
    eval_samples = SYNTHETIC_VAL_SAMPLES if eval_samples is None else eval_samples
    train = SyntheticImages(train_samples, num_classes, image_size, seed, "train")
    val = SyntheticImages(eval_samples, num_classes, image_size, seed, "val")
    return Splits(train=train, val=val, classes=list(train.classes), num_classes=num_classes)
