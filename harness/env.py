"""Machine and version info saved with every run (GPU, driver, CUDA, library versions, CPU model and ISA flags)."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform

import torch

from harness.capabilities import has_cuda

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


def gpu_info() -> dict:
    if not has_cuda():
        return {"gpu_name": None}
    props = torch.cuda.get_device_properties(0)
    info = {
        "gpu_name": props.name,
        "gpu_compute_capability": f"{props.major}.{props.minor}",
        "gpu_memory_mb": props.total_memory // (1024 * 1024),
        "gpu_multiprocessors": props.multi_processor_count,
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
    return {
        **cpu_info(),
        **gpu_info(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "versions": {p: _version(p) for p in PACKAGES},
    }
