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
    few = timing.summarize([0.001 * i for i in range(1, 11)])  # 10 rounds
    assert few.rounds == 10 and few.p90_ms is None and few.p99_ms is None
    assert few.median_ms == pytest.approx(5.5)
    enough = timing.summarize([0.001 * i for i in range(1, 101)])  # 100 rounds, 1..100 ms
    assert enough.p90_ms == pytest.approx(np.percentile(np.arange(1, 101), 90))
    assert enough.p99_ms == pytest.approx(np.percentile(np.arange(1, 101), 99))
    assert enough.min_ms == pytest.approx(1.0)


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
