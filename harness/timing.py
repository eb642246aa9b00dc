"""Timing: synchronize the device after every timed call, keep every round, summarize with percentiles."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

# Fewest rounds for which a percentile is reported at all (a p99 from 20 rounds means little).
MIN_ROUNDS_FOR = {"p90": 20, "p99": 100}


def synchronizer(device: str) -> Callable[[], None]:
    """The call that waits for all queued work on `device` (CUDA work is asynchronous)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


class RoundTimer:
    """Wraps `fn` so each call ends with `sync()` and its wall time (seconds) lands in `self.times`."""

    def __init__(self, fn: Callable[[], object], sync: Callable[[], None]) -> None:
        self.fn = fn
        self.sync = sync
        self.times: list[float] = []

    def __call__(self) -> object:
        start = time.perf_counter()
        out = self.fn()
        self.sync()
        self.times.append(time.perf_counter() - start)
        return out


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100] (numpy's default method)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class Summary:
    rounds: int
    median_ms: float
    mean_ms: float
    stdev_ms: float
    min_ms: float
    p90_ms: float | None
    p99_ms: float | None


def summarize(times_s: list[float]) -> Summary:
    ms = [t * 1e3 for t in times_s]
    n = len(ms)
    return Summary(
        rounds=n,
        median_ms=statistics.median(ms),
        mean_ms=statistics.fmean(ms),
        stdev_ms=statistics.stdev(ms) if n > 1 else 0.0,
        min_ms=min(ms),
        p90_ms=percentile(ms, 90) if n >= MIN_ROUNDS_FOR["p90"] else None,
        p99_ms=percentile(ms, 99) if n >= MIN_ROUNDS_FOR["p99"] else None,
    )


def choose_rounds(one_call_s: float, budget_s: float, min_rounds: int, max_rounds: int) -> int:
    """As many rounds as fit in `budget_s`, clamped to [min_rounds, max_rounds]."""
    fit = int(budget_s / max(one_call_s, 1e-6))
    return max(min_rounds, min(max_rounds, fit))


def samples_per_s(batch_size: int, median_ms: float) -> float:
    return batch_size / (median_ms / 1e3)


def speedup(baseline_median_ms: float, variant_median_ms: float) -> float:
    return baseline_median_ms / variant_median_ms
