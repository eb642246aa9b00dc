"""Accuracy columns: top-1/top-5 of every inference variant on the evaluation images of a data source, and top-1
agreement with eager; plus the small model the quick profile trains once on the synthetic set (cached under
artifacts/checkpoints, keyed by its configuration), so accuracy columns mean something without a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import torch

from nn_speedups.measure.correctness import top1_agreement

_EVAL: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
CHECKPOINT_DIR = "artifacts/checkpoints"


def eval_set(data: str, image_size: int, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images [N, 3, H, W], labels [N]) of the source's validation split at `image_size`, cached per process."""
    key = (data, image_size, samples)
    if key not in _EVAL:
        from nn_speedups.data import build_datasets

        val = build_datasets(data, image_size=image_size, eval_samples=samples).val
        pairs = [val[i] for i in range(len(val))]
        _EVAL[key] = torch.stack([p[0] for p in pairs]), torch.tensor([int(p[1]) for p in pairs])
    return _EVAL[key]


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float | None:
    if logits.shape[-1] < k:
        return None
    top = logits.topk(k, dim=-1).indices
    return (top == labels[:, None]).any(dim=-1).float().mean().item()


def evaluate(
    runner,
    reference_model,
    batch_size: int,
    device: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    trained: bool = True,
):
    """Run `runner` and eager `reference_model` over the images in batches of `batch_size` (whole batches only: a
    compiled or engine variant keeps its shapes); return agreement with eager and, when the weights were `trained`
    on these labels, top-1/top-5 against them."""
    n = len(images) - len(images) % batch_size
    outs, refs = [], []
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            batch = images[start : start + batch_size].to(device)
            outs.append(torch.as_tensor(runner(*runner.prepare((batch,)))).float().cpu())
            refs.append(reference_model(batch).float().cpu())
    if not outs:
        return {}
    out, ref, truth = torch.cat(outs), torch.cat(refs), labels[:n]
    fields = {
        "top1_agreement": top1_agreement(out, ref),
        "eval_images": n,
        "distinct_top1": int(ref.argmax(-1).unique().numel()),
    }
    if trained and int(labels.max()) < out.shape[-1]:  # labels and the model's classes belong together
        fields.update(top1=topk_accuracy(out, truth, 1), top5=topk_accuracy(out, truth, 5))
        fields.update(eager_top1=topk_accuracy(ref, truth, 1))
    return fields


def trained_checkpoint(model: str, image_size: int, device: str, data: str = "synthetic", **overrides) -> Path:
    """A small model trained once on `data` (one short epoch), cached by its configuration; returns last.pt.
    `overrides` change TrainConfig fields (e.g. teacher, kd_temperature, kd_alpha for a distilled student trained
    on the same data and budget); they are part of the cache key."""
    from nn_speedups.train import TrainConfig, train

    config = TrainConfig(
        model=model,
        data=data,
        image_size=image_size,
        epochs=1,
        batch_size=32,
        train_samples=1280,
        eval_samples=256,
        device=device,
        quiet=True,
    )
    if overrides:
        from dataclasses import replace as replace_fields

        config = replace_fields(config, **overrides)
    fields = {**asdict(config), "torch": torch.__version__}
    if not overrides:  # the key of the checkpoints trained before distillation existed: keep them valid
        fields = {k: v for k, v in fields.items() if k not in ("teacher", "kd_temperature", "kd_alpha")}
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    kind = "-distilled" if overrides.get("teacher") else ""
    out_dir = Path(CHECKPOINT_DIR) / f"{model}{kind}-{data.replace(':', '_').replace('/', '_')}-{image_size}-{key}"
    checkpoint = out_dir / "last.pt"
    if not checkpoint.is_file():
        from dataclasses import replace

        train(replace(config, out_dir=str(out_dir)))
    return checkpoint
