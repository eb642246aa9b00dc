"""INT8 calibration feeds: batches from the data source's training split (or a text or user model's seeded example
inputs), never the images accuracy is measured on. Re-exported by nn_speedups.measure.protocol."""

from __future__ import annotations

import torch

from nn_speedups.matrix.variant import VariantContext

CALIBRATION_IMAGES, CALIBRATION_BATCH = 64, 8
CALIBRATION_SEED = 1000


def calibration_feeds(ctx: VariantContext) -> list[dict]:
    """INT8 calibration batches ({input name: float32 array}) from the data source's training split at the run's
    image size: never the images that accuracy is measured on. For a text model, or any model without one image input
    (a user's): batches of its example_inputs drawn with a seed (CALIBRATION_SEED) that neither the benches' inputs
    (seed 0) nor their checks use. A model with a static batch is calibrated at that batch."""
    size = ctx.spec.batch_sizes[0] if ctx.spec.batch_sizes else CALIBRATION_BATCH
    if "nlp" in ctx.spec.tags or "vision" not in ctx.spec.tags:
        batches = [
            ctx.spec.example_inputs(size, ctx.image_size, "cpu", seed=CALIBRATION_SEED + i)
            for i in range(max(1, CALIBRATION_IMAGES // size))
        ]
        return [{n: t.numpy() for n, t in zip(ctx.spec.input_names, batch, strict=True)} for batch in batches]
    from nn_speedups.data import build_datasets

    train = build_datasets(ctx.data, image_size=ctx.image_size, train_samples=CALIBRATION_IMAGES).train
    if train is None:
        raise ValueError(
            f"--data {ctx.data}: INT8 calibration needs a source with a training split "
            "(synthetic or tinyimagenet:PATH); imagenet-val is evaluation-only"
        )
    picked = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:CALIBRATION_IMAGES]
    images = torch.stack([train[int(i)][0] for i in picked]).numpy()
    name = ctx.spec.input_names[0]
    return [{name: images[i : i + size]} for i in range(0, len(images) - size + 1, size)]
