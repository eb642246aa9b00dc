import math
import time

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nn_speedups.measure import timing


@given(st.lists(st.floats(0, 1e3, allow_nan=False), min_size=1, max_size=300), st.floats(0, 100))
def test_percentile_matches_numpy(values, q):
    assert math.isclose(timing.percentile(values, q), float(np.percentile(values, q)), rel_tol=1e-9, abs_tol=1e-9)


def test_summary_withholds_percentiles_from_too_few_rounds():
    """LoadGen's rule of thumb: about 64 samples bound a p90, 662 a p99; below that the figure is withheld."""
    few = timing.summarize([0.001 * i for i in range(1, 64)])  # 63 rounds
    assert few.rounds == 63 and few.p90_ms is None and few.p99_ms is None
    assert few.median_ms == pytest.approx(32.0)
    some = timing.summarize([0.001 * i for i in range(1, 101)])  # 100 rounds, 1..100 ms: a p90 but no p99
    assert some.p90_ms == pytest.approx(np.percentile(np.arange(1, 101), 90)) and some.p99_ms is None
    enough = timing.summarize([0.001 * i for i in range(1, 701)])
    assert enough.p99_ms == pytest.approx(np.percentile(np.arange(1, 701), 99))
    assert enough.min_ms == pytest.approx(1.0)


def test_summary_measures_the_shape_of_the_rounds():
    """Spread, drift between halves (in the order the rounds ran) and two modes, from given rounds."""
    steady = timing.summarize([0.010] * 20)
    assert steady.iqr_rel == 0 and steady.drift == pytest.approx(1.0) and steady.modes is None
    drifting = timing.summarize([0.010] * 10 + [0.015] * 10)  # the second half 1.5x the first
    assert drifting.drift == pytest.approx(1.5)
    # the same rounds shuffled so both halves hold both: no drift, but two modes, half of them 1.5x slower
    mixed = timing.summarize([0.010, 0.015] * 10)
    assert mixed.drift == pytest.approx(1.0)
    assert mixed.modes == (pytest.approx(0.5), pytest.approx(1.5))
    assert mixed.iqr_rel == pytest.approx((15 - 10) / 12.5)
    # a smooth tail is not a second mode; nor are two outliers (fewer than 15% of the rounds)
    assert timing.summarize([0.010 * (1 + 0.01 * i) for i in range(40)]).modes is None
    assert timing.summarize([0.010] * 38 + [0.030] * 2).modes is None
    assert timing.summarize([0.010] * 9).drift is None  # too few rounds to judge a shape


def test_choose_rounds_fits_budget_within_bounds():
    assert timing.choose_rounds(0.01, budget_s=1.0, min_rounds=5, max_rounds=1000) == 100
    assert timing.choose_rounds(2.0, budget_s=1.0, min_rounds=5, max_rounds=1000) == 5
    assert timing.choose_rounds(1e-7, budget_s=1.0, min_rounds=5, max_rounds=200) == 200


def test_throughput_and_speedup():
    assert timing.samples_per_s(64, 32.0) == pytest.approx(2000.0)
    assert timing.speedup(60.8, 46.78) == pytest.approx(1.2997, rel=1e-3)


def test_round_timer_synchronizes_after_every_call_and_times_it():
    events = []

    def work():
        events.append("work")
        time.sleep(0.002)

    def sync():
        events.append("sync")
        time.sleep(0.003)  # a device still busy: the wait belongs in the round's time

    timer = timing.RoundTimer(work, sync)
    for _ in range(3):
        timer()
    assert events == ["work", "sync"] * 3
    assert len(timer.times) == 3 and all(t >= 0.005 for t in timer.times)


def test_synchronizer_picks_the_device_wait():
    assert timing.synchronizer("cuda") is torch.cuda.synchronize
    assert timing.synchronizer("cuda:0") is torch.cuda.synchronize
    cpu_sync = timing.synchronizer("cpu")
    assert cpu_sync is not torch.cuda.synchronize and cpu_sync() is None


@pytest.mark.gpu
def test_timed_cuda_work_includes_the_kernel_time():
    a = torch.randn(4096, 4096, device="cuda")
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(3):
        a @ a
    timer = timing.RoundTimer(lambda: a @ a, timing.synchronizer("cuda"))
    torch.cuda.synchronize()
    start.record()
    timer()
    end.record()
    torch.cuda.synchronize()
    assert timer.times[0] * 1e3 >= 0.9 * start.elapsed_time(end)
