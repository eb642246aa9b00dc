"""Declares a bench function's matrix (variants x models x activations x batch sizes) without importing pytest."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from nn_speedups.matrix.variant import Variant


@dataclass(frozen=True)
class Matrix:
    variants: tuple[Variant, ...]
    models: tuple[str, ...] | None = None  # None: every model of the profile / --models
    activations: tuple[str | None, ...] = (None,)  # None: the model's own activation
    training: bool = False  # batch sizes and image size from the profile's training settings


def matrix(variants: Sequence[Variant], models: Sequence[str] | None = None, activations=(None,), training=False):
    """Decorator: the plugin parametrizes the function's `case` argument over this matrix."""

    def mark(function):
        models_ = tuple(models) if models else None
        function.nn_matrix = Matrix(tuple(variants), models_, tuple(activations), training)
        return function

    return mark
