"""Training steps: forward, cross-entropy, backward and AdamW step (the seed's recipe: lr 3e-4, weight decay 0.01)
for convnext-seed and resnet50, as in seeds 000/001's training table (Vanilla, TC, AMP, TC + AMP).

Measures: step time, images/s, `epoch_s_projected` (TinyImageNet's 100,000 training images at the measured rate;
compile and data loading excluded and reported apart: `compile_s`, and the `--data` source's training pipeline timed
on its own, `data_images_per_s` / `data_epoch_s_projected` / `epoch_s_projected_with_data`), peak device memory
(host RSS on a CPU), autograd's saved-activation bytes for eager variants, speedup over vanilla.

Correctness, before timing: from the same seeded weights on the same fixed batch, each variant's loss goes down over
4 steps and ends within 2% (fp32 variants) or 10% (16-bit autocast) of vanilla fp32's loss
(nn_speedups/measure/correctness.py: TRAINING_LOSS_RTOL); compiled variants compile with no graph breaks.

    pytest benches/test_training.py --benchmark-autosave
    pytest benches/test_training.py --profile full --models convnext-seed --variants vanilla,compile-amp
"""

from __future__ import annotations

from nn_speedups.matrix.declare import matrix
from nn_speedups.matrix.variant import Variant
from nn_speedups.optimizations import training

step = training.step_apply

VANILLA = Variant("vanilla", step(), check="exact")
COMPILE = Variant("compile", step(compile=True), check="exact", compiles=True)

VARIANTS = [
    VANILLA,
    Variant("tf32", step(tf32=True), check="lowp", marks=("gpu",)),
    COMPILE,
    Variant("amp", step(amp=True), check="lowp", dtype="lowp"),
    Variant("compile-amp", step(amp=True, compile=True), check="lowp", dtype="lowp", compiles=True),
    Variant(
        "channels-last-compile-amp",
        step(amp=True, compile=True, channels_last=True),
        check="lowp",
        dtype="lowp",
        only="conv",
        compiles=True,
    ),
    Variant("fused-adamw", step(fused_adamw=True), check="exact"),
]


@matrix(VARIANTS, models=["convnext-seed", "resnet50"], training=True)
def test_training(case, measure_training):
    measure_training(case)


@matrix([VANILLA, COMPILE], models=["convnext-seed"], activations=["relu", "hardswish", "fastswish"], training=True)
def test_training_activation(case, measure_training):
    measure_training(case)
