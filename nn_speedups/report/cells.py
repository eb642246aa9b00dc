"""Table cells: how the report writes a number, a share, a ratio, a percentile and a case's correctness check."""

from __future__ import annotations

import math

from nn_speedups.core.round_rules import MIN_ROUNDS_FOR


def _fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _ratio(value) -> str:
    return "-" if value is None else f"{value:.1f}x"


def _check_cell(row: dict) -> str:
    if row.get("check") == "exact":
        return f"exact (max err {row.get('max_abs_err', 0):.1e})"
    if row.get("check") == "lowp":
        return f"lowp (cos {row.get('cosine', 0):.4f})"
    if row.get("check") == "lossy":
        cell = f"lossy ({row.get('sqnr_db', 0):.1f} dB"
        if row.get("top1_agreement") is not None:
            cell += (
                f", top-1 agrees {row['top1_agreement']:.1%} of {row['eval_images']} ({row['distinct_top1']} classes)"
            )
        return cell + ")"
    if row.get("check") == "accuracy":
        if row.get("top1_drop") is not None:
            drop, reference = -100 * row["top1_drop"], row["reference_top1"]
            against = f"{reference:.1%}" + (f", {row['reference_kind']}" if row.get("reference_kind") else "")
            return f"accuracy (top-1 {drop:+.1f} pts vs {against}; {row['sqnr_db']:.1f} dB)"
        if row.get("kernel_cosine") is not None:
            return f"accuracy (sparse vs dense kernels cos {row['kernel_cosine']:.4f})"
    return row.get("check") or "-"


def percentile_cell(row: dict, key: str) -> str:
    """A percentile's cell: the figure when the case ran enough rounds for it, else the round count."""
    value = row.get(key)
    needed = MIN_ROUNDS_FOR.get(key.removesuffix("_ms"), 0)
    if value is None or (row.get("rounds") or 0) < needed:
        return f"n={row.get('rounds', '?')}"
    return f"{value:.2f}" if abs(value) < 1000 else f"{value:,.0f}"
