"""Machine and version info saved with every run (GPU, driver, CUDA, library versions, CPU model and ISA flags), and
the run record: what it takes to reproduce a run (versions, a hash of every installed distribution, the settings that
change speed, Inductor's cache cold or warm, the seeds, the command line), captured when the run starts.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import platform
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import torch

from nn_speedups.core.capabilities import has_cuda

ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8", "avx_vnni")
# every package whose version can move a number of this suite (absent ones are null)
PACKAGES = ("torch", "torchvision", "triton", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "openvino", "tensorrt",
            "torch_tensorrt", "torchao", "torch-pruning", "transformers", "timm", "pytest", "pytest-benchmark",
            "nn-speedups")  # fmt: skip
# environment variables that change speed: thread pools, Inductor and Triton, visible GPUs, the suite's own switches
ENV_PREFIXES = (
    "OMP_",
    "MKL_",
    "KMP_",
    "ONEDNN_",
    "DNNL_",
    "ATEN_",
    "TORCHINDUCTOR_",
    "TORCH_",
    "TRITON_",
    "NN_SPEEDUPS_",
)
ENV_NAMES = ("CUDA_VISIBLE_DEVICES",)
GOVERNOR = "/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        if package == "nn-speedups":  # a plain checkout on PYTHONPATH: the package's own version source
            from nn_speedups import __version__

            return __version__
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


# ------------------------------------------------------------------------------------------------ the run record


def freeze_lines(distributions: Iterable | None = None) -> list[str]:
    """`pip freeze` without a subprocess: one `name==version` line per installed distribution, sorted."""
    found = importlib.metadata.distributions() if distributions is None else distributions
    lines = {f"{d.metadata['Name']}=={d.version}" for d in found if d.metadata["Name"]}
    return sorted(lines, key=str.lower)


def freeze_hash(lines: Iterable[str]) -> str:
    """sha256 of the sorted `name==version` lines: equal exactly when the same distributions are installed."""
    return hashlib.sha256("".join(f"{line}\n" for line in sorted(set(lines), key=str.lower)).encode()).hexdigest()


def speed_env(environ: dict | None = None) -> dict[str, str]:
    """The environment variables that change speed (ENV_PREFIXES, ENV_NAMES), sorted by name."""
    environ = os.environ if environ is None else environ
    return {k: environ[k] for k in sorted(environ) if k.startswith(ENV_PREFIXES) or k in ENV_NAMES}


def cpu_governor(path: str = GOVERNOR) -> str | None:
    """cpu0's frequency governor (performance, powersave, ...), or None where sysfs does not say (VMs, containers)."""
    try:
        return Path(path).read_text().strip() or None
    except OSError:
        return None


def inductor_cache_dir() -> str:
    """Inductor's cache folder as torch._inductor would pick it (TORCHINDUCTOR_CACHE_DIR, else its default), without
    creating it or setting the variable as torch's own cache_dir() does."""
    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if not chosen:
        try:
            from torch._inductor.runtime.cache_dir_utils import default_cache_dir

            chosen = default_cache_dir()
        except ImportError:
            import getpass
            import tempfile

            chosen = os.path.join(tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}")
    return os.path.abspath(chosen)


def inductor_cache(path: str | None = None) -> dict:
    """Inductor's cache folder and whether it is cold (missing or empty) or warm (its entries counted): captured
    when a run starts, since the run fills it."""
    path = path or inductor_cache_dir()
    try:
        entries = len(os.listdir(path))
    except OSError:  # missing, or not a folder
        entries = 0
    return {"dir": path, "state": "warm" if entries else "cold", "entries": entries}


def process_age_s() -> float | None:
    """Seconds since this process started (psutil's create time): called at a run's configure, what starting Python,
    pytest, torch and the suite took before any case, the first part of every case's cold start."""
    try:
        import psutil

        return max(0.0, time.time() - psutil.Process().create_time())
    except (ImportError, OSError):
        return None


def run_record(argv: list[str] | None = None, cwd: str | None = None, seeds: dict | None = None) -> dict:
    """What it takes to reproduce a run, saved with it (machine_info["record"]; the versions of PACKAGES are
    machine_info["versions"]): the installed set's hash, the settings that change speed, Inductor's cache, the seeds
    and the command line. Call it when the run starts: the run fills Inductor's cache."""
    lines = freeze_lines()
    return {
        "freeze": {"sha256": freeze_hash(lines), "packages": len(lines)},
        "threads": {"torch": torch.get_num_threads(), "interop": torch.get_num_interop_threads()},
        "env": speed_env(),
        "cpu_governor": cpu_governor(),
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "inductor_cache": inductor_cache(),
        "seeds": dict(seeds or {}),
        "command": list(sys.argv if argv is None else argv),
        "cwd": cwd or os.getcwd(),
    }
