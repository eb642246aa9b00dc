"""The training loop: epochs of timed steps (data, compute and compile apart), evaluation, checkpoints, metrics.

Per-epoch timing (what seeds 000/001 mixed up: their "epoch time" held data loading and compile time) is described
in nn_speedups.train's docstring; `split_compile_time` is the rule that separates compile time from compute.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from nn_speedups.data import make_loader
from nn_speedups.distributed import train as dp
from nn_speedups.optimizations.amp_step import AmpStep, default_amp_dtype
from nn_speedups.train import checkpoint
from nn_speedups.train.build import build_model, build_optimizer, build_splits, resolve_device
from nn_speedups.train.config import TrainConfig, check_config
from nn_speedups.train.log import Progress, say
from nn_speedups.train.losses import build_criterion
from nn_speedups.train.schedule import effective_lr, lr_at_step, warmup_steps


def split_compile_time(steps: list[tuple[float, bool]]) -> tuple[float, float]:
    """(work_s, compile_s) of timed steps (seconds, first run of its shape while compiling).

    A first-of-shape step counts the epoch's median ordinary step time as work and the excess as compile time.
    """
    ordinary = [seconds for seconds, first in steps if not first]
    typical = statistics.median(ordinary) if ordinary else 0.0
    firsts = [seconds for seconds, first in steps if first]
    compile_s = sum((max(0.0, seconds - typical) for seconds in firsts), 0.0)
    return sum(ordinary) + sum(min(seconds, typical) for seconds in firsts), compile_s


class Trainer:
    def __init__(self, config: TrainConfig) -> None:
        check_config(config)
        self.device = resolve_device(config.device)
        self.dist = dp.setup(config, self.device)  # None unless started by torchrun
        if self.dist is not None:
            self.device = self.dist.device
            if not self.dist.is_main:
                config = replace(config, quiet=True)  # rank 0 alone prints
        self.config = config
        self.world_size = self.dist.world_size if self.dist else 1
        checkpoint.seed_everything(config.seed)
        self.splits = build_splits(config)
        self.model, self.parameters, self.ghost_layers = build_model(config, self.splits.num_classes, self.device)
        self.optimizer, self.fused = build_optimizer(config, self.model, self.world_size)
        self.criterion = build_criterion(config, self.splits.num_classes, self.device)  # CE, or KD with --teacher
        cuda = self.device.type == "cuda"
        # --amp: fp16 with a GradScaler (torch's default scale, 2**16) on CUDA, bf16 without one on a CPU; the
        # step zeroes the gradients between the forward and the backward
        amp_dtype = default_amp_dtype(self.device.type) if config.amp else None
        self.amp_step = AmpStep(self.optimizer, self.device.type, amp_dtype, zero_grad="before_backward")
        self.train_sampler = self.dist.train_sampler(self.splits.train, config.seed) if self.dist else None
        if self.dist is not None:
            dp.check_split(self.dist, len(self.splits.train), config.batch_size)
        self.train_loader = make_loader(
            self.splits.train,
            config.batch_size,
            True,
            config.workers,
            config.seed,
            drop_last=True,
            pin_memory=cuda,
            sampler=self.train_sampler,
        )
        eval_batch = config.eval_batch_size or config.batch_size
        eval_sampler = self.dist.eval_sampler(self.splits.val) if self.dist else None
        self.val_loader = make_loader(
            self.splits.val, eval_batch, False, config.workers, config.seed, pin_memory=cuda, sampler=eval_sampler
        )
        self.steps_per_epoch = len(self.train_loader)
        self.history: list[dict] = []
        self.start_epoch, self.step, self.resumed_from = 0, 0, None
        self.out_dir = Path(config.out_dir) if config.out_dir is not None else None
        resume = checkpoint.to_resume(config, self.out_dir)
        if resume is not None:
            checkpoint.restore(self, resume)
        if self.dist is not None and not self.dist.is_main:  # the ranks' augmentations differ (rank 0 keeps --seed)
            checkpoint.seed_everything(config.seed + 1000 * self.dist.rank + self.start_epoch)
        self.runner = torch.compile(self.model) if config.compile else self.model
        # training goes through DDP (gradients averaged over the ranks); evaluation, sharded, through the model
        self.train_runner = self.dist.wrap(self.model, config.compile) if self.dist else self.runner
        self.seen_shapes: set[tuple] = set()
        self.show_bar = not config.quiet and sys.stderr.isatty()
        self.checkpoint_s = 0.0  # writing checkpoints in this process, outside epoch_s

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        """The step's GradScaler (fp16 on CUDA), saved in and restored from checkpoints; None otherwise."""
        return self.amp_step.scaler

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return self.amp_step.amp_dtype

    # ------------------------------------------------------------------ steps

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The training forward and its loss (CE, or KD with --teacher); AmpStep runs it under autocast."""
        return self.criterion(self.train_runner(images), labels, images)

    def _autocast(self):
        return self.amp_step.autocast()

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
        self.train_runner.train()
        if self.train_sampler is not None:
            self.train_sampler.set_epoch(epoch)  # a new shuffle of the ranks' shares every epoch
        data_s, steps = 0.0, []
        loss_sum, samples, lr = torch.zeros((), device=self.device), 0, self.optimizer.param_groups[0]["lr"]
        progress = Progress(self.steps_per_epoch, f"epoch {epoch + 1}/{config.epochs}", self.show_bar)
        for fetch_s, images, labels in self._batches(self.train_loader):
            data_s += fetch_s
            lr = lr_at_step(config, self.step, self.steps_per_epoch, self.world_size)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            start = time.perf_counter()
            loss = self.amp_step(self._loss, images, labels)
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
        if self.dist is not None:  # all ranks' images; the slowest rank's times
            loss_sum, samples = self.dist.sum(loss_sum, samples)
            loss_sum, samples = torch.tensor(loss_sum), int(samples)
            data_s, compute_s, compile_s = self.dist.max(data_s, compute_s, compile_s)
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
        if self.dist is not None:  # every validation image counted once, on the rank that holds it
            loss_sum, correct1, correct5, samples = self.dist.sum(loss_sum, correct1, correct5, samples)
            loss_sum, correct1, correct5, samples = loss_sum, int(correct1), int(correct5), int(samples)
            eval_s, compile_s = self.dist.max(eval_s, compile_s)
        return {
            "val_loss": float(loss_sum) / samples,
            "top1": int(correct1) / samples,
            "top5": int(correct5) / samples if num_classes >= 5 else None,
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
        say(
            config,
            f"{config.model}: {self.parameters:,} parameters, {self.splits.num_classes} classes; data {config.data} "
            f"(train {len(self.splits.train)}, val {len(self.splits.val)}) at {config.image_size}px; device "
            f"{self.device}; batch {config.batch_size}{self._ranks()}, lr {effective_lr(config, self.world_size):.3g}"
            f"{ghost if self.ghost_layers else ''}{resumed}",
        )

    def _ranks(self) -> str:
        if self.dist is None:
            return ""
        return f" per rank x {self.world_size} ranks ({self.dist.backend}) = {self.config.batch_size * self.world_size}"

    def _report(self, record: dict) -> None:
        top5 = f" top5 {100 * record['top5']:.2f}%" if record["top5"] is not None else ""
        speed = f" {record['images_per_s']:.0f} img/s" if record["images_per_s"] else ""
        say(
            self.config,
            f"epoch {record['epoch']}/{self.config.epochs} train_loss {record['train_loss']:.4f} "
            f"val_loss {record['val_loss']:.4f} top1 {100 * record['top1']:.2f}%{top5} | {record['epoch_s']:.1f}s "
            f"(data {record['data_s']:.1f}, compute {record['compute_s']:.1f}, compile {record['compile_s']:.1f}, "
            f"eval {record['eval_s']:.1f}){speed}",
        )

    def _save_checkpoint(self, epoch: int) -> None:
        if self.out_dir is None or (self.dist is not None and not self.dist.is_main):
            return
        best = max(r["top1"] for r in self.history) == self.history[-1]["top1"]
        checkpoint.save(self.out_dir, checkpoint.payload(self, epoch), best)

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
                "lr_effective": effective_lr(self.config, self.world_size),
                "warmup_steps": warmup_steps(self.config, self.steps_per_epoch),
                "fused": self.fused,
                "amp_dtype": str(self.amp_dtype).removeprefix("torch.") if self.amp_dtype else None,
                "grad_scaler": self.scaler is not None,
            },
            "epochs": history,
            "totals": totals,
            "resumed_from": self.resumed_from,
            "diverged": diverged,
            "distributed": self.dist.describe(self.config.batch_size) if self.dist else None,
            "machine": self._machine(),
        }

    def _machine(self) -> dict:
        from nn_speedups.core.env import machine_info

        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None
        return {"torch": torch.__version__, "device": str(self.device), "device_name": name, **machine_info()}

    def _write_metrics(self, diverged: bool) -> dict:
        metrics = self.metrics(diverged)
        if self.out_dir is not None and (self.dist is None or self.dist.is_main):
            checkpoint.write_json(self.out_dir, "metrics.json", json.dumps(metrics, indent=2, allow_nan=False) + "\n")
        return metrics


_TIME_FIELDS = ("epoch_s", "data_s", "compute_s", "compile_s", "eval_s")


def _finite(record: dict) -> dict:
    """The record with non-finite floats as None (metrics.json is strict JSON)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


def train(config: TrainConfig) -> dict:
    """Train `config.model` on `config.data`; returns the metrics (also written to OUT_DIR/metrics.json).

    Raises ConfigError for bad input. `metrics["diverged"]` is True when the train loss stopped being finite.
    """
    trainer = Trainer(config)
    try:
        return trainer.run()
    finally:
        if trainer.dist is not None:
            trainer.dist.close()
