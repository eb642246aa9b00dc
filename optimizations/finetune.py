"""A short supervised fine-tune, the step that makes pruning and quantization-aware training honest: AdamW and
cross-entropy over (images, labels) batches of a data set's training split, for a fixed number of steps.

Used by nn_speedups.optimizations.prune (after channels are removed) and nn_speedups.optimizations.quantize_torch (QAT).
The batches come from the caller (the benches draw them from the training split of `--data`, never from the evaluation
images).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nn_speedups.optimizations.amp_step import AmpStep


@dataclass(frozen=True)
class FineTuneConfig:
    steps: int = 100
    lr: float = 1e-4  # a tenth of a training run's: the weights are already trained
    weight_decay: float = 0.01
    device: str = "cpu"


def fine_tune(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    config: FineTuneConfig,
    train_mode: Callable[[nn.Module], object] | None = None,
) -> dict:
    """Train `model` in place for `config.steps` steps, cycling over `batches`; returns the steps, the first and last
    loss and the seconds it took. `train_mode(model)` puts it in training mode (default: model.train()): an exported
    PT2E graph needs torchao's move_exported_model_to_train instead. Grad is enabled here even when the caller runs
    under torch.inference_mode (a bench's apply does)."""
    batches = list(batches)
    if not batches:
        raise ValueError("fine-tuning needs at least one training batch")
    if config.steps < 1:
        raise ValueError(f"fine-tuning needs steps >= 1, got {config.steps}")
    losses: list[float] = []
    start = time.perf_counter()
    with torch.inference_mode(False), torch.enable_grad():
        (train_mode or nn.Module.train)(model)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        # fp32, no autocast, no scaler: forward, zero_grad(set_to_none=True), backward, step
        step = AmpStep(optimizer, torch.device(config.device).type, None, zero_grad="before_backward")

        def loss_of(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(model(images), labels)

        for images, labels in itertools.islice(itertools.cycle(batches), config.steps):
            # clones: batches made under inference_mode are inference tensors, which autograd cannot save
            images, labels = images.to(config.device).clone(), labels.to(config.device).clone()
            loss = step(loss_of, images, labels)
            losses.append(loss.item())
    return {
        "finetune_steps": len(losses),
        "finetune_loss_first": losses[0],
        "finetune_loss_last": losses[-1],
        "finetune_s": time.perf_counter() - start,
    }


def clone_for_training(model: nn.Module) -> nn.Module:
    """A copy of `model` whose tensors are ordinary (not inference tensors), so it can be trained: a model built or
    loaded under torch.inference_mode holds inference tensors that autograd refuses."""
    import copy

    with torch.inference_mode(False):
        twin = copy.deepcopy(model)
        for module in twin.modules():
            for name, param in list(module.named_parameters(recurse=False)):
                setattr(module, name, nn.Parameter(param.detach().clone(), requires_grad=param.requires_grad))
            for name, buffer in list(module.named_buffers(recurse=False)):
                if buffer is not None:
                    module.register_buffer(
                        name, buffer.detach().clone(), persistent=name not in module._non_persistent_buffers_set
                    )
    return twin
