"""Declares a bench function's matrix (variants x models x activations x batch sizes) without importing pytest."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from harness.variant import Variant


@dataclass(frozen=True)
class Matrix:
    variants: tuple[Variant, ...]
    models: tuple[str, ...] | None = None  # None: every model of the profile / --models
    activations: tuple[str | None, ...] = (None,)  # None: the model's own activation


def matrix(variants: Sequence[Variant], models: Sequence[str] | None = None, activations=(None,)):
    """Decorator: the plugin parametrizes the function's `case` argument over this matrix."""

    def mark(function):
        function.nn_matrix = Matrix(tuple(variants), tuple(models) if models else None, tuple(activations))
        return function

    return mark
