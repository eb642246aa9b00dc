import os
import threading
from types import SimpleNamespace

import psutil
import pytest
import torch
from torch import nn

from nn_speedups.measure import metrics

HANG_S = 60.0  # a hang guard only: how long the sampling thread may take to read once before it counts as stuck
MB = metrics.MB


class Rss:
    """What HostPeak reads the RSS from (its `_process`): the real process's figure, or one the test sets; the reads
    that the sampling thread makes (not this test's thread) are counted, so a test waits for a sample by its count,
    never by a sleep."""

    def __init__(self, process=None, rss: int = 0) -> None:
        self._process, self._rss = process, rss
        self._caller = threading.get_ident()
        self._sampled = threading.Condition()
        self.sampler_reads = 0

    def set(self, rss: int) -> None:
        with self._sampled:
            self._rss = rss

    def memory_info(self):
        with self._sampled:
            rss = self._process.memory_info().rss if self._process is not None else self._rss
            if threading.get_ident() != self._caller:
                self.sampler_reads += 1
                self._sampled.notify_all()
            return SimpleNamespace(rss=rss)

    def await_sample(self) -> None:
        """Return once the sampling thread has read the RSS after this call began (so after any set() before it)."""
        with self._sampled:
            after = self.sampler_reads
            if not self._sampled.wait_for(lambda: self.sampler_reads > after, timeout=HANG_S):
                raise AssertionError(f"HostPeak's sampling thread read nothing in {HANG_S:.0f} s: stuck")


def _host_peak(rss: Rss, interval_s: float) -> metrics.HostPeak:
    peak = metrics.HostPeak(interval_s=interval_s)
    peak._process = rss
    return peak


def test_host_peak_keeps_a_peak_that_only_the_sampling_thread_saw():
    """The RSS rises and falls back inside the block: neither the start nor the end shows the rise, a sample between
    them does."""
    rss = Rss(rss=100 * MB)
    with _host_peak(rss, interval_s=0.001) as peak:
        rss.set(356 * MB)
        rss.await_sample()
        rss.set(100 * MB)
    assert (peak.start_mb, peak.peak_mb) == (100, 356)
    assert rss.sampler_reads >= 1


def test_host_peak_reset_returns_the_peak_so_far_and_starts_again_from_the_current_rss():
    """Samples injected by hand (the thread waits an hour between its own): a 256 MB build, freed; reset() gives the
    build's peak and starts the deployed model's from what is resident now."""
    rss = Rss(rss=100 * MB)
    with _host_peak(rss, interval_s=3600.0) as peak:
        rss.set(356 * MB)
        peak._sample()
        rss.set(110 * MB)
        peak._sample()
        build_mb = peak.reset()
        assert peak.peak_mb == 110  # the current RSS, not the build's peak
        rss.set(130 * MB)
        peak._sample()
        rss.set(120 * MB)
    assert (build_mb, peak.peak_mb, peak.start_mb) == (356, 130, 100)
    assert rss.sampler_reads == 0  # every sample above was the test's own


def test_host_peak_samples_the_real_resident_set():
    """The real process: 256 MB written (resident) is in the peak once the thread has sampled it, and it is freed
    before the block ends, so only the thread's sample can hold it."""
    with metrics.HostPeak() as before:
        pass
    rss = Rss(psutil.Process(os.getpid()))
    with _host_peak(rss, interval_s=0.001) as peak:
        block = torch.ones(64 * 1024 * 1024, dtype=torch.float32)  # 256 MB, written so it is resident
        block.add_(1)
        rss.await_sample()
        del block
    assert peak.peak_mb >= before.peak_mb + 200


def test_device_peak_is_none_on_cpu():
    with metrics.DevicePeak("cpu") as peak:
        torch.ones(1000)
    assert peak.peak_mb is None


@pytest.mark.gpu
def test_device_peak_counts_cuda_allocations():
    with metrics.DevicePeak("cuda") as peak:
        x = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device="cuda")
        del x
    assert peak.peak_mb >= 256


def test_state_dict_bytes_is_the_weights_plus_a_little(tmp_path):
    model = nn.Linear(1000, 500)
    weights = (1000 * 500 + 500) * 4
    size = metrics.state_dict_bytes(model)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    assert abs(size - (tmp_path / "m.pt").stat().st_size) < 1024  # the zip's record names differ by file name
    assert weights <= size < weights + 4096
    assert metrics.state_dict_bytes(model.half()) < size / 1.9


def test_files_bytes_adds_every_file(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"x" * 1000)
    (tmp_path / "model.onnx.data").write_bytes(b"y" * 31000)
    assert metrics.files_bytes(tmp_path / "model.onnx", tmp_path / "model.onnx.data") == 32000


def test_count_flops_of_a_linear_and_a_conv():
    assert metrics.count_flops(nn.Linear(64, 32), (torch.randn(8, 64),)) == 2 * 8 * 64 * 32
    conv = nn.Conv2d(3, 16, kernel_size=3, padding=1)
    assert metrics.count_flops(conv, (torch.randn(2, 3, 10, 10),)) == 2 * 2 * 16 * 10 * 10 * 3 * 3 * 3


# ------------------------------------------------------------------------------ host memory per case, in any order


def _holding(megabytes: int):
    """A variant whose runner holds `megabytes` of its own (a copy of the weights an engine would keep, say) and
    computes the model's function."""
    from nn_speedups.optimizations.base import Runner

    def apply(model, inputs, ctx):
        held = torch.ones(megabytes * 2**20 // 4)  # written, so resident

        def run(*xs):
            return model(*xs) + 0 * held[0]

        return Runner(fn=run, model=model)

    return apply


@pytest.mark.parametrize("order", [("small", "large"), ("large", "small")])
def test_host_memory_is_what_each_case_adds_whatever_ran_before(order):
    """Two variants of one model in one process: their host_mb is what each allocates (48 and 160 MB), in both
    orders; peak_host_mb stays the process's own peak (torch and the model included), not a per-variant figure."""
    from dataclasses import replace

    from nn_speedups.matrix.axes import PROFILES
    from nn_speedups.matrix.variant import Variant
    from nn_speedups.measure.protocol import BaselineCache, Case, Settings, run_case
    from nn_speedups.models.registry import ModelSpec

    spec = ModelSpec(
        name="tiny-mlp",
        build=lambda image_size=None: torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU()),
        example_inputs=lambda b, image_size=0, device="cpu", seed=0: (
            torch.randn(b, 64, generator=torch.Generator().manual_seed(seed)).to(device),
        ),
    )
    profile = replace(PROFILES["quick"], min_rounds=3, max_rounds=3, warmup_rounds=1, timing_budget_s=0.01)
    baselines = BaselineCache(Settings(device="cpu", profile=profile, image_size=32))
    sizes = {"small": 48, "large": 160}
    found = {}
    for name in order:
        variant = Variant(name, _holding(sizes[name]), check="exact")
        found[name] = run_case(Case(spec, 4, variant, "cpu"), baselines)
    for name, megabytes in sizes.items():
        assert found[name]["host_mb"] == pytest.approx(megabytes, abs=16), (name, found[name]["host_mb"])
    assert all(r["peak_host_mb"] > r["host_mb"] + 100 for r in found.values())  # torch alone holds more
