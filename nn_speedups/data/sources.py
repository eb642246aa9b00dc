"""Data sources: the --data source string (`parse_source`) and the Splits record every source's datasets come in."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

KINDS = ("synthetic", "tinyimagenet", "imagenet-val")
SOURCE_FORMS = ("synthetic", "tinyimagenet:PATH", "imagenet-val:PATH")


@dataclass(frozen=True)
class DataSource:
    """Where the images come from: `kind` is one of KINDS, `path` is None for synthetic."""

    kind: str
    path: Path | None = None

    def __str__(self) -> str:
        return self.kind if self.path is None else f"{self.kind}:{self.path}"


def parse_source(text: str) -> DataSource:
    """'synthetic' | 'tinyimagenet:PATH' | 'imagenet-val:PATH' -> DataSource. Anything else is a ValueError."""
    kind, sep, path = text.strip().partition(":")
    forms = ", ".join(repr(form) for form in SOURCE_FORMS)
    if kind == "synthetic" and not sep:
        return DataSource("synthetic")
    if kind in ("tinyimagenet", "imagenet-val") and path.strip():
        return DataSource(kind, Path(path.strip()).expanduser())
    raise ValueError(f"unknown data source {text!r}: expected one of {forms}")


@dataclass
class Splits:
    """The datasets of one source. `train` is None for evaluation-only sources; label i names `classes[i]`."""

    train: Dataset | None
    val: Dataset
    classes: list[str]
    num_classes: int
