"""What a benchmark case is (model, batch, variant, device), the run's settings, and what a record says of the case.

Also the input size a case runs at. Re-exported by nn_speedups.measure.protocol, where the plugin and benches import
these names.
"""

from __future__ import annotations

from dataclasses import dataclass

from nn_speedups.matrix.axes import Profile
from nn_speedups.matrix.variant import Variant
from nn_speedups.measure import timing
from nn_speedups.models.registry import ModelSpec


@dataclass(frozen=True)
class Case:
    spec: ModelSpec
    batch_size: int
    variant: Variant
    device: str
    activation: str | None = None  # None: the model's own activation
    family: str = "inference"  # the bench file's family: test_<family>.py

    @property
    def id(self) -> str:
        act = f"-{self.activation}" if self.activation else ""
        return f"{self.spec.name}{act}-bs{self.batch_size}-{self.variant.label(self.device)}"

    @property
    def group(self) -> str:
        act = f"-{self.activation}" if self.activation else ""
        return f"{self.family}/{self.spec.name}{act}-bs{self.batch_size}"


@dataclass
class Settings:
    device: str
    profile: Profile
    image_size: int
    weights: str | None = None
    data: str = "synthetic"  # where calibration and evaluation images come from (nn_speedups.data sources)
    eval_samples: int = 256
    train_image_size: int = 224  # the training benches' input size
    world_sizes: tuple[int, ...] = (1, 2)  # the distributed bench's torchrun world sizes
    dist_timeout_s: float = 600.0  # a whole torchrun job of the distributed bench, startup included


def case_fields(case: Case, profile: str) -> dict:
    """What a record says of the case itself, the same for every family."""
    return {
        "family": case.family,
        "model": case.spec.name,
        "activation": case.activation,
        "variant": case.variant.name,
        "device": case.device,
        "dtype": case.variant.dtype_name(case.device),
        "batch_size": case.batch_size,
        "profile": profile,
    }


def timing_fields(summary: timing.Summary) -> dict:
    return {
        "rounds": summary.rounds,
        "median_ms": summary.median_ms,
        "mean_ms": summary.mean_ms,
        "stdev_ms": summary.stdev_ms,
        "min_ms": summary.min_ms,
        "p90_ms": summary.p90_ms,
        "p99_ms": summary.p99_ms,
        "iqr_rel": summary.iqr_rel,
        "drift": summary.drift,
        "slow_mode_share": summary.modes[0] if summary.modes else None,
        "slow_mode_ratio": summary.modes[1] if summary.modes else None,
    }


def image_size_of(spec: ModelSpec, image_size: int) -> int:
    """The input size a model runs at: its own when its spec fixes one (a user's model: its example's size, or the
    --image-size asked for, to which the plugin resized its example images: nn_speedups.models.user.at_image_size),
    else the run's."""
    return spec.image_size or image_size
