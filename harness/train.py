"""Training CLI and API: the seed's recipe (seeds 000/001) with honest per-epoch timing, plus seed 003's large-batch
techniques (linear LR scaling, LR warmup, Ghost BatchNorm).

    python -m harness.train --model convnext-seed --data tinyimagenet:PATH --epochs 30 --compile --amp
    python -m harness.train --model resnet18 --data synthetic --image-size 32 --epochs 2 --train-samples 512
    python -m harness.train ... --resume auto          # continue from OUT_DIR/last.pt

The defaults are the seed's recipe: AdamW lr 3e-4, weight decay 0.01, batch 128, 30 epochs, cross-entropy, constant
LR (the seed uses no schedule); the data transforms are harness.data's (bicubic 64 -> 256, random crop 224, flip).
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
BatchNorm2d keys, so it loads into a plain model or `models.build_model(..., weights=PATH)` after the head is
resized to the data's classes), the optimizer, the GradScaler, epoch, step, config, the metrics history and the RNG
states (torch, CUDA, numpy, python and the train loader's shuffling generator). --resume continues from the next
epoch; with --workers 0 (augmentation draws from the global torch RNG) the continued run repeats the uninterrupted
one; with worker processes the shuffle order repeats but the workers' augmentation randomness does not.

Large-batch options (seed 003, "Challenges with convergence"):

- --scale-lr: linear scaling, lr_eff = lr * batch_size / base_batch_size (base 128, the seed's batch).
- --warmup-epochs E: per step linear warmup, lr(step) = lr_eff * (step + 1) / W for step < W = ceil(E * steps per
  epoch), lr_eff afterwards.
- --ghost-batch-size G: every BatchNorm2d becomes a GhostBatchNorm2d (harness.ghost_bn) normalizing chunks of G
  samples in training; needs a BN model (resnet18/50, densenet121, mobilenet_v3_large) and G dividing the batch.

Large-batch experiment (measured on the 2-core CPU dev machine, "AMD EPYC" with AVX-512, torch 2.15.0,
eager fp32, one seed, other jobs sharing the machine at times). Common part of the three commands:

    C="python -m harness.train --model resnet18 --data synthetic --image-size 32"
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
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

from harness.capabilities import has_cuda
from harness.data import build_datasets, make_loader, parse_source, stratified_subset
from harness.ghost_bn import use_ghost_batchnorm
from models.registry import set_num_classes

# Fields that must match between a checkpoint and the run resuming from it.
IDENTITY_FIELDS = ("model", "data", "image_size", "num_classes", "activation", "ghost_batch_size", "train_samples")
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
    quiet: bool = False


# ------------------------------------------------------------------------------------------ LR schedule


def effective_lr(config: TrainConfig) -> float:
    """The peak LR: `lr`, linearly scaled by batch_size / base_batch_size with scale_lr (seed 003)."""
    if config.scale_lr:
        return config.lr * config.batch_size / config.base_batch_size
    return config.lr


def warmup_steps(config: TrainConfig, steps_per_epoch: int) -> int:
    return math.ceil(config.warmup_epochs * steps_per_epoch) if config.warmup_epochs > 0 else 0


def lr_at_step(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The LR of optimizer step `step` (0-based, counted over the whole run): linear warmup, then constant."""
    peak = effective_lr(config)
    warm = warmup_steps(config, steps_per_epoch)
    return peak * (step + 1) / warm if step < warm else peak


# ---------------------------------------------------------------------------------------------- models


def trainable_models() -> list[str]:
    from models import REGISTRY

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


def _check(config: TrainConfig) -> None:
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
    if config.workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {config.workers}")
    if config.ghost_batch_size is not None and config.batch_size % config.ghost_batch_size:
        raise ConfigError(
            f"--ghost-batch-size {config.ghost_batch_size} must divide --batch-size {config.batch_size} "
            f"(every ghost batch the same size)"
        )
    if config.resume is not None and config.resume == "auto" and config.out_dir is None:
        raise ConfigError("--resume auto needs --out-dir (it resumes from OUT_DIR/last.pt)")


def _build_model(config: TrainConfig, num_classes: int, device: torch.device) -> tuple[nn.Module, int, int]:
    """The model on `device`, head resized to `num_classes`, Ghost BN applied: (model, parameters, ghost layers)."""
    from models import build_model, get_spec

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


