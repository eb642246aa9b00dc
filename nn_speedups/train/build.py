"""What a run is built from: the device, the model (head resized to the data's classes, Ghost BN where asked), the
optimizer and the data splits. Bad input raises ConfigError naming the fix."""

from __future__ import annotations

import sys

import torch
from torch import nn
from torch.utils.data import Subset

from nn_speedups.core.capabilities import has_cuda
from nn_speedups.data import build_datasets, parse_source, stratified_subset
from nn_speedups.models.ghost_bn import use_ghost_batchnorm
from nn_speedups.models.registry import set_num_classes
from nn_speedups.train.config import ConfigError, TrainConfig
from nn_speedups.train.schedule import effective_lr


def trainable_models() -> list[str]:
    from nn_speedups.models import REGISTRY

    return sorted(name for name, spec in REGISTRY.items() if spec.num_classes and "vision" in spec.tags)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if has_cuda() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"--device {name}: {error}") from None
    if device.type == "cuda" and not has_cuda():
        raise ConfigError(f"--device {name}: CUDA is not available here (torch.cuda.is_available() is False)")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name}: expected auto, cpu, cuda or cuda:N")
    return device


def build_model(config: TrainConfig, num_classes: int, device: torch.device) -> tuple[nn.Module, int, int]:
    """The model on `device`, head resized to `num_classes`, Ghost BN applied: (model, parameters, ghost layers)."""
    from nn_speedups.models import build_model, get_spec

    try:
        spec = get_spec(config.model)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if not spec.num_classes or "vision" not in spec.tags:
        raise ConfigError(
            f"model {config.model!r} is not an image classifier; training supports: {', '.join(trainable_models())}"
        )
    try:
        model = build_model(spec, config.image_size, activation=config.activation)
    except ValueError as error:
        raise ConfigError(f"model {config.model!r}: {error}") from None
    torch.manual_seed(config.seed)  # build_model seeds with 0; the new head and everything after follow --seed
    set_num_classes(model, num_classes)
    ghost_layers = 0
    if config.ghost_batch_size is not None:
        ghost_layers = use_ghost_batchnorm(model, config.ghost_batch_size)
        if ghost_layers == 0:
            bn_models = [name for name in trainable_models() if name not in ("convnext-seed", "convnext_tiny")]
            raise ConfigError(
                f"--ghost-batch-size: model {config.model!r} has no BatchNorm2d layers (Ghost BN applies to BN "
                f"models such as {', '.join(bn_models)})"
            )
    model = model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.train(), sum(p.numel() for p in model.parameters()), ghost_layers


def build_optimizer(config: TrainConfig, model: nn.Module, world_size: int = 1) -> tuple[torch.optim.AdamW, bool]:
    params = [p for p in model.parameters() if p.requires_grad]
    kwargs = {"lr": effective_lr(config, world_size), "weight_decay": config.weight_decay}
    if config.fused_adamw:
        try:
            return torch.optim.AdamW(params, fused=True, **kwargs), True
        except RuntimeError as error:
            print(f"note: fused AdamW unavailable here ({error}); using the default implementation", file=sys.stderr)
    return torch.optim.AdamW(params, **kwargs), False


def build_splits(config: TrainConfig):
    try:
        source = parse_source(config.data)
        splits = build_datasets(
            source,
            image_size=config.image_size,
            num_classes=config.num_classes,
            eval_samples=config.eval_samples,
            seed=config.seed,
            train_samples=config.train_samples,
        )
    except (ValueError, FileNotFoundError) as error:
        raise ConfigError(str(error)) from None
    if splits.train is None:
        raise ConfigError(
            f"data source {config.data!r} has no train split (evaluation only); train on 'synthetic' or "
            f"'tinyimagenet:PATH'"
        )
    if source.kind != "synthetic" and config.train_samples is not None and config.train_samples < len(splits.train):
        indices = stratified_subset(splits.train.targets, config.train_samples, config.seed)
        splits.train = Subset(splits.train, indices)
    if len(splits.train) < config.batch_size:
        raise ConfigError(
            f"the train split has {len(splits.train)} samples, fewer than --batch-size {config.batch_size} "
            f"(the last incomplete batch of an epoch is dropped)"
        )
    return splits
