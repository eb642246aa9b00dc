"""Energy, clocks and cost of the timed rounds: a metric beside nn_speedups/measure/metrics.py.

A meter is entered around the timed rounds only (nn_speedups.measure.protocol.measure_rounds) and reads counters at its
two ends, so the rounds run exactly as they would without it:

- GPU: NVML's total-energy counter (`nvmlDeviceGetTotalEnergyConsumption`, millijoules since the driver loaded;
  Volta and newer), read before and after. A thread samples the GPU's state every `interval_s` (0.1 s: ten NVML
  reads a second beside a busy GPU): SM and memory clocks, temperature, the enforced power limit, and the clock
  event (throttle) reasons, OR-ed over the samples. A case whose rounds saw a power cap, a thermal slowdown or a
  hardware slowdown is `throttled`.
- CPU: RAPL energy counters under /sys/class/powercap (`energy_uj` of each package zone; wrap-around handled with
  `max_energy_range_uj`). RAPL measures the whole package, so it counts every process on it: the figure means
  something on an otherwise idle machine only. Many kernels make `energy_uj` readable by root only; then the fields
  are null and `describe()` (saved in machine_info) says why.

Fields: `joules_per_sample` (energy over the rounds / (rounds x batch size)), `avg_watts` (energy / wall time of
the rounds), `energy_j`, `energy_source`, plus the GPU state fields. `usd_per_million_samples` turns a price per
hour of the machine (`--price-per-hour`) into the cost of a million samples at the measured median latency.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from nn_speedups.measure import nvml

POWERCAP = Path("/sys/class/powercap")

# NVML clock event ("throttle") reason bits (nvml.h, stable since NVML 5): the ones that slow a busy GPU down.
# GpuIdle (0x1), ApplicationsClocksSetting (0x2), SyncBoost (0x10) and DisplayClockSetting (0x100) are not throttling.
THROTTLE_REASONS = {
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
}

NULL_FIELDS = {"joules_per_sample": None, "avg_watts": None, "energy_j": None, "energy_source": None}


def usd_per_million_samples(price_per_hour: float, batch_size: int, median_ms: float) -> float:
    """What a million samples cost on a machine rented at `price_per_hour` USD, at one batch per median latency."""
    seconds_per_sample = median_ms / 1e3 / batch_size
    return price_per_hour / 3600.0 * seconds_per_sample * 1e6


# ------------------------------------------------------------------------------------------------------------ RAPL


@dataclass(frozen=True)
class RaplZone:
    name: str  # e.g. package-0
    energy_file: Path
    max_range_uj: int

    def read_uj(self) -> int:
        return int(self.energy_file.read_text().strip())


@dataclass
class RaplStatus:
    zones: list[RaplZone] = field(default_factory=list)
    reason: str | None = None  # why there is no reading, when zones is empty

    @property
    def source(self) -> str | None:
        return "rapl:" + "+".join(z.name for z in self.zones) if self.zones else None


_TOP_ZONE = re.compile(r"^[a-z-]*rapl:\d+$")  # intel-rapl:0 (also AMD's packages); not sub-zones, not *-mmio


def rapl_zones(root: str | os.PathLike = POWERCAP) -> RaplStatus:
    """The package-level RAPL zones under `root` whose counters this process can read, or the reason there are none.
    A `psys` (platform) zone contains the packages, so it is used only where no package zone is readable."""
    root = Path(root)
    if not root.is_dir():
        return RaplStatus(reason=f"{root} does not exist (no powercap/RAPL driver on this machine or in this VM)")
    packages, platform, unreadable = [], [], []
    for zone_dir in sorted(root.iterdir()):
        if not _TOP_ZONE.match(zone_dir.name) or "mmio" in zone_dir.name:
            continue
        energy = zone_dir / "energy_uj"
        try:
            name = (zone_dir / "name").read_text().strip()
            int(energy.read_text().strip())
            max_range = int((zone_dir / "max_energy_range_uj").read_text().strip())
        except PermissionError:
            unreadable.append(str(energy))
            continue
        except (OSError, ValueError):
            continue
        (platform if name == "psys" else packages).append(RaplZone(name, energy, max_range))
    zones = packages or platform
    if zones:
        return RaplStatus(zones=zones)
    if unreadable:
        return RaplStatus(
            reason=f"{', '.join(unreadable)}: readable by root only (run as root, or chmod o+r the energy_uj files)"
        )
    return RaplStatus(reason=f"no readable RAPL package zone under {root}")


class RaplMeter:
    """CPU package energy over the block from RAPL counters, read at its two ends."""

    def __init__(self, status: RaplStatus) -> None:
        self.status = status
        self._start: list[int] = []
        self._end: list[int] = []
        self._t0 = self._t1 = 0.0

    def __enter__(self) -> RaplMeter:
        self.error = None
        try:
            self._start = [z.read_uj() for z in self.status.zones]
        except (OSError, ValueError) as error:  # a counter that went away must not fail the timing
            self.error = f"RAPL: {error}"
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self._t1 = time.perf_counter()
        if self.error is None:
            try:
                self._end = [z.read_uj() for z in self.status.zones]
            except (OSError, ValueError) as error:
                self.error = f"RAPL: {error}"

    def joules(self) -> float:
        total_uj = 0
        for zone, start, end in zip(self.status.zones, self._start, self._end):
            total_uj += end - start if end >= start else end + zone.max_range_uj - start  # the counter wrapped
        return total_uj / 1e6

    def fields(self, samples: int) -> dict:
        if self.error or not self._end:
            return {**NULL_FIELDS, "energy_error": self.error} if self.error else dict(NULL_FIELDS)
        return _energy_fields(self.joules(), self._t1 - self._t0, samples, self.status.source)


# ------------------------------------------------------------------------------------------------------------ NVML


class NvmlMeter:
    """GPU energy over the block from NVML's total-energy counter, and the GPU's state sampled during it
    (nn_speedups.measure.nvml: the readings and the sampler thread)."""

    def __init__(self, device_index: int = 0, interval_s: float = 0.1) -> None:
        self.device_index = device_index
        self.interval_s = interval_s
        self.error: str | None = None
        self._handle = None
        self._e0 = self._e1 = None
        self._t0 = self._t1 = 0.0
        self._samples: list[dict] = []
        self._sampler: nvml.Sampler | None = None

    def _sample(self) -> None:
        self._samples.append(nvml.gpu_state(self._handle))

    def __enter__(self) -> NvmlMeter:
        pynvml = nvml.load()
        if pynvml is None:
            self.error = nvml.MISSING
            return self
        try:
            self._handle = nvml.device_handle(self.device_index)
        except pynvml.NVMLError as error:
            self._handle, self.error = None, f"NVML: {error}"
            return self
        try:
            self._e0 = nvml.total_energy_mj(self._handle)
        except pynvml.NVMLError as error:  # pre-Volta GPUs and some virtualized drivers
            self.error = f"nvmlDeviceGetTotalEnergyConsumption: {error}"
        self._sample()
        self._sampler = nvml.Sampler(self._sample, self.interval_s)
        self._t0 = time.perf_counter()
        self._sampler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is None:
            return
        pynvml = nvml.load()
        self._t1 = time.perf_counter()
        if self._e0 is not None:
            try:
                self._e1 = nvml.total_energy_mj(self._handle)
            except pynvml.NVMLError as error:
                self.error = f"nvmlDeviceGetTotalEnergyConsumption: {error}"
        self._sampler.stop()  # joins the thread, then the last sample

    def fields(self, samples: int) -> dict:
        out = dict(NULL_FIELDS)
        if self._e0 is not None and self._e1 is not None:
            out = _energy_fields((self._e1 - self._e0) / 1e3, self._t1 - self._t0, samples, "nvml:total_energy")
        if self.error:
            out["energy_error"] = self.error
        out.update(gpu_state_fields(self._samples))
        return out


def throttle_names(mask: int) -> list[str]:
    return [name for bit, name in THROTTLE_REASONS.items() if mask & bit]


def gpu_state_fields(samples: list[dict]) -> dict:
    """The GPU's state over the samples: mean/min SM clock, mean memory clock, max temperature, the power limit,
    and the throttle reasons seen in any sample."""

    def values(key):
        return [s[key] for s in samples if s.get(key) is not None]

    sm, mem, temp, limit, reasons = (values(k) for k in ("sm_mhz", "mem_mhz", "temp_c", "power_limit_w", "reasons"))
    mask = 0
    for r in reasons:
        mask |= r
    names = throttle_names(mask)
    return {
        "gpu_sm_mhz_mean": sum(sm) / len(sm) if sm else None,
        "gpu_sm_mhz_min": min(sm) if sm else None,
        "gpu_mem_mhz_mean": sum(mem) / len(mem) if mem else None,
        "gpu_temp_c_max": max(temp) if temp else None,
        "gpu_power_limit_w": limit[-1] if limit else None,
        "gpu_throttle_reasons": names,
        "throttled": bool(names) if reasons else None,
        "gpu_state_samples": len(samples),
    }


# ------------------------------------------------------------------------------------------------------- the meter


def _energy_fields(joules: float, seconds: float, samples: int, source: str | None) -> dict:
    return {
        "joules_per_sample": joules / samples if samples else None,
        "avg_watts": joules / seconds if seconds > 0 else None,
        "energy_j": joules,
        "energy_source": source,
    }


class NullMeter:
    """No energy counter on this device: null fields (machine_info's `energy` says why)."""

    def __enter__(self) -> NullMeter:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def fields(self, samples: int) -> dict:
        return dict(NULL_FIELDS)


def meter(device: str):
    """The energy meter for `device`: NVML on CUDA, RAPL on a CPU where readable, else a null meter."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return NvmlMeter(dev.index or 0)
    status = _rapl_status()
    return RaplMeter(status) if status.zones else NullMeter()


_RAPL: RaplStatus | None = None


def _rapl_status() -> RaplStatus:
    global _RAPL
    if _RAPL is None:
        _RAPL = rapl_zones()
    return _RAPL


def describe() -> dict:
    """Where energy figures come from on this machine, or why they are null (saved in machine_info)."""
    status = _rapl_status()
    info = {"cpu": status.source, "cpu_reason": status.reason}
    from nn_speedups.core.capabilities import has_cuda

    if has_cuda():
        info["gpu"] = "nvml:total_energy (nvmlDeviceGetTotalEnergyConsumption)"
    else:
        info["gpu"], info["gpu_reason"] = None, "no CUDA device"
    return info
