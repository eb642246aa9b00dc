"""Checkpoints: what one holds, finding the one to resume from, writing and restoring it with the RNG states.

A checkpoint holds the model's state_dict under "model" (the uncompiled module's, so no "_orig_mod." prefixes), the
optimizer, the GradScaler, epoch, step, config, the metrics history and the RNG states (torch, CUDA, numpy, python
and the train loader's shuffling generator). Files are written to a ".partial" name and renamed, so a run killed
while writing leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from nn_speedups.train.config import IDENTITY_FIELDS, ConfigError, TrainConfig
from nn_speedups.train.log import say


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_states(device: torch.device) -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "python": (py_state[0], list(py_state[1]), py_state[2]),
    }


def restore_rng_states(rng: dict, device: torch.device) -> None:
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state_all(rng["cuda"])
    np_state = rng["numpy"]
    np.random.set_state((np_state[0], np_state[1].numpy(), *np_state[2:]))
    random.setstate((rng["python"][0], tuple(rng["python"][1]), rng["python"][2]))


def to_resume(config: TrainConfig, out_dir: Path | None) -> dict | None:
    """The checkpoint --resume names (with its "path"), None to start afresh; refuses one from a different run."""
    resume = config.resume
    if resume is None:
        return None
    if resume == "auto":
        path = out_dir / "last.pt"
        if not path.is_file():
            say(config, f"--resume auto: no {path} yet, starting from epoch 1")
            return None
    else:
        path = Path(resume)
        if not path.is_file():
            raise ConfigError(f"--resume {resume}: no such checkpoint file")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    saved = checkpoint.get("config", {})
    mismatched = [name for name in IDENTITY_FIELDS if saved.get(name) != getattr(config, name)]
    if mismatched:
        shown = ", ".join(f"{name}: {saved.get(name)!r} there, {getattr(config, name)!r} here" for name in mismatched)
        raise ConfigError(f"--resume {path}: the checkpoint is from a different run ({shown})")
    checkpoint["path"] = str(path)
    return checkpoint


def save(out_dir: Path, payload: dict, best: bool) -> None:
    """OUT_DIR/last.pt (atomically), copied to best.pt when `best`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    last = out_dir / "last.pt"
    partial = out_dir / "last.pt.partial"
    torch.save(payload, partial)
    os.replace(partial, last)
    if best:
        shutil.copyfile(last, out_dir / "best.pt")


def payload(trainer, epoch: int) -> dict:
    """What a checkpoint of `trainer` (nn_speedups.train.loop.Trainer) after `epoch` (0-based) holds."""
    return {
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
        "epoch": epoch + 1,
        "step": trainer.step,
        "config": asdict(trainer.config),
        "classes": list(trainer.splits.classes),
        "history": trainer.history,
        "rng": rng_states(trainer.device),
        "loader_rng": trainer.train_loader.generator.get_state(),
    }


def restore(trainer, checkpoint: dict) -> None:
    """Put `trainer` back where `checkpoint` left it: weights, optimizer, scaler, history, step, RNG states."""
    trainer.model.load_state_dict(checkpoint["model"])
    trainer.optimizer.load_state_dict(checkpoint["optimizer"])
    if trainer.scaler is not None and checkpoint.get("scaler"):
        trainer.scaler.load_state_dict(checkpoint["scaler"])
    trainer.history = list(checkpoint["history"])
    trainer.start_epoch, trainer.step = checkpoint["epoch"], checkpoint["step"]
    trainer.resumed_from = checkpoint["path"]
    restore_rng_states(checkpoint["rng"], trainer.device)
    trainer.train_loader.generator.set_state(checkpoint["loader_rng"])


def write_json(out_dir: Path, name: str, text: str) -> Path:
    """OUT_DIR/name written atomically (through a .partial file)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    partial = out_dir / f"{name}.partial"
    partial.write_text(text)
    os.replace(partial, path)
    return path