def _build_optimizer(config: TrainConfig, model: nn.Module) -> tuple[torch.optim.AdamW, bool]:
    params = [p for p in model.parameters() if p.requires_grad]
    kwargs = {"lr": effective_lr(config), "weight_decay": config.weight_decay}
    if config.fused_adamw:
        try:
            return torch.optim.AdamW(params, fused=True, **kwargs), True
        except RuntimeError as error:
            print(f"note: fused AdamW unavailable here ({error}); using the default implementation", file=sys.stderr)
    return torch.optim.AdamW(params, **kwargs), False


# ------------------------------------------------------------------------------------------------ data


def _build_splits(config: TrainConfig):
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


# ------------------------------------------------------------------------------------ progress and logs


class _Progress:
    """tqdm on stderr when importable, else a one-line '\\r' progress; nothing when disabled."""

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        self.total, self.desc, self.enabled, self.done, self.bar = total, desc, enabled, 0, None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, desc=desc, file=sys.stderr, dynamic_ncols=True, leave=False)

    def update(self, status: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(status, refresh=False)
            self.bar.update(1)
        elif self.enabled:
            sys.stderr.write(f"\r{self.desc} {self.done}/{self.total} {status}")
            sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            sys.stderr.write("\r" + " " * (len(self.desc) + 60) + "\r")
            sys.stderr.flush()


def _say(config: TrainConfig, text: str) -> None:
    if not config.quiet:
        print(text, flush=True)


# ---------------------------------------------------------------------------------------- timing split


def split_compile_time(steps: list[tuple[float, bool]]) -> tuple[float, float]:
    """(work_s, compile_s) of timed steps (seconds, first run of its shape while compiling).

    A first-of-shape step counts the epoch's median ordinary step time as work and the excess as compile time.
    """
    ordinary = [seconds for seconds, first in steps if not first]
    typical = statistics.median(ordinary) if ordinary else 0.0
    firsts = [seconds for seconds, first in steps if first]
    compile_s = sum((max(0.0, seconds - typical) for seconds in firsts), 0.0)
    return sum(ordinary) + sum(min(seconds, typical) for seconds in firsts), compile_s


# ------------------------------------------------------------------------------------------- training


class _Trainer:
    def __init__(self, config: TrainConfig) -> None:
        _check(config)
        self.config = config
        self.device = resolve_device(config.device)
        self._seed_everything(config.seed)
        self.splits = _build_splits(config)
        self.model, self.parameters, self.ghost_layers = _build_model(config, self.splits.num_classes, self.device)
        self.optimizer, self.fused = _build_optimizer(config, self.model)
        cuda = self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if config.amp and cuda else None
        self.amp_dtype = (torch.float16 if cuda else torch.bfloat16) if config.amp else None
        self.train_loader = make_loader(
            self.splits.train, config.batch_size, True, config.workers, config.seed, drop_last=True, pin_memory=cuda
        )
        eval_batch = config.eval_batch_size or config.batch_size
        self.val_loader = make_loader(self.splits.val, eval_batch, False, config.workers, config.seed, pin_memory=cuda)
        self.steps_per_epoch = len(self.train_loader)
        self.history: list[dict] = []
        self.start_epoch, self.step, self.resumed_from = 0, 0, None
        self.out_dir = Path(config.out_dir) if config.out_dir is not None else None
        checkpoint = self._checkpoint_to_resume()
        if checkpoint is not None:
            self._restore(checkpoint)
        self.runner = torch.compile(self.model) if config.compile else self.model
        self.seen_shapes: set[tuple] = set()
        self.show_bar = not config.quiet and sys.stderr.isatty()
        self.checkpoint_s = 0.0  # writing checkpoints in this process, outside epoch_s

    # ------------------------------------------------------------------ resume

    def _checkpoint_to_resume(self) -> dict | None:
        resume = self.config.resume
        if resume is None:
            return None
        if resume == "auto":
            path = self.out_dir / "last.pt"
            if not path.is_file():
                _say(self.config, f"--resume auto: no {path} yet, starting from epoch 1")
                return None
        else:
            path = Path(resume)
            if not path.is_file():
                raise ConfigError(f"--resume {resume}: no such checkpoint file")
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        saved = checkpoint.get("config", {})
        mismatched = [name for name in IDENTITY_FIELDS if saved.get(name) != getattr(self.config, name)]
        if mismatched:
            shown = ", ".join(
                f"{name}: {saved.get(name)!r} there, {getattr(self.config, name)!r} here" for name in mismatched
            )
            raise ConfigError(f"--resume {path}: the checkpoint is from a different run ({shown})")
        checkpoint["path"] = str(path)
        return checkpoint

    def _restore(self, checkpoint: dict) -> None:
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if self.scaler is not None and checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.history = list(checkpoint["history"])
        self.start_epoch, self.step = checkpoint["epoch"], checkpoint["step"]
        self.resumed_from = checkpoint["path"]
        rng = checkpoint["rng"]
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(rng["cuda"])
        np_state = rng["numpy"]
        np.random.set_state((np_state[0], np_state[1].numpy(), *np_state[2:]))
        random.setstate((rng["python"][0], tuple(rng["python"][1]), rng["python"][2]))
        self.train_loader.generator.set_state(checkpoint["loader_rng"])

    @staticmethod
    def _seed_everything(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def _rng_states(self) -> dict:
        np_state = np.random.get_state()
        py_state = random.getstate()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
            "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
            "python": (py_state[0], list(py_state[1]), py_state[2]),
        }

    # ------------------------------------------------------------------ steps

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _to_device(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.to(self.device, non_blocking=True)
        if self.config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels.to(self.device, non_blocking=True)

    def _first_of_shape(self, mode: str, images: torch.Tensor) -> bool:
        key = (mode, tuple(images.shape))
        first = self.config.compile and key not in self.seen_shapes
        self.seen_shapes.add(key)
        return first

    def _batches(self, loader) -> Iterator[tuple[float, torch.Tensor, torch.Tensor]]:
        """(seconds spent fetching and copying, images, labels) per batch."""
        iterator = iter(loader)
        while True:
            start = time.perf_counter()
            try:
                images, labels = next(iterator)
            except StopIteration:
                return
            images, labels = self._to_device(images, labels)
            self._sync()
            yield time.perf_counter() - start, images, labels

    def train_epoch(self, epoch: int) -> dict:
        config = self.config
        self.runner.train()
        data_s, steps = 0.0, []
        loss_sum, samples, lr = torch.zeros((), device=self.device), 0, self.optimizer.param_groups[0]["lr"]
        progress = _Progress(self.steps_per_epoch, f"epoch {epoch + 1}/{config.epochs}", self.show_bar)
        for fetch_s, images, labels in self._batches(self.train_loader):
            data_s += fetch_s
            lr = lr_at_step(config, self.step, self.steps_per_epoch)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            start = time.perf_counter()
            with self._autocast():
                loss = F.cross_entropy(self.runner(images), labels)
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                self.optimizer.step()
            self._sync()
            steps.append((time.perf_counter() - start, self._first_of_shape("train", images)))
            loss_sum += loss.detach().float() * len(labels)
            samples += len(labels)
            self.step += 1
            if progress.enabled:
                progress.update(f"loss {loss.item():.4f} lr {lr:.2e}")
            elif not config.quiet and config.log_every and self.step % config.log_every == 0:
                print(
                    f"epoch {epoch + 1} step {self.step} loss {loss.item():.4f} lr {lr:.3e}",
                    file=sys.stderr,
                    flush=True,
                )
        progress.close()
        compute_s, compile_s = split_compile_time(steps)
        return {
            "train_loss": (loss_sum / max(samples, 1)).item(),
            "lr": lr,
            "steps": len(steps),
            "train_images": samples,
            "data_s": data_s,
            "compute_s": compute_s,
            "compile_s": compile_s,
            "images_per_s": samples / compute_s if compute_s > 0 else None,
        }

    @torch.inference_mode()
    def evaluate(self) -> dict:
        self.runner.eval()
        num_classes = self.splits.num_classes
        k = min(5, num_classes)
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        correct1 = torch.zeros((), device=self.device, dtype=torch.int64)
        correct5 = torch.zeros((), device=self.device, dtype=torch.int64)
        samples, steps = 0, []
        start = time.perf_counter()
        for _, images, labels in self._batches(self.val_loader):
            with self._autocast():
                logits = self.runner(images)
            loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum")
            top = logits.topk(k, dim=1).indices  # [B, k]
            correct1 += (top[:, 0] == labels).sum()
            correct5 += (top == labels[:, None]).any(dim=1).sum()
            samples += len(labels)
            self._sync()
            now = time.perf_counter()
            steps.append((now - start, self._first_of_shape("eval", images)))
            start = now
        eval_s, compile_s = split_compile_time(steps)
        return {
            "val_loss": loss_sum.item() / samples,
            "top1": correct1.item() / samples,
            "top5": correct5.item() / samples if num_classes >= 5 else None,
            "val_images": samples,
            "eval_s": eval_s,
            "eval_compile_s": compile_s,
        }

    # ------------------------------------------------------------------ run

    def run(self) -> dict:
        config = self.config
        self._announce()
        diverged = False
        for epoch in range(self.start_epoch, config.epochs):
            start = time.perf_counter()
            record = {"epoch": epoch + 1, **self.train_epoch(epoch)}
            if not math.isfinite(record["train_loss"]):
                record["epoch_s"] = time.perf_counter() - start
                self.history.append(_finite(record))
                diverged = True
                print(f"error: training diverged in epoch {epoch + 1} (train loss not finite)", file=sys.stderr)
                break
            evaluation = self.evaluate()
            record.update(evaluation)
            record["compile_s"] += record.pop("eval_compile_s")
            record["epoch_s"] = time.perf_counter() - start
            self.history.append(_finite(record))
            start = time.perf_counter()
            self._save_checkpoint(epoch)
            self.checkpoint_s += time.perf_counter() - start
            self._write_metrics(diverged=False)
            self._report(record)
        metrics = self._write_metrics(diverged)
        return metrics

    def _announce(self) -> None:
        config = self.config
        resumed = f", resuming after epoch {self.start_epoch} from {self.resumed_from}" if self.resumed_from else ""
        ghost = f", ghost BN on {self.ghost_layers} layers (chunks of {config.ghost_batch_size})"
        _say(
            config,
            f"{config.model}: {self.parameters:,} parameters, {self.splits.num_classes} classes; data {config.data} "
            f"(train {len(self.splits.train)}, val {len(self.splits.val)}) at {config.image_size}px; device "
            f"{self.device}; batch {config.batch_size}, lr {effective_lr(config):.3g}"
            f"{ghost if self.ghost_layers else ''}{resumed}",
        )

    def _report(self, record: dict) -> None:
        top5 = f" top5 {100 * record['top5']:.2f}%" if record["top5"] is not None else ""
        speed = f" {record['images_per_s']:.0f} img/s" if record["images_per_s"] else ""
        _say(
            self.config,
            f"epoch {record['epoch']}/{self.config.epochs} train_loss {record['train_loss']:.4f} "
            f"val_loss {record['val_loss']:.4f} top1 {100 * record['top1']:.2f}%{top5} | {record['epoch_s']:.1f}s "
            f"(data {record['data_s']:.1f}, compute {record['compute_s']:.1f}, compile {record['compile_s']:.1f}, "
            f"eval {record['eval_s']:.1f}){speed}",
        )

    def _save_checkpoint(self, epoch: int) -> None:
        if self.out_dir is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        payload = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": epoch + 1,
            "step": self.step,
            "config": asdict(self.config),
            "classes": list(self.splits.classes),
            "history": self.history,
            "rng": self._rng_states(),
            "loader_rng": self.train_loader.generator.get_state(),
        }
        last = self.out_dir / "last.pt"
        partial = self.out_dir / "last.pt.partial"
        torch.save(payload, partial)
        os.replace(partial, last)
        if max(r["top1"] for r in self.history) == self.history[-1]["top1"]:
            shutil.copyfile(last, self.out_dir / "best.pt")

    def metrics(self, diverged: bool = False) -> dict:
        history = self.history
        evaluated = [r for r in history if r.get("top1") is not None]
        best = max(evaluated, key=lambda r: r["top1"]) if evaluated else None
        totals = {
            "epochs": len(history),
            "steps": self.step,
            **{name: sum(r.get(name) or 0.0 for r in history) for name in _TIME_FIELDS},
            "checkpoint_s": self.checkpoint_s,
            "best_top1": best["top1"] if best else None,
            "best_epoch": best["epoch"] if best else None,
            "final_top1": evaluated[-1]["top1"] if evaluated else None,
            "final_top5": evaluated[-1]["top5"] if evaluated else None,
        }
        return {
            "config": asdict(self.config),
            "model": {"parameters": self.parameters, "ghost_bn_layers": self.ghost_layers},
            "data": {
                "source": self.config.data,
                "num_classes": self.splits.num_classes,
                "train_images": len(self.splits.train),
                "val_images": len(self.splits.val),
                "steps_per_epoch": self.steps_per_epoch,
            },
            "optimizer": {
                "name": "AdamW",
                "lr_effective": effective_lr(self.config),
                "warmup_steps": warmup_steps(self.config, self.steps_per_epoch),
                "fused": self.fused,
                "amp_dtype": str(self.amp_dtype).removeprefix("torch.") if self.amp_dtype else None,
                "grad_scaler": self.scaler is not None,
            },
            "epochs": history,
            "totals": totals,
            "resumed_from": self.resumed_from,
            "diverged": diverged,
            "machine": self._machine(),
        }

    def _machine(self) -> dict:
        from harness.env import machine_info

        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None
        return {"torch": torch.__version__, "device": str(self.device), "device_name": name, **machine_info()}

    def _write_metrics(self, diverged: bool) -> dict:
        metrics = self.metrics(diverged)
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            path = self.out_dir / "metrics.json"
            partial = self.out_dir / "metrics.json.partial"
            partial.write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
            os.replace(partial, path)
        return metrics


_TIME_FIELDS = ("epoch_s", "data_s", "compute_s", "compile_s", "eval_s")


def _finite(record: dict) -> dict:
    """The record with non-finite floats as None (metrics.json is strict JSON)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


def train(config: TrainConfig) -> dict:
    """Train `config.model` on `config.data`; returns the metrics (also written to OUT_DIR/metrics.json).

    Raises ConfigError for bad input. `metrics["diverged"]` is True when the train loss stopped being finite.
    """
    return _Trainer(config).run()


# -------------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    defaults = {f.name: f.default for f in fields(TrainConfig) if f.name != "model"}
    parser = argparse.ArgumentParser(
        prog="python -m harness.train",
        description="Train an image classifier with the seed's recipe (AdamW 3e-4, wd 0.01, batch 128) and "
        "per-epoch data / compute / compile timing, top-1/top-5, checkpoints with resume and a metrics JSON.",
    )
    add = parser.add_argument
    add("--model", required=True, help="a registered image classifier, e.g. convnext-seed, resnet18")
    add("--data", default=defaults["data"], help="synthetic | tinyimagenet:PATH (default: synthetic)")
    add("--image-size", type=int, default=defaults["image_size"], help="input size (default: 224)")
    add("--epochs", type=int, default=defaults["epochs"], help="total epochs, including resumed ones (default: 30)")
    add("--batch-size", type=int, default=defaults["batch_size"], help="train batch (default: 128)")
    add("--eval-batch-size", type=int, default=None, help="validation batch (default: --batch-size)")
    add("--lr", type=float, default=defaults["lr"], help="AdamW learning rate (default: 3e-4)")
    add("--weight-decay", type=float, default=defaults["weight_decay"], help="AdamW weight decay (default: 0.01)")
    add("--scale-lr", action="store_true", help="linear scaling: lr * batch_size / base_batch_size")
    add("--base-batch-size", type=int, default=defaults["base_batch_size"], help="batch --lr is for (default: 128)")
    add("--warmup-epochs", type=float, default=defaults["warmup_epochs"], help="linear per-step warmup (default: 0)")
    add("--ghost-batch-size", type=int, default=None, help="Ghost BatchNorm: normalize chunks of this many samples")
    add("--compile", action="store_true", help="torch.compile the model (compile time reported as compile_s)")
    add("--amp", action="store_true", help="autocast: fp16 + GradScaler on CUDA, bf16 on CPU")
    add("--channels-last", action="store_true", help="channels-last memory format for model and inputs")
    add("--fused-adamw", action="store_true", help="AdamW(fused=True) where supported")
    add("--device", default=defaults["device"], help="auto | cpu | cuda | cuda:N (default: auto)")
    add("--workers", type=int, default=defaults["workers"], help="data loader worker processes (default: 0)")
    add("--seed", type=int, default=defaults["seed"], help="seed for data, head init and shuffling (default: 0)")
    add("--num-classes", type=int, default=None, help="synthetic: classes to generate; folders: first N classes")
    add("--train-samples", type=int, default=None, help="limit the train split (quick runs)")
    add("--eval-samples", type=int, default=None, help="limit the validation split")
    add("--activation", default=None, help="activation for models with a slot (convnext-seed), e.g. relu")
    add("--out-dir", default=None, help=f"checkpoints and metrics.json (default: {DEFAULT_OUT_ROOT}/MODEL)")
    add("--resume", nargs="?", const="auto", default=None, help="'auto' (OUT_DIR/last.pt if present) or a path")
    add("--log-every", type=int, default=defaults["log_every"], help="log line every N steps without a bar")
    add("--quiet", action="store_true", help="no progress bar, no per-epoch lines")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig)}
    if values["out_dir"] is None:
        values["out_dir"] = str(DEFAULT_OUT_ROOT / args.model)
    return TrainConfig(**values)


def main(argv: list[str] | None = None) -> int:
    config = config_from_args(build_parser().parse_args(argv))
    try:
        metrics = train(config)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    _say(config, f"metrics: {Path(config.out_dir) / 'metrics.json'}")
    return 1 if metrics["diverged"] else 0


if __name__ == "__main__":
    sys.exit(main())
