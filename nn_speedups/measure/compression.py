"""The compression family's glue between the harness and optimizations/{prune,quantize_torch,finetune}.py:

- training batches of `--data` (INT8 calibration, the fine-tune after pruning, QAT): always the training split,
  never the evaluation images that accuracy is measured on;
- a per-process cache of the compressed models: pruning, fine-tuning, calibrating are done once per (model,
  weights, data, image size) and reused across batch sizes (only compiling is per batch);
- the files a compressed model is saved to (artifacts/compression/), whose bytes are `model_size_mb`, and the
  weight-coding stages of nn_speedups.measure.weight_coding (`compressed_size_mb`, ratios to the fp32 file).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from nn_speedups.matrix.variant import VariantContext
from nn_speedups.measure import weight_coding

ARTIFACTS = "artifacts/compression"
FINETUNE_BATCH = 32
FINETUNE_SAMPLES = 1280  # the training images fine-tunes cycle over (the quick profile trains on as many)
CALIBRATION_IMAGES, CALIBRATION_BATCH = 64, 8
CALIBRATION_SEED = 1000  # token batches for text models: a seed neither the benches' inputs nor checks use
EVAL_BATCH = 32
KMEANS_CLUSTERS = (
    16,
)  # the benches' k-means stage; python -m nn_speedups.measure.weight_coding --kmeans 16,32 for more


# ------------------------------------------------------------------------------------------- data


def training_batches(
    data: str, image_size: int, samples: int, batch_size: int, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(images, labels) batches of `samples` training-split images of `data`, in a seeded random order."""
    from nn_speedups.data import build_datasets

    train = build_datasets(data, image_size=image_size, train_samples=samples).train
    if train is None:
        raise ValueError(
            f"--data {data}: calibration and fine-tuning need a source with a training split (synthetic or "
            "tinyimagenet:PATH); imagenet-val is evaluation-only"
        )
    picked = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:samples]
    pairs = [train[int(i)] for i in picked]
    images = torch.stack([p[0] for p in pairs])
    labels = torch.tensor([int(p[1]) for p in pairs])
    return [(images[i : i + batch_size], labels[i : i + batch_size]) for i in range(0, len(pairs), batch_size)]


def calibration_inputs(ctx: VariantContext) -> list[tuple]:
    """INT8 calibration batches as model inputs (tuples), on the device: training images of --data, or for a text
    model token batches drawn with CALIBRATION_SEED."""
    if "nlp" in ctx.spec.tags:
        return [
            ctx.spec.example_inputs(CALIBRATION_BATCH, ctx.image_size, ctx.device, seed=CALIBRATION_SEED + i)
            for i in range(CALIBRATION_IMAGES // CALIBRATION_BATCH)
        ]
    batches = training_batches(ctx.data, ctx.image_size, CALIBRATION_IMAGES, CALIBRATION_BATCH, seed=1)
    return [(images.to(ctx.device),) for images, _ in batches]


def finetune_batches(ctx: VariantContext) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return training_batches(ctx.data, ctx.image_size, FINETUNE_SAMPLES, FINETUNE_BATCH, seed=2)


def top1_evaluator(ctx: VariantContext) -> Callable[[nn.Module], float]:
    """top-1 of an eager model on the evaluation images of --data (what the accuracy columns use)."""
    from nn_speedups.measure.accuracy import eval_set, topk_accuracy

    def evaluate(model: nn.Module) -> float:
        images, labels = eval_set(ctx.data, ctx.image_size, ctx.eval_samples)
        outs = []
        with torch.inference_mode():
            for start in range(0, len(images), EVAL_BATCH):
                outs.append(model(images[start : start + EVAL_BATCH].to(ctx.device)).float().cpu())
        return topk_accuracy(torch.cat(outs), labels, 1)

    return evaluate


# ------------------------------------------------------------------------------------------- build cache


def owner_key(ctx: VariantContext) -> tuple:
    return (ctx.spec.name, ctx.weights, ctx.data, ctx.image_size, ctx.device, ctx.profile and ctx.profile.name)


class BuildCache:
    """Compressed models of the model in use, by variant; a new (model, weights, data, size, device) drops them."""

    def __init__(self) -> None:
        self._owner: tuple | None = None
        self._built: dict[str, tuple[object, dict]] = {}

    def get(self, ctx: VariantContext, name: str, build: Callable[[], tuple[object, dict]]) -> tuple[object, dict]:
        """(built, facts) of `name` for ctx's model, built now (facts get build_s) or taken from the cache (facts get
        build_cached: True; build_s stays the original build's)."""
        key = owner_key(ctx)
        if key != self._owner:
            self._owner, self._built = key, {}
        if name in self._built:
            built, facts = self._built[name]
            return built, {**facts, "build_cached": True}
        start = time.perf_counter()
        built, facts = build()
        facts = {**facts, "build_s": time.perf_counter() - start}
        self._built[name] = (built, facts)
        return built, {**facts, "build_cached": False}

    def clear(self) -> None:
        self._owner, self._built = None, {}


CACHE = BuildCache()


# ------------------------------------------------------------------------------------------- files and sizes


def artifact_dir(ctx: VariantContext, name: str) -> Path:
    key = json.dumps([*owner_key(ctx), name, torch.__version__], default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return Path(ARTIFACTS) / f"{ctx.spec.name}-{ctx.image_size}-{name}-{digest}"


_WRITTEN: set[Path] = set()


def fp32_file(ctx: VariantContext, model: nn.Module) -> Path:
    """The uncompressed model's state dict as torch.save writes it: the denominator of every size ratio."""
    path = artifact_dir(ctx, "fp32") / "model.pt"
    if path not in _WRITTEN:  # once per process: a file left by an earlier run may hold other weights
        weight_coding.save_state(model.state_dict(), path)
        _WRITTEN.add(path)
    return path


def size_fields(
    ctx: VariantContext, name: str, state: dict[str, torch.Tensor], baseline: nn.Module, kmeans: bool = False
) -> tuple[Path, dict]:
    """Save `state` (the compressed model as deployed) and measure it: (model file, fields). Fields: the stages of
    nn_speedups.measure.weight_coding (int8 codes, Huffman coded with an exact round trip, optional k-means codes, zstd
    of the
    file) and their ratios to the fp32 file."""
    folder = artifact_dir(ctx, name).resolve()
    model_file = weight_coding.save_state(state, folder / "model.pt")
    fp32 = fp32_file(ctx, baseline)
    start = time.perf_counter()
    sizes = weight_coding.stage_sizes(
        state, model_file, folder, fp32.stat().st_size, kmeans=KMEANS_CLUSTERS if kmeans else ()
    )
    sizes["coding_s"] = time.perf_counter() - start
    sizes["model_file"] = str(model_file)
    return model_file, sizes
