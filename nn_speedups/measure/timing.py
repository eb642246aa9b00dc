"""Timing: synchronize the device after every timed call, keep every round, summarize with percentiles."""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from nn_speedups.core.round_rules import MIN_ROUNDS_FOR, MIN_ROUNDS_FOR_SHAPE, MODE_GAP, MODE_MIN_SHARE


def synchronizer(device: str) -> Callable[[], None]:
    """The call that waits for all queued work on `device` (CUDA work is asynchronous)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


# A tool to validate the regression gate (nn_speedups.gate): NN_SPEEDUPS_INJECT_SLOWDOWN=SUBSTRING:FACTOR[,...] makes
# every timed round of the tests whose node id contains SUBSTRING take FACTOR times as long as it measured, by
# spinning on the CPU after the synchronized call (e.g. "channels-last:1.25" for 25% slower). Never set it otherwise.
INJECT_SLOWDOWN_ENV = "NN_SPEEDUPS_INJECT_SLOWDOWN"


def injected_slowdown(case_id: str | None = None) -> float:
    """The factor NN_SPEEDUPS_INJECT_SLOWDOWN asks for `case_id` (default: the running pytest node id), else 1."""
    spec = os.environ.get(INJECT_SLOWDOWN_ENV, "").strip()
    if not spec:
        return 1.0
    if case_id is None:
        case_id = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]
    factor = 1.0
    for part in spec.split(","):
        pattern, _, value = part.strip().rpartition(":")
        try:
            wanted = float(value)
        except ValueError:
            wanted = -1.0
        if not pattern or not wanted >= 1.0:
            raise ValueError(
                f"{INJECT_SLOWDOWN_ENV}={spec!r}: give SUBSTRING:FACTOR[,SUBSTRING:FACTOR] with FACTOR >= 1, "
                "e.g. channels-last:1.25"
            )
        if pattern in case_id:
            factor = max(factor, wanted)
    return factor


class RoundTimer:
    """Wraps `fn` so each call ends with `sync()` and its wall time (seconds) lands in `self.times`.

    Under NN_SPEEDUPS_INJECT_SLOWDOWN (see injected_slowdown) a matching test's rounds really take longer: after the
    call the timer spins until (factor x the call's own time) has passed, so the slowdown scales with the round.
    """

    def __init__(self, fn: Callable[[], object], sync: Callable[[], None]) -> None:
        self.fn = fn
        self.sync = sync
        self.times: list[float] = []
        self.slowdown = injected_slowdown()

    def __call__(self) -> object:
        start = time.perf_counter()
        out = self.fn()
        self.sync()
        elapsed = time.perf_counter() - start
        if self.slowdown > 1.0:
            deadline = start + elapsed * self.slowdown
            while time.perf_counter() < deadline:
                pass
            elapsed = time.perf_counter() - start
        self.times.append(elapsed)
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
    iqr_rel: float = 0.0  # (p75 - p25) / median: how uncertain the median is
    drift: float | None = None  # the second half's median over the first half's, in the order the rounds ran
    modes: tuple[float, float] | None = None  # two modes: (share of rounds in the slower one, its median / the other's)


def summarize(times_s: list[float]) -> Summary:
    ms = [t * 1e3 for t in times_s]
    n = len(ms)
    median = statistics.median(ms)
    half = n // 2
    shaped = n >= MIN_ROUNDS_FOR_SHAPE
    return Summary(
        rounds=n,
        median_ms=median,
        mean_ms=statistics.fmean(ms),
        stdev_ms=statistics.stdev(ms) if n > 1 else 0.0,
        min_ms=min(ms),
        p90_ms=percentile(ms, 90) if n >= MIN_ROUNDS_FOR["p90"] else None,
        p99_ms=percentile(ms, 99) if n >= MIN_ROUNDS_FOR["p99"] else None,
        iqr_rel=(percentile(ms, 75) - percentile(ms, 25)) / median if median > 0 else 0.0,
        drift=statistics.median(ms[n - half :]) / statistics.median(ms[:half]) if shaped and min(ms) > 0 else None,
        modes=two_modes(ms) if shaped else None,
    )


def two_modes(values: list[float]) -> tuple[float, float] | None:
    """(share of values in the slower mode, its median over the faster mode's median) when the values split into
    two groups across an empty gap of at least MODE_GAP (ratio of neighbours), each holding MODE_MIN_SHARE of them
    (and at least 3); else None."""
    ordered = sorted(values)
    n = len(ordered)
    least = max(3, math.ceil(MODE_MIN_SHARE * n))
    best, split = 0.0, None
    for k in range(least, n - least + 1):
        if ordered[k - 1] <= 0:
            continue
        jump = ordered[k] / ordered[k - 1]
        if jump > best:
            best, split = jump, k
    if split is None or best < MODE_GAP:
        return None
    low, high = ordered[:split], ordered[split:]
    return (len(high) / n, statistics.median(high) / statistics.median(low))


def choose_rounds(one_call_s: float, budget_s: float, min_rounds: int, max_rounds: int) -> int:
    """As many rounds as fit in `budget_s`, clamped to [min_rounds, max_rounds]."""
    fit = int(budget_s / max(one_call_s, 1e-6))
    return max(min_rounds, min(max_rounds, fit))


def samples_per_s(batch_size: int, median_ms: float) -> float:
    return batch_size / (median_ms / 1e3)


def speedup(baseline_median_ms: float, variant_median_ms: float) -> float:
    return baseline_median_ms / variant_median_ms
