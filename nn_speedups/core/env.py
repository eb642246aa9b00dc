"""Machine and version info saved with every run (GPU, driver, CUDA, library versions, CPU model and ISA flags)."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
from pathlib import Path

import torch

from nn_speedups.core.capabilities import has_cuda

ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8", "avx_vnni")
PACKAGES = ("torch", "torchvision", "triton", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "transformers")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_info() -> dict:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("", platform.machine(), platform.processor()):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return {
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
        "cpu_isa": [f for f in ISA_FLAGS if f in flags],
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def _cache_size(text: str) -> int | None:
    units = {"K": 1024, "M": 1024**2, "G": 1024**3}
    text = text.strip()
    if not text:
        return None
    if text[-1].upper() in units:
        return int(text[:-1]) * units[text[-1].upper()]
    return int(text)


def cpu_caches(root: str = "/sys/devices/system/cpu/cpu0/cache") -> list[dict]:
    """cpu0's caches from sysfs: level, type, size in bytes and the CPUs that share it."""
    caches = []
    for index in sorted(Path(root).glob("index*")):
        try:
            values = {n: (index / n).read_text().strip() for n in ("level", "type", "size", "shared_cpu_list")}
            caches.append(
                {
                    "level": int(values["level"]),
                    "type": values["type"],
                    "size_bytes": _cache_size(values["size"]),
                    "shared_cpu_list": values["shared_cpu_list"],
                }
            )
        except (OSError, ValueError):
            continue
    return caches


def last_level_cache_bytes(device: str = "cpu") -> int | None:
    """The last-level cache a working set must exceed before a kernel's bytes/s speak of memory bandwidth: the
    GPU's L2 on CUDA, else the CPU's highest-level data or unified cache (shared by the CPUs it lists)."""
    if torch.device(device).type == "cuda":
        return getattr(torch.cuda.get_device_properties(torch.device(device).index or 0), "L2_cache_size", None)
    caches = [c for c in cpu_caches() if c["type"] in ("Unified", "Data") and c["size_bytes"]]
    return max(caches, key=lambda c: c["level"])["size_bytes"] if caches else None


def gpu_info() -> dict:
    if not has_cuda():
        return {"gpu_name": None}
    props = torch.cuda.get_device_properties(0)
    info = {
        "gpu_name": props.name,
        "gpu_compute_capability": f"{props.major}.{props.minor}",
        "gpu_memory_mb": props.total_memory // (1024 * 1024),
        "gpu_multiprocessors": props.multi_processor_count,
        "gpu_l2_bytes": getattr(props, "L2_cache_size", None),
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
    }
    info["gpu_driver"] = None
    try:
        import pynvml
    except ImportError:
        return info
    try:
        pynvml.nvmlInit()
        info["gpu_driver"] = pynvml.nvmlSystemGetDriverVersion()
        pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        pass
    return info


@functools.cache
def machine_info() -> dict:
    """The machine and its versions; a bench run's record adds what its energy meters can read
    (nn_speedups.plugin.report: nn_speedups.measure.energy.describe)."""
    return {
        **cpu_info(),
        "cpu_caches": cpu_caches(),
        "cpu_llc_bytes": last_level_cache_bytes("cpu"),
        **gpu_info(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "versions": {p: _version(p) for p in PACKAGES},
    }
