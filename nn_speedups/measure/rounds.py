"""Timing one case's rounds: warm up, choose the number of rounds from the profile's budget, then time them.

The one timing loop of every family (the eager and compiled baselines, inference, training); re-exported by
nn_speedups.measure.protocol, where the benches import it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from nn_speedups.matrix.axes import Profile
from nn_speedups.measure import timing


def measure_rounds(
    fn: Callable[[], object],
    sync: Callable[[], None],
    profile: Profile,
    run: Callable | None = None,
    meter=None,
) -> timing.Summary:
    """Warm up, choose the number of rounds from the budget, then time them (through `run` when given).

    `run(target, rounds)` lets pytest-benchmark drive the same rounds; without it they are timed here.
    `meter` (a nn_speedups.measure.energy meter) is entered around the timed rounds only, not the warm-up.
    """
    timer = timing.RoundTimer(fn, sync)
    for _ in range(profile.warmup_rounds):
        timer()
    one_call = min(timer.times) if timer.times else 0.0
    timer.times.clear()
    rounds = timing.choose_rounds(one_call, profile.timing_budget_s, profile.min_rounds, profile.max_rounds)
    with meter if meter is not None else contextlib.nullcontext():
        if run is None:
            for _ in range(rounds):
                timer()
        else:
            run(timer, rounds)
    return timing.summarize(timer.times)
