"""The command line: python -m nn_speedups.train --model NAME [options]; exit code 2 for bad input, 1 if it diverged."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields
from pathlib import Path

from nn_speedups.train.config import DEFAULT_OUT_ROOT, ConfigError, TrainConfig
from nn_speedups.train.log import say
from nn_speedups.train.loop import train


def build_parser() -> argparse.ArgumentParser:
    defaults = {f.name: f.default for f in fields(TrainConfig) if f.name != "model"}
    parser = argparse.ArgumentParser(
        prog="python -m nn_speedups.train",
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
    add("--dist-timeout", dest="dist_timeout_s", type=float, default=defaults["dist_timeout_s"],
        help="torchrun runs: seconds a collective may wait for a rank before failing (default: 1800)")  # fmt: skip
    add("--teacher", default=None, help="knowledge distillation from this nn_speedups.train checkpoint (Hinton's loss)")
    add("--kd-temperature", type=float, default=defaults["kd_temperature"], help="KD temperature T (default: 4)")
    add("--kd-alpha", type=float, default=defaults["kd_alpha"], help="KD soft-target weight alpha (default: 0.9)")
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
        rank = f"[rank {os.environ['RANK']}] " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
        print(f"error: {rank}{error}", file=sys.stderr)
        return 2
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 alone writes metrics.json
        say(config, f"metrics: {Path(config.out_dir) / 'metrics.json'}")
    return 1 if metrics["diverged"] else 0
