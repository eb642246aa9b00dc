"""Training CLI and API: the seed's recipe (seeds 000/001) with honest per-epoch timing, plus seed 003's large-batch
techniques (linear LR scaling, LR warmup, Ghost BatchNorm).

    python -m nn_speedups.train --model convnext-seed --data tinyimagenet:PATH --epochs 30 --compile --amp
    python -m nn_speedups.train --model resnet18 --data synthetic --image-size 32 --epochs 2 --train-samples 512
    python -m nn_speedups.train ... --resume auto          # continue from OUT_DIR/last.pt

The defaults are the seed's recipe: AdamW lr 3e-4, weight decay 0.01, batch 128, 30 epochs, cross-entropy, constant
LR (the seed uses no schedule); the data transforms are nn_speedups.data's (bicubic 64 -> 256, random crop 224, flip).
From Python, `train(TrainConfig(...))` returns the metrics dict that is also written to OUT_DIR/metrics.json.

Per-epoch timing (what seeds 000/001 mixed up: their "epoch time" held data loading and compile time):

- data_s: waiting for the loader's next batch, plus the host -> device copy (synchronized on CUDA).
- compute_s: forward + backward + optimizer step, each step ended by a device synchronize on CUDA.
- compile_s: with --compile, a step whose (mode, input shape) this process has not run before triggers Dynamo /
  Inductor compilation; its time beyond the epoch's median step time is compile_s, the rest counts as compute.
  Eval steps are treated alike (the first eval in a compiled run recompiles for eval mode and for a smaller last
  batch), so compile_s is nonzero only in the first epoch of a process (after --resume, again once).
- eval_s: the validation pass (data and forward), less its compile share. epoch_s: wall time of train + eval;
  checkpoint writing is outside it (totals.checkpoint_s). images_per_s = train images / compute_s.

Validation after every epoch: loss, top-1 and top-5 (top-5 when there are at least 5 classes), as fractions.

Checkpoints: OUT_DIR/last.pt after every epoch, OUT_DIR/best.pt whenever top-1 improves. A checkpoint holds the
model's state_dict under "model" (the uncompiled module's, so no "_orig_mod." prefixes; Ghost BN layers have plain
BatchNorm2d keys, so it loads into a plain model or `nn_speedups.models.build_model(..., weights=PATH)` after the head
is resized to the data's classes), the optimizer, the GradScaler, epoch, step, config, the metrics history and the RNG
states (torch, CUDA, numpy, python and the train loader's shuffling generator). --resume continues from the next
epoch; with --workers 0 (augmentation draws from the global torch RNG) the continued run repeats the uninterrupted
one; with worker processes the shuffle order repeats but the workers' augmentation randomness does not.

Large-batch options (seed 003, "Challenges with convergence"):

- --scale-lr: linear scaling, lr_eff = lr * batch_size / base_batch_size (base 128, the seed's batch); under
  torchrun, batch_size x world size (the global batch).
- --warmup-epochs E: per step linear warmup, lr(step) = lr_eff * (step + 1) / W for step < W = ceil(E * steps per
  epoch), lr_eff afterwards.
- --ghost-batch-size G: every BatchNorm2d becomes a GhostBatchNorm2d (nn_speedups.models.ghost_bn) normalizing chunks of
G
  samples in training; needs a BN model (resnet18/50, densenet121, mobilenet_v3_large) and G dividing the batch.

Large-batch experiment (measured on the 2-core CPU dev machine, "AMD EPYC" with AVX-512, torch 2.15.0,
eager fp32, one seed, other jobs sharing the machine at times). Common part of the three commands:

    C="python -m nn_speedups.train --model resnet18 --data synthetic --image-size 32"
    C="$C --train-samples 4096 --eval-samples 512 --epochs 4"
    (a) $C --batch-size 64 --out-dir a
    (b) $C --batch-size 512 --out-dir b
    (c) $C --batch-size 512 --scale-lr --base-batch-size 64 --warmup-epochs 1 --ghost-batch-size 64 --out-dir c

| run | steps/epoch | peak lr | val top-1, epochs 1 / 2 / 3 / 4 | val loss, epoch 2 | compute s, 4 epochs |
| --- | --- | --- | --- | --- | --- |
| (a) batch 64 | 64 | 3e-4 | 89.5 / 88.7 / 91.4 / 89.7 % | 0.266 | 58.5 (280 img/s) |
| (b) batch 512 | 8 | 3e-4 | 70.3 / 84.4 / 86.9 / 92.4 % | 0.672 | 34.1 (481 img/s) |
| (c) 512 + LR x8 + warmup + GBN | 8 | 2.4e-3, 8-step warmup | 70.7 / 86.9 / 92.4 / 90.8 % | 0.346 | 34.1 (481 img/s) |

Reading: batch 512 runs 1.7x more images per second of compute than batch 64 on this CPU, but takes 8x fewer
steps per epoch, and plain (b) trails the baseline for three epochs. (c) closes the gap an epoch earlier (92.4% at
epoch 3 against 86.9% for (b); val loss at epoch 2 halved), at no measurable cost in compute for the ghost
batches. The set is easy (the baseline is near its ceiling after one epoch), there is one seed and the val set has
512 images (a standard error of about 1.3 points), so differences of 1-2 points are noise; the larger epoch-2/3 gap
(2.5-5.5 points, val loss halved) is the visible effect, and no ablation separates the three techniques' shares.
Top-5 is 99-100% throughout (10 classes).

The package, by concern: `config` (TrainConfig and its checks), `schedule` (the LR rule), `build` (device, model,
optimizer, data), `loop` (epochs, steps, evaluation, metrics), `checkpoint` (save, resume, RNG states),
`distributed` (DDP under torchrun: `torchrun --nproc-per-node N -m nn_speedups.train ...`), `log`, `cli` (the command
line). Ghost BN is a model layer: nn_speedups.models.ghost_bn.
"""

from nn_speedups.models.registry import set_num_classes
from nn_speedups.train.build import resolve_device, trainable_models
from nn_speedups.train.cli import build_parser, config_from_args, main
from nn_speedups.train.config import ConfigError, TrainConfig
from nn_speedups.train.loop import split_compile_time, train
from nn_speedups.train.schedule import effective_lr, lr_at_step, warmup_steps

__all__ = [
    "ConfigError",
    "TrainConfig",
    "build_parser",
    "config_from_args",
    "effective_lr",
    "lr_at_step",
    "main",
    "resolve_device",
    "set_num_classes",
    "split_compile_time",
    "train",
    "trainable_models",
    "warmup_steps",
]
