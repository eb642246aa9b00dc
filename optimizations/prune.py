"""Pruning: unstructured magnitude pruning (weights set to zero, shapes unchanged) and structured channel pruning
that really removes work (torch-pruning's dependency graph removes whole channels from every layer coupled to them,
so parameters, FLOPs, latency and the saved file all shrink).

- `apply_unstructured`: global L1 magnitude pruning of a fraction of all conv/linear weights together
  (`torch.nn.utils.prune.global_unstructured`), made permanent (`prune.remove`). Dense kernels still multiply the
  zeros: no speed-up and no smaller dense file; only the sparsity (and what entropy coding makes of it) changes.
- `prune_channels` / `apply_channels`: `torch_pruning.pruner.BasePruner` with L1 magnitude group importance,
  `round_to` channels (8: the SIMD/tensor-core friendly multiple), the classifier head kept whole; then a
  fine-tune (nn_speedups.optimizations.finetune) on training batches the caller supplies.

A model the pruner cannot handle raises PruningError with the library's reason in one line.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from nn_speedups.core.errors import one_line  # also nn_speedups.optimizations.quantize_torch's (imported from here)
from nn_speedups.optimizations.base import NotEngagedError, Runner

PRUNABLE = (nn.Conv2d, nn.Linear)


class PruningError(RuntimeError):
    """The pruner could not handle this model; the message is the library's reason, on one line."""


# ------------------------------------------------------------------------------------------ unstructured


@dataclass(frozen=True)
class UnstructuredConfig:
    amount: float = 0.5  # fraction of all conv/linear weights set to zero, chosen globally by |w|


def weight_sparsity(model: nn.Module, kinds: tuple[type, ...] = PRUNABLE) -> float:
    """Fraction of exact zeros among the weights of `kinds` layers."""
    zeros = total = 0
    for module in model.modules():
        if isinstance(module, kinds) and isinstance(getattr(module, "weight", None), torch.Tensor):
            zeros += int((module.weight == 0).sum())
            total += module.weight.numel()
    return zeros / total if total else 0.0


def prune_unstructured(
    model: nn.Module, config: UnstructuredConfig, finetune: Callable[[nn.Module], object] | None = None
) -> nn.Module:
    """A copy of `model` with `config.amount` of its conv/linear weights (globally smallest |w|) set to zero.
    `finetune(model)`, when given, trains it while the masks are in place (torch.nn.utils.prune recomputes
    weight = weight_orig * mask before every forward, so the pruned weights stay zero); then the pruning is made
    permanent."""
    from torch.nn.utils import prune

    if not 0.0 < config.amount < 1.0:
        raise ValueError(f"unstructured pruning amount must be in (0, 1), got {config.amount}")
    with torch.inference_mode(False):
        pruned = copy.deepcopy(model)
        targets = [(m, "weight") for m in pruned.modules() if isinstance(m, PRUNABLE)]
        if not targets:
            raise PruningError(f"{type(model).__name__} has no Conv2d or Linear layer to prune")
        prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=config.amount)
        if finetune is not None:
            finetune(pruned)
        for module, name in targets:
            prune.remove(module, name)  # permanent: weight = weight_orig * mask, the mask dropped
    return pruned.eval()


def apply_unstructured(model: nn.Module, example_inputs: tuple, config: UnstructuredConfig) -> Runner:
    start = time.perf_counter()
    pruned = prune_unstructured(model, config)
    sparsity = weight_sparsity(pruned)
    info = {"sparsity": sparsity, "kernels": "dense (zeros are multiplied: no speed-up expected)"}

    def verify() -> None:
        if sparsity < config.amount - 0.01:
            raise NotEngagedError(f"weight sparsity {sparsity:.3f} < the {config.amount:.2f} asked for")

    fields = {"sparsity": sparsity, "build_s": time.perf_counter() - start}
    return Runner(fn=pruned, model=pruned, verify=verify, info=info, fields=fields)


# ------------------------------------------------------------------------------------------ channels


@dataclass(frozen=True)
class ChannelConfig:
    ratio: float = 0.3  # fraction of the channels of every prunable group removed
    round_to: int = 8  # channels kept are a multiple of this
    keep_classifier: bool = True  # the last Linear (the head) keeps all its outputs
    importance_p: int = 1  # L1 magnitude of the coupled weights of a channel group


