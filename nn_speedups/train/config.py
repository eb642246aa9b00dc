"""TrainConfig: what a training run is, and the checks that refuse a bad one before anything is built."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

IDENTITY_FIELDS = (
    "model", "data", "image_size", "num_classes", "activation", "ghost_batch_size", "train_samples", "teacher",
)  # fmt: skip
DEFAULT_OUT_ROOT = Path("artifacts") / "train"


class ConfigError(ValueError):
    """Bad input (unknown model, missing data, unusable device, ...): main() prints it and exits with code 2."""


@dataclass(frozen=True)
class TrainConfig:
    model: str
    data: str = "synthetic"
    image_size: int = 224
    epochs: int = 30
    batch_size: int = 128
    lr: float = 3e-4
    weight_decay: float = 0.01
    base_batch_size: int = 128  # the batch size `lr` is meant for (--scale-lr)
    scale_lr: bool = False
    warmup_epochs: float = 0.0
    ghost_batch_size: int | None = None
    compile: bool = False
    amp: bool = False  # CUDA: fp16 autocast + GradScaler; CPU: bf16 autocast, no scaler
    channels_last: bool = False
    fused_adamw: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    workers: int = 0
    seed: int = 0
    num_classes: int | None = None  # synthetic: classes generated; folders: keep the first N classes
    train_samples: int | None = None  # limit the train split (a stratified subset for folders)
    eval_samples: int | None = None  # limit the val split
    eval_batch_size: int | None = None  # default: batch_size
    out_dir: str | None = None  # checkpoints + metrics.json; None writes nothing
    resume: str | None = None  # a checkpoint path, or "auto" for OUT_DIR/last.pt when it exists
    activation: str | None = None  # for models with an activation slot (convnext-seed)
    log_every: int = 100  # a log line every N steps when no progress bar is shown (0: never)
    dist_timeout_s: float = 1800.0  # under torchrun: a collective waiting longer raises (a rank died or hangs)
    quiet: bool = False
    teacher: str | None = (
        None  # knowledge distillation: a nn_speedups.train checkpoint of the teacher (nn_speedups.train.losses)
    )
    kd_temperature: float = 4.0  # KD: softmax temperature T of the soft targets (the loss carries T^2)
    kd_alpha: float = 0.9  # KD: weight of the soft-target term; 1 - alpha weighs the hard-label cross-entropy


def check_config(config: TrainConfig) -> None:
    positive = ("image_size", "epochs", "batch_size", "base_batch_size")
    for name in positive:
        if getattr(config, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(config, name)}")
    for name in ("ghost_batch_size", "train_samples", "eval_samples", "eval_batch_size", "num_classes"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if config.lr <= 0 or config.weight_decay < 0 or config.warmup_epochs < 0:
        raise ConfigError("need --lr > 0, --weight-decay >= 0 and --warmup-epochs >= 0")
    if not config.dist_timeout_s > 0:
        raise ConfigError(f"--dist-timeout must be > 0 seconds, got {config.dist_timeout_s}")
    if config.workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {config.workers}")
    if config.ghost_batch_size is not None and config.batch_size % config.ghost_batch_size:
        raise ConfigError(
            f"--ghost-batch-size {config.ghost_batch_size} must divide --batch-size {config.batch_size} "
            f"(every ghost batch the same size)"
        )
    if config.kd_temperature <= 0 or not 0.0 <= config.kd_alpha <= 1.0:
        raise ConfigError(
            f"need --kd-temperature > 0 and 0 <= --kd-alpha <= 1, got {config.kd_temperature} and {config.kd_alpha}"
        )
    if config.resume is not None and config.resume == "auto" and config.out_dir is None:
        raise ConfigError("--resume auto needs --out-dir (it resumes from OUT_DIR/last.pt)")
