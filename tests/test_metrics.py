import pytest
import torch
from torch import nn

from nn_speedups.measure import metrics


def test_host_peak_sees_a_short_lived_allocation():
    with metrics.HostPeak() as before:
        pass
    with metrics.HostPeak(interval_s=0.001) as peak:
        block = torch.ones(64 * 1024 * 1024, dtype=torch.float32)  # 256 MB, written so it is resident
        block.add_(1)
        del block
    assert peak.peak_mb >= before.peak_mb + 200


def test_host_peak_reset_starts_a_new_peak_after_a_freed_build():
    with metrics.HostPeak(interval_s=0.001) as peak:
        block = torch.ones(64 * 1024 * 1024, dtype=torch.float32)  # a 256 MB "build", then freed
        block.add_(1)
        del block
        build_mb = peak.reset()
        small = torch.ones(1024, dtype=torch.float32)
        small.add_(1)
    assert build_mb >= peak.peak_mb + 200  # the freed 256 MB are in the build's peak, not in the new one


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
