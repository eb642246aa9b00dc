"""Metrics beside latency: device and host memory peaks, model size on disk, FLOPs."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import io
import os
import threading
from pathlib import Path

import psutil
import torch
from torch import nn

from nn_speedups.measure import nvml

MB = 1024 * 1024


def _libc():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


_LIBC = _libc()


def settle_host_memory() -> None:
    """Collect garbage and hand the C heap's free pages back to the system (glibc's malloc_trim), so that the RSS read
    next is what live objects hold, not what the last case freed and malloc kept: the baseline of a per-case delta."""
    gc.collect()
    trim = getattr(_LIBC, "malloc_trim", None) if _LIBC is not None else None
    if trim is not None:
        trim(0)


class HostPeak:
    """Peak resident set size (MB) of this process while the block runs, sampled every `interval_s` by a thread;
    `start_mb` is the RSS when the block began (call settle_host_memory() first for a delta that compares between
    cases: peak_mb - start_mb is what the block added, whatever ran before it)."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self.peak_bytes = 0
        self.start_bytes = 0
        self._process = psutil.Process(os.getpid())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # a sample and reset() never interleave: a reset peak stays reset

    def _sample(self) -> None:
        with self._lock:
            self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> HostPeak:
        self.start_bytes = self._process.memory_info().rss
        self._sample()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()

    def reset(self) -> float:
        """Start a new peak from the current RSS (e.g. after a build); returns the peak so far in MB."""
        with self._lock:
            before = self.peak_mb
            self.peak_bytes = self._process.memory_info().rss
        return before

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / MB

    @property
    def start_mb(self) -> float:
        return self.start_bytes / MB


class DevicePeak:
    """Peak bytes held by torch's CUDA caching allocator during the block (reset on entry); None on the CPU."""

    def __init__(self, device: str) -> None:
        self.is_cuda = torch.device(device).type == "cuda"
        self.peak_bytes: int | None = None

    def __enter__(self) -> DevicePeak:
        if self.is_cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.is_cuda:
            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated()

    def reset(self) -> float | None:
        """Start a new peak from what is allocated now; returns the peak so far in MB (None on the CPU)."""
        if not self.is_cuda:
            return None
        torch.cuda.synchronize()
        before = torch.cuda.max_memory_allocated() / MB
        torch.cuda.reset_peak_memory_stats()
        return before

    @property
    def peak_mb(self) -> float | None:
        return None if self.peak_bytes is None else self.peak_bytes / MB


def state_dict_bytes(model: nn.Module) -> int:
    """Bytes of the model's state dict as torch.save writes it (what a PyTorch deployment ships)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def files_bytes(*paths: str | os.PathLike) -> int:
    """Bytes on disk of an artifact: every file given, e.g. an .onnx graph and its external-data file."""
    return sum(Path(p).stat().st_size for p in paths)


def count_flops(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> int:
    """FLOPs of one forward pass over `inputs`, counted with torch's FlopCounterMode (matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(*inputs)
    return counter.get_total_flops()


class NvmlProcessPeak:
    """Peak device memory (MB) this process holds per NVML while the block runs, net of what it held on entry (the
    CUDA context and torch's cache). For engines whose allocators torch cannot see: ONNX Runtime, TensorRT.
    peak_mb is None where NVML cannot report per-process memory (no GPU, no pynvml, some virtualized drivers).
    The readings and the sampler thread are nn_speedups.measure.nvml's."""

    def __init__(self, device_index: int = 0, interval_s: float = 0.005) -> None:
        self.device_index = device_index
        self.interval_s = interval_s
        self._handle = None
        self._start = 0
        self._peak: int | None = None
        self._sampler: nvml.Sampler | None = None

    def _used(self) -> int | None:
        return nvml.process_memory_bytes(self._handle, os.getpid())

    def _sample(self) -> None:
        used = self._used()
        if used is not None:
            self._peak = used if self._peak is None else max(self._peak, used)

    def __enter__(self) -> NvmlProcessPeak:
        self.error = None
        pynvml = nvml.load()
        if pynvml is None:
            self.error = nvml.MISSING
            return self
        try:
            self._handle = nvml.device_handle(self.device_index)
            self._start = self._used() or 0
        except pynvml.NVMLError as error:
            self._handle, self.error = None, str(error)
            return self
        self._sampler = nvml.Sampler(self._sample, self.interval_s).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._sampler is not None:
            self._sampler.stop()  # joins the thread, then the last sample

    @property
    def peak_mb(self) -> float | None:
        if self._handle is None or self._peak is None:
            return None
        return max(0, self._peak - self._start) / MB
