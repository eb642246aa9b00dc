"""The TensorRT optimization's engine builder and engine cache: an internal helper of optimizations/tensorrt.py, not
a family of its own (adding an optimization touches one optimizations/ module; this one is split by job only to
keep each file small). Import its names from nn_speedups.optimizations.tensorrt, which re-exports them.

- the lazy `import tensorrt` (`_import_trt`, with the install hint), the CUDA check, TensorRT's logger, and the
  facts of the installed TensorRT and the GPU (`trt_facts`, `gpu_facts`);
- parsing the ONNX, the builder configuration (workspace, precision flags, detailed profiling verbosity), the one
  optimization profile and the timing cache (`_build`);
- the engine cache: `load_or_build` (a cached engine if TensorRT can deserialize it, else a build written atomically
  with its `.json` sidecar) and `build_engine`.

`import tensorrt` happens inside the functions that need it, never when this module is imported.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from nn_speedups.optimizations.tensorrt_plan import (
    CACHE_SCHEMA,
    PrecisionPlan,
    ProfileShape,
    Shape,
    TrtConfig,
    _canonical_shapes,
    engine_cache_key,
    network_profile,
    onnx_external_files,
    onnx_input_shapes,
    onnx_variant,
    precision_plan,
    sha256_file,
    timing_cache_path,
)

INSTALL_HINT = "pip install -e .[trt] (tensorrt is served from NVIDIA's own package index)"


def _import_trt():
    try:
        import tensorrt as trt
    except ImportError as error:
        raise ImportError(f"nn_speedups.optimizations.tensorrt needs tensorrt: {INSTALL_HINT}. ({error})") from error
    return trt


def _require_cuda() -> None:
    if not torch.cuda.is_available():
        raise RuntimeError("TensorRT needs a CUDA device, and torch.cuda.is_available() is False")


@functools.cache
def _logger():
    trt = _import_trt()
    return trt.Logger(trt.Logger.WARNING)


@dataclass(frozen=True)
class TrtFacts:
    version: str
    major: int
    has_weak_typing_flags: bool


def trt_facts() -> TrtFacts:
    """The installed TensorRT: version, major version, and whether the weak-typing precision flags still exist."""
    trt = _import_trt()
    version = trt.__version__
    flags = all(hasattr(trt.BuilderFlag, name) for name in ("FP16", "INT8"))
    return TrtFacts(version=version, major=int(version.split(".")[0]), has_weak_typing_flags=flags)


def gpu_facts(device: int | None = None) -> tuple[str, str]:
    """(GPU name, compute capability as "major.minor") of the current CUDA device."""
    _require_cuda()
    device = torch.cuda.current_device() if device is None else device
    major, minor = torch.cuda.get_device_capability(device)
    return torch.cuda.get_device_name(device), f"{major}.{minor}"


@dataclass(frozen=True)
class EngineBuild:
    """What `load_or_build` did: the serialized engine, where it is cached and whether it came from the cache."""

    data: bytes
    path: Path
    key: str
    cache_hit: bool
    build_s: float | None
    plan: PrecisionPlan
    shapes: dict[str, ProfileShape]


def _atomic_write(path: Path, data: bytes | str) -> None:
    """Write whole or not at all, so a concurrent reader or a killed run never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def _parse(trt, builder, onnx_path: Path, strongly_typed: bool):
    flags = 0
    strong_flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed:
        if strong_flag is None:
            raise RuntimeError(f"TensorRT {trt.__version__} has no STRONGLY_TYPED networks")
        flags |= 1 << int(strong_flag)
    network = builder.create_network(flags)  # explicit batch is the only mode since TensorRT 10
    parser = trt.OnnxParser(network, _logger())
    # parse_from_file, unlike parse(bytes), finds external-data files next to the graph.
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        detail = "\n  ".join(errors or ["(no detail)"])
        raise RuntimeError(f"TensorRT's ONNX parser failed on {onnx_path} with {len(errors)} errors:\n  {detail}")
    return network, parser


def _network_input_shapes(network) -> dict[str, Shape]:
    inputs = (network.get_input(i) for i in range(network.num_inputs))
    return {t.name: tuple(t.shape) for t in inputs}


def _set_flags(trt, builder_config, plan: PrecisionPlan) -> None:
    for name in plan.builder_flags:
        flag = getattr(trt.BuilderFlag, name, None)
        if flag is None:
            raise RuntimeError(f"TensorRT {trt.__version__} has no BuilderFlag.{name}; the plan {plan} is stale")
        builder_config.set_flag(flag)
    for name in plan.cleared_flags:
        flag = getattr(trt.BuilderFlag, name, None)
        if flag is not None:
            builder_config.clear_flag(flag)


