"""nn_speedups.measure.energy: RAPL counters read from a powercap tree (a real directory tree written here, parsed by
the real
reader), NVML where there is a GPU, the GPU-state summary, and the price arithmetic; the kernel table's regimes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest
import torch

from nn_speedups.core.capabilities import has_cuda
from nn_speedups.measure import energy, nvml
from tests.conftest import ROOT, run_suite


def _zone(root, name: str, label: str, energy_uj: int, max_uj: int = 2**32) -> None:
    zone = root / name
    zone.mkdir(parents=True)
    (zone / "name").write_text(label + "\n")
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_uj}\n")


def _set(root, name: str, energy_uj: int) -> None:
    (root / name / "energy_uj").write_text(f"{energy_uj}\n")


@pytest.fixture
def powercap(tmp_path):
    """Two packages, their core sub-zones, an MMIO duplicate of package 0 and a platform (psys) zone."""
    root = tmp_path / "powercap"
    _zone(root, "intel-rapl:0", "package-0", 1_000_000)
    _zone(root, "intel-rapl:0:0", "core", 500_000)
    _zone(root, "intel-rapl:1", "package-1", 2_000_000, max_uj=2_500_000)
    _zone(root, "intel-rapl-mmio:0", "package-0", 1_000_000)
    _zone(root, "intel-rapl:2", "psys", 9_000_000)
    return root


def test_rapl_reads_the_package_zones_only(powercap):
    status = energy.rapl_zones(powercap)
    assert [z.name for z in status.zones] == ["package-0", "package-1"] and status.reason is None
    assert status.source == "rapl:package-0+package-1"


def test_rapl_energy_over_a_block_with_a_wrapped_counter(powercap):
    meter = energy.RaplMeter(energy.rapl_zones(powercap))
    with meter:
        _set(powercap, "intel-rapl:0", 4_000_000)  # +3 J
        _set(powercap, "intel-rapl:1", 500_000)  # wrapped at 2.5 J: +1 J
        _set(powercap, "intel-rapl:0:0", 99_000_000)  # a sub-zone: not counted again
    assert meter.joules() == pytest.approx(4.0)
    fields = meter.fields(samples=8)
    assert fields["joules_per_sample"] == pytest.approx(0.5) and fields["energy_j"] == pytest.approx(4.0)
    assert fields["avg_watts"] > 0 and fields["energy_source"] == "rapl:package-0+package-1"


def test_rapl_falls_back_to_psys_and_says_why_when_nothing_is_readable(tmp_path):
    root = tmp_path / "powercap"
    _zone(root, "intel-rapl:0", "psys", 10)
    assert energy.rapl_zones(root).source == "rapl:psys"
    (root / "intel-rapl:0" / "energy_uj").unlink()
    (root / "intel-rapl:0" / "energy_uj").mkdir()  # unreadable as a number
    assert energy.rapl_zones(root).zones == [] and "no readable RAPL package zone" in energy.rapl_zones(root).reason
    missing = energy.rapl_zones(tmp_path / "absent")
    assert missing.zones == [] and "does not exist" in missing.reason


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file: permissions cannot hide a counter")
def test_rapl_names_root_only_counters(tmp_path):
    root = tmp_path / "powercap"
    _zone(root, "intel-rapl:0", "package-0", 10)
    (root / "intel-rapl:0" / "energy_uj").chmod(0o000)
    assert "readable by root only" in energy.rapl_zones(root).reason


def test_a_counter_that_vanishes_leaves_null_fields_not_an_error(powercap):
    meter = energy.RaplMeter(energy.rapl_zones(powercap))
    with meter:
        (powercap / "intel-rapl:1" / "energy_uj").unlink()
    fields = meter.fields(samples=4)
    assert fields["joules_per_sample"] is None and "RAPL" in fields["energy_error"]


def test_price_per_million_samples():
    # $3.60 an hour is $0.001 a second; 8 samples in 10 ms is 1.25 ms a sample: 1,250 s per million samples
    assert energy.usd_per_million_samples(3.6, 8, 10.0) == pytest.approx(1.25)
    assert energy.usd_per_million_samples(3.6, 1, 10.0) == pytest.approx(10.0)


def test_gpu_state_flags_throttling():
    samples = [
        {"sm_mhz": 1980, "mem_mhz": 2619, "temp_c": 60, "power_limit_w": 700.0, "reasons": 0x1},
        {"sm_mhz": 1500, "mem_mhz": 2619, "temp_c": 71, "power_limit_w": 700.0, "reasons": 0x4 | 0x20},
    ]
    state = energy.gpu_state_fields(samples)
    assert state["gpu_sm_mhz_min"] == 1500 and state["gpu_sm_mhz_mean"] == 1740 and state["gpu_temp_c_max"] == 71
    assert state["throttled"] is True and state["gpu_throttle_reasons"] == ["sw_power_cap", "sw_thermal_slowdown"]
    idle = energy.gpu_state_fields([{**samples[0], "reasons": 0x1}])  # GpuIdle is not throttling
    assert idle["throttled"] is False and idle["gpu_throttle_reasons"] == []
    assert energy.gpu_state_fields([])["throttled"] is None


def test_nvml_meter_without_a_gpu_gives_null_fields_and_the_reason():
    if has_cuda():
        pytest.skip("this machine has a GPU: test_nvml_energy_of_a_busy_gpu measures it")
    meter = energy.NvmlMeter(0)
    with meter:
        pass
    fields = meter.fields(samples=10)
    assert fields["joules_per_sample"] is None and fields["energy_error"]


@pytest.mark.gpu
def test_nvml_energy_of_a_busy_gpu():
    a = torch.randn(4096, 4096, device="cuda")
    meter = energy.NvmlMeter(0, interval_s=0.05)
    with meter:
        for _ in range(200):
            a = torch.tanh(a @ a)
        torch.cuda.synchronize()
    fields = meter.fields(samples=200)
    if fields.get("energy_error"):
        pytest.skip(f"this GPU has no NVML energy counter: {fields['energy_error']}")
    assert fields["joules_per_sample"] > 0 and 10 < fields["avg_watts"] < 2000
    assert fields["gpu_sm_mhz_mean"] > 0 and fields["gpu_power_limit_w"] > 0 and fields["throttled"] is not None


def test_nvml_sampler_samples_on_its_thread_and_once_more_on_stop():
    threads = []
    sampler = nvml.Sampler(lambda: threads.append(threading.current_thread()), interval_s=0.001)
    sampler.stop()  # never started: nothing
    assert threads == []
    sampler.start()
    time.sleep(0.05)
    sampler.stop()
    assert len(threads) >= 3 and threads[-1] is threading.current_thread()
    assert all(t is not threading.current_thread() for t in threads[:-1])
    count = len(threads)
    time.sleep(0.01)
    assert len(threads) == count  # the thread is gone


def test_nvml_is_imported_lazily_and_cuda_is_not_initialized():
    """nn_speedups.measure.nvml and .energy import neither pynvml nor torch (torch itself imports pynvml where it is
    installed); none of the measure modules initializes CUDA at import or for a CPU meter."""
    code = (
        "import sys\n"
        "from nn_speedups.measure import energy, nvml\n"
        "assert 'pynvml' not in sys.modules and 'torch' not in sys.modules, 'imported at import'\n"
        "import torch\n"
        "from nn_speedups.measure import metrics\n"
        "from nn_speedups.core import env\n"
        "energy.meter('cpu')\n"
        "assert not torch.cuda.is_initialized(), 'CUDA initialized'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    if not has_cuda():  # the CPU path: no GPU, no reading, the reason kept
        from nn_speedups.measure import metrics

        with metrics.NvmlProcessPeak(0) as peak:
            pass
        assert peak.peak_mb is None and peak.error


def test_kernel_table_times_the_copy_at_each_size_and_splits_regimes(tmp_path):
    """The FastSwish kernel bench, two sizes of relu forward: the copy reference is timed at each size, each row
    says its regime against the last-level cache, and one size is traced (measure_fn's trace path)."""
    out = tmp_path / "kernels.json"
    args = [str(ROOT / "benches" / "test_fastswish.py"), "--rootdir", str(ROOT), "-k", "test_kernel and relu-fwd-",
            "--traces", "relu-fwd-fp32-n64K", f"--benchmark-json={out}",
            "--report-dir", str(tmp_path / "reports")]  # fmt: skip
    result = run_suite(args, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    rows = {b["extra_info"]["elements"]: b["extra_info"] for b in json.loads(out.read_text())["benchmarks"]}
    assert len(rows) >= 2 and len({r["copy_gbps"] for r in rows.values()}) == len(rows)  # one copy per size
    for n, r in rows.items():
        assert r["pct_of_copy_bw"] == pytest.approx(100 * r["achieved_gbps"] / r["copy_gbps"])
        llc = r["llc_bytes"]
        assert r["regime"] == ("memory" if 2 * n * 4 > llc else "cache") and r["working_set_bytes"] == 2 * n * 4
    traced = rows[1 << 16]
    assert traced["kernel_calls_per_step"] == {"aten::relu": 1.0} and "top_ops" in traced
    assert "trace_steps" not in rows[max(rows)]
    if all(r["regime"] == "cache" for r in rows.values()):
        assert "cache-resident sizes" in result.stdout and "none measures memory bandwidth" in result.stdout
