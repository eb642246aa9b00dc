"""NVML for the meters: a lazy pynvml import, init and device handles, the GPU readings, and the one sampler thread.

pynvml is imported only by the functions here, when a CUDA device is measured, never when this module is imported;
nothing here touches CUDA itself. NVML counts its initializations: every `device_handle` call runs nvmlInit (cheap
once initialized) and, as before, the meters keep NVML initialized for the life of the process.

Readings:

- `total_energy_mj`: NVML's total-energy counter, millijoules since the driver loaded (Volta and newer; raises
  pynvml.NVMLError where the GPU or driver has none);
- `gpu_state`: SM and memory clocks, temperature, enforced power limit and clock event (throttle) reasons, each None
  where NVML has no value (nn_speedups.measure.energy);
- `process_memory_bytes`: the device memory one process holds (nn_speedups.measure.metrics; NVMLError propagates).

`Sampler` calls a function every `interval_s` on a daemon thread between `start()` and `stop()`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

MISSING = "pynvml missing: pip install nvidia-ml-py"


def load():
    """The pynvml module, imported now; None where it is not installed."""
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


def device_handle(index: int = 0):
    """NVML initialized and the handle of GPU `index`. Raises ImportError without pynvml, pynvml.NVMLError where
    NVML cannot start (no driver, no GPU) or has no such device."""
    import pynvml

    pynvml.nvmlInit()
    return pynvml.nvmlDeviceGetHandleByIndex(index)


# ------------------------------------------------------------------------------------------------------ readings


def total_energy_mj(handle) -> int:
    """NVML's total-energy counter of the GPU, millijoules since the driver loaded (pre-Volta GPUs and some
    virtualized drivers raise pynvml.NVMLError)."""
    import pynvml

    return pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)


def clock_event_reasons(handle) -> int:
    """The clock event ("throttle") reason bits of the GPU now."""
    import pynvml

    read = getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None)  # the name since NVML 12.2
    if read is None:
        read = pynvml.nvmlDeviceGetCurrentClocksThrottleReasons
    return int(read(handle))


def gpu_state(handle) -> dict:
    """The GPU's state now: `sm_mhz`, `mem_mhz`, `temp_c`, `power_limit_w` (enforced) and `reasons` (clock event
    bits); a value NVML cannot read is None."""
    import pynvml

    readers = {
        "sm_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
        "mem_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM),
        "temp_c": lambda: pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU),
        "power_limit_w": lambda: pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1e3,
        "reasons": lambda: clock_event_reasons(handle),
    }
    state = {}
    for key, read in readers.items():
        try:
            state[key] = read()
        except pynvml.NVMLError:
            state[key] = None
    return state


def process_memory_bytes(handle, pid: int) -> int | None:
    """Device memory (bytes) process `pid` holds on the GPU as a compute process; None where NVML lists no figure
    for it."""
    import pynvml

    for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
        if proc.pid == pid and proc.usedGpuMemory is not None:
            return proc.usedGpuMemory
    return None


# ------------------------------------------------------------------------------------------------------- sampler


class Sampler:
    """Calls `sample()` every `interval_s` on a daemon thread from `start()` until `stop()`, which joins the thread
    and takes one last sample in the caller's thread (a first sample before `start()` is the caller's to take).
    One use: a meter builds a Sampler each time it is entered. An exception of `sample()` in the thread ends the
    thread (the readings above catch NVML's own where a missing value is expected)."""

    def __init__(self, sample: Callable[[], None], interval_s: float) -> None:
        self.sample = sample
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._started = False

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def start(self) -> Sampler:
        self._thread.start()
        self._started = True
        return self

    def stop(self) -> None:
        """Stop the thread, join it and sample once more; nothing where the sampler was never started."""
        if not self._started:
            return
        self._stop.set()
        self._thread.join()
        self.sample()