def _head(model: nn.Module) -> nn.Module | None:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def prune_channels(model: nn.Module, example_inputs: tuple, config: ChannelConfig) -> nn.Module:
    """A copy of `model` with `config.ratio` of its channels removed by torch-pruning's dependency graph."""
    try:
        import torch_pruning as tp
    except ImportError:
        raise ImportError("channel pruning needs torch-pruning: pip install -e .") from None
    if not 0.0 < config.ratio < 1.0:
        raise ValueError(f"channel pruning ratio must be in (0, 1), got {config.ratio}")
    with torch.inference_mode(False):
        pruned = copy.deepcopy(model).eval()
        inputs = tuple(t.clone() for t in example_inputs)
        head = _head(pruned) if config.keep_classifier else None
        try:
            pruner = tp.pruner.BasePruner(
                pruned,
                inputs if len(inputs) > 1 else inputs[0],
                importance=tp.importance.MagnitudeImportance(p=config.importance_p),
                pruning_ratio=config.ratio,
                ignored_layers=[head] if head is not None else [],
                round_to=config.round_to,
            )
            pruner.step()
            with torch.no_grad():
                pruned(*inputs)  # the pruned model must still run
        except Exception as error:  # noqa: BLE001 - any failure of the library is this model's case failing
            raise PruningError(f"torch-pruning cannot prune {type(model).__name__}: {one_line(error)}") from None
    return pruned


def shrunk_layers(before: nn.Module, after: nn.Module) -> int:
    """How many conv/linear layers of `after` have fewer output channels than the same layer of `before`."""
    old = {name: m for name, m in before.named_modules() if isinstance(m, PRUNABLE)}
    count = 0
    for name, module in after.named_modules():
        if isinstance(module, PRUNABLE) and name in old and module.weight.shape[0] < old[name].weight.shape[0]:
            count += 1
    return count


def channels_verify(before: nn.Module, after: nn.Module, config: ChannelConfig):
    """A verify(): the pruned model really has fewer parameters and narrower layers, and the head kept its outputs."""
    params_before = sum(p.numel() for p in before.parameters())
    params_after = sum(p.numel() for p in after.parameters())
    layers = shrunk_layers(before, after)

    def verify() -> None:
        if layers == 0 or params_after >= params_before:
            raise NotEngagedError(
                f"channel pruning removed nothing: {layers} layers narrower, parameters {params_before:,} -> "
                f"{params_after:,}"
            )
        head_before, head_after = _head(before), _head(after)
        if config.keep_classifier and head_before is not None and head_after.out_features != head_before.out_features:
            raise NotEngagedError(
                f"the classifier lost outputs: {head_before.out_features} -> {head_after.out_features} classes"
            )

    return verify, {"params_before": params_before, "params_after": params_after, "layers_narrower": layers}


def apply_channels(
    model: nn.Module,
    example_inputs: tuple,
    config: ChannelConfig,
    train_batches=None,
    finetune=None,
    evaluate=None,
) -> Runner:
    """Prune channels, then fine-tune on `train_batches` with `finetune` (an
    nn_speedups.optimizations.finetune.FineTuneConfig; None: no fine-tune). `evaluate(model) -> top-1` (on images the
    fine-tune never sees), when given, is recorded
    before and after the fine-tune. The Runner runs the pruned model eagerly."""
    from nn_speedups.optimizations.finetune import fine_tune

    start = time.perf_counter()
    pruned = prune_channels(model, example_inputs, config)
    prune_s = time.perf_counter() - start
    fields: dict = {"prune_s": prune_s}
    if evaluate is not None:
        fields["top1_before_finetune"] = evaluate(pruned.eval())
    if finetune is not None and train_batches is not None:
        fields.update(fine_tune(pruned, train_batches, finetune))
        pruned.eval()
        if evaluate is not None:
            fields["top1_after_finetune"] = evaluate(pruned)
    verify, facts = channels_verify(model, pruned, config)
    fields.update(facts, build_s=time.perf_counter() - start)
    info = {"ratio": config.ratio, "round_to": config.round_to, "kernels": "dense, on the narrower layers"}
    return Runner(fn=pruned, model=pruned, verify=verify, info=info, fields=fields)