def _load_timing_cache(builder_config, path: Path):
    data = path.read_bytes() if path.is_file() else b""
    cache = builder_config.create_timing_cache(data)
    if cache is None and data:  # unreadable (another TensorRT build): start afresh
        cache = builder_config.create_timing_cache(b"")
    builder_config.set_timing_cache(cache, ignore_mismatch=False)


def _build(trt, onnx_path: Path, plan: PrecisionPlan, shapes: Mapping[str, ProfileShape], config, timing_path):
    builder = trt.Builder(_logger())
    network, _parser = _parse(trt, builder, onnx_path, plan.strongly_typed)
    parsed = _network_input_shapes(network)
    if set(parsed) != set(shapes) or not all(_fits(parsed[n], shapes[n]) for n in shapes):
        raise RuntimeError(f"TensorRT parsed inputs {parsed} from {onnx_path}, which the profile {shapes} does not fit")
    builder_config = builder.create_builder_config()
    builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_bytes)
    if hasattr(trt, "ProfilingVerbosity"):  # layer precisions in the engine inspector, for verify()
        builder_config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    _set_flags(trt, builder_config, plan)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    builder_config.add_optimization_profile(profile)
    _load_timing_cache(builder_config, timing_path)
    serialized = builder.build_serialized_network(network, builder_config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see TensorRT's log above)")
    _atomic_write(timing_path, bytes(builder_config.get_timing_cache().serialize()))
    return bytes(serialized)


def _fits(network_shape: Shape, profile: ProfileShape) -> bool:
    """Whether a profile fits a network input: same rank, and min == max wherever the network's size is static."""
    lo, _, hi = profile
    return len(network_shape) == len(lo) and all(n < 0 or n == a == b for n, a, b in zip(network_shape, lo, hi))


def _read_cached(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:  # missing or unreadable: rebuild
        return None


def _deserialize(trt, data: bytes):
    return trt.Runtime(_logger()).deserialize_cuda_engine(data)


def _check_variant(plan: PrecisionPlan, have: str, onnx_path: Path, precision: str, trt_version: str) -> None:
    if have != plan.onnx_variant:
        raise ValueError(
            f"precision {precision!r} on TensorRT {trt_version} needs the {plan.onnx_variant} ONNX, "
            f"but {onnx_path} is {have}: export that variant first (see precision_plan)"
        )


def load_or_build(onnx_path: str | Path, input_shapes: Mapping[str, Sequence[int]], config: TrtConfig) -> EngineBuild:
    """The engine for `onnx_path`: from the cache when a deserializable one is there, else built and cached.

    input_shapes: an example shape per ONNX input (dimension 0 is the batch and is replaced by the profile).
    """
    trt = _import_trt()
    _require_cuda()
    onnx_path = Path(onnx_path)
    facts = trt_facts()
    have = onnx_variant(onnx_path)
    plan = precision_plan(config.precision, have, facts.has_weak_typing_flags, facts.major)
    _check_variant(plan, have, onnx_path, config.precision, facts.version)
    gpu, capability = gpu_facts()
    shapes = network_profile(
        onnx_input_shapes(onnx_path), input_shapes, config.min_batch, config.opt_batch, config.max_batch
    )
    onnx_sha = sha256_file(onnx_external_files(onnx_path))
    key = engine_cache_key(onnx_sha, facts.version, gpu, capability, config.precision, shapes)
    engine_path = Path(config.cache_dir) / f"{key}.engine"
    cached = _read_cached(engine_path)
    if cached is not None and _deserialize(trt, cached) is not None:
        return EngineBuild(cached, engine_path, key, True, None, plan, shapes)
    timing_path = timing_cache_path(config.cache_dir, facts.version, gpu, capability)
    start = time.perf_counter()
    data = _build(trt, onnx_path, plan, shapes, config, timing_path)
    build_s = time.perf_counter() - start
    _atomic_write(engine_path, data)
    sidecar = {
        "onnx_path": str(onnx_path),
        "onnx_sha256": onnx_sha,
        "trt_version": facts.version,
        "gpu_name": gpu,
        "compute_capability": capability,
        "precision": config.precision,
        "shapes": _canonical_shapes(shapes),
        "plan": asdict(plan),
        "workspace_bytes": config.workspace_bytes,
        "build_s": build_s,
        "schema": CACHE_SCHEMA,
    }
    _atomic_write(engine_path.with_suffix(".json"), json.dumps(sidecar, indent=2, sort_keys=True))
    return EngineBuild(data, engine_path, key, False, build_s, plan, shapes)


def build_engine(onnx_path: str | Path, input_shapes: Mapping[str, Sequence[int]], config: TrtConfig) -> bytes:
    """A serialized TensorRT engine for `onnx_path` (cached under `config.cache_dir`); see `load_or_build`."""
    return load_or_build(onnx_path, input_shapes, config).data
