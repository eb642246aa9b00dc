"""Native TensorRT from an ONNX file through TensorRT's ONNX parser, with engine and timing caches.

Written against the TensorRT 10 Python API and aware of TensorRT 11:

- Precision. TensorRT 11 removed the weak-typing builder flags (`BuilderFlag.FP16`, `INT8`, ...): every network is
  strongly typed, so the *ONNX file* carries the precision: fp16 comes from the fp16 ONNX, INT8 from the QDQ ONNX.
  TensorRT 10 still has the flags (deprecated since 10.12), so an fp32 ONNX plus `FP16` still works there.
  `precision_plan` makes that choice as a pure function of the precision asked for, the ONNX at hand and the
  installed TensorRT; `build_engine` follows the plan and sets a flag only where `trt.BuilderFlag` has it.
- Dynamic batch. One optimization profile: dimension 0 of every input ranges over
  `[min_batch, max_batch]`, tuned for `opt_batch` (`profile_shapes`, `network_profile`).
- Caches under `TrtConfig.cache_dir`: a timing cache per (TensorRT version, GPU, compute capability) and serialized
  engines `<key>.engine` with a `<key>.json` sidecar, the key hashing the ONNX files (graph and external data), the
  TensorRT version, the GPU, the precision and the profile shapes (`engine_cache_key`). A cached engine that
  TensorRT cannot deserialize (another TensorRT build, a truncated file) is rebuilt.
- Execution with `execute_async_v3` on torch CUDA tensors and torch's current stream (no pycuda, no copies through
  the host); `TrtEngineRunner` never synchronizes: the harness does.

`import tensorrt` happens inside the functions that need it: this module imports on machines without TensorRT,
and everything that needs no GPU (cache keys, profile shapes, precision selection, ONNX inspection) works there.
TensorRT comes from NVIDIA's package index: `pip install -e .[trt]`.

Seed 003's example (ResNet-18 -> ONNX -> TensorRT, pycuda, `max_workspace_size`, `build_engine`, all gone from
TensorRT 10) becomes::

    import torch, torchvision
    from optimizations import tensorrt as trt_opt

    model = torchvision.models.resnet18(weights="DEFAULT").eval().cuda().half()
    x = torch.randn(8, 3, 224, 224, device="cuda", dtype=torch.half)  # batch >= 2 keeps dim 0 dynamic
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.onnx.export(model, (x,), "resnet18_fp16.onnx", dynamo=True, dynamic_shapes=({0: batch},))
    runner = trt_opt.apply(model, (x,), trt_opt.TrtConfig(precision="fp16"), onnx_files=["resnet18_fp16.onnx"])
    with torch.inference_mode():
        logits = runner(*runner.prepare((x,)))  # enqueued on torch.cuda.current_stream()
    torch.cuda.synchronize()
    print(logits.argmax(1), runner.info)  # engine cache hit or build seconds, plan, TensorRT version
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from optimizations.base import NotEngagedError, Runner

PRECISIONS = ("fp32", "fp16", "int8")
ONNX_VARIANTS = ("fp32", "fp16", "qdq")
CACHE_SCHEMA = 1  # bump when the engine cache layout or key fields change
INSTALL_HINT = "pip install -e .[trt] (tensorrt is served from NVIDIA's own package index)"

Shape = tuple[int, ...]
ProfileShape = tuple[Shape, Shape, Shape]  # (min, opt, max)


@dataclass(frozen=True)
class TrtConfig:
    precision: str = "fp16"  # "fp32" | "fp16" | "int8"
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 64
    workspace_bytes: int = 4 << 30
    cache_dir: str = "artifacts/tensorrt"


@dataclass(frozen=True)
class PrecisionPlan:
    """How to get `precision` out of the installed TensorRT.

    strongly_typed: create the network with `NetworkDefinitionCreationFlag.STRONGLY_TYPED` (tensor types come from
        the ONNX; no precision flags allowed).
    builder_flags: `trt.BuilderFlag` names to set (weakly typed networks on TensorRT 10 only).
    onnx_variant: the ONNX file to feed: "fp32", "fp16" or "qdq".
    cleared_flags: `trt.BuilderFlag` names to clear (TF32 for fp32, which TensorRT enables by default).
    """

    strongly_typed: bool
    builder_flags: tuple[str, ...]
    onnx_variant: str
    cleared_flags: tuple[str, ...] = ()


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


# --------------------------------------------------------------------------------------------------------------------
# Pure helpers: no tensorrt, no CUDA.


def _check_batches(min_batch: int, opt_batch: int, max_batch: int) -> None:
    batches = (min_batch, opt_batch, max_batch)
    if not all(isinstance(b, int) and not isinstance(b, bool) for b in batches):
        raise ValueError(f"batch sizes must be integers, got min={min_batch!r} opt={opt_batch!r} max={max_batch!r}")
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ValueError(
            f"need 1 <= min_batch <= opt_batch <= max_batch, got min={min_batch} opt={opt_batch} max={max_batch}"
        )


def profile_shapes(
    input_shapes: Mapping[str, Sequence[int]], min_batch: int, opt_batch: int, max_batch: int
) -> dict[str, ProfileShape]:
    """(min, opt, max) shape per input: dimension 0 (the batch) takes the three batch sizes, the rest stay as given."""
    _check_batches(min_batch, opt_batch, max_batch)
    out = {}
    for name, shape in input_shapes.items():
        shape = tuple(int(d) for d in shape)
        if not shape:
            raise ValueError(f"input {name!r} is a scalar: it has no batch dimension 0 to make dynamic")
        if any(d < 1 for d in shape[1:]):
            raise ValueError(f"input {name!r}: non-batch dimensions must be positive, got {shape}")
        out[name] = tuple((b, *shape[1:]) for b in (min_batch, opt_batch, max_batch))
    return out


def network_profile(
    network_shapes: Mapping[str, Sequence[int]],
    input_shapes: Mapping[str, Sequence[int]],
    min_batch: int,
    opt_batch: int,
    max_batch: int,
) -> dict[str, ProfileShape]:
    """The profile for a parsed network whose inputs have shapes `network_shapes` (-1 = dynamic).

    A dynamic dimension 0 ranges over the batch sizes; other dynamic dimensions take the example's size; an input
    whose dimension 0 is static (exported without a dynamic batch) gets its one shape as min, opt and max.
    """
    missing = sorted(set(network_shapes) - set(input_shapes))
    extra = sorted(set(input_shapes) - set(network_shapes))
    if missing or extra:
        raise ValueError(
            f"input shapes do not match the network's inputs {sorted(network_shapes)}: "
            f"missing {missing}, unknown {extra}"
        )
    out = {}
    for name, net in network_shapes.items():
        net, example = tuple(net), tuple(input_shapes[name])
        if len(net) != len(example):
            raise ValueError(f"input {name!r}: the network has rank {len(net)} {net}, the example {example}")
        clash = [i for i, (n, e) in enumerate(zip(net, example)) if n >= 0 and n != e and i > 0]
        if clash:
            raise ValueError(f"input {name!r}: example shape {example} differs from the network's {net} at {clash}")
        resolved = tuple(e if n < 0 else n for n, e in zip(net, example))
        if net and net[0] < 0:
            out[name] = profile_shapes({name: resolved}, min_batch, opt_batch, max_batch)[name]
        else:
            out[name] = (resolved, resolved, resolved)
    return out


def _canonical_shapes(shapes: Mapping[str, Sequence[Sequence[int]]]) -> dict[str, list[list[int]]]:
    out = {}
    for name, triple in shapes.items():
        triple = [[int(d) for d in s] for s in triple]
        if len(triple) != 3:
            raise ValueError(f"shapes[{name!r}] must be (min, opt, max), got {len(triple)} shapes")
        out[str(name)] = triple
    return out


def engine_cache_key(
    onnx_sha256: str,
    trt_version: str,
    gpu_name: str,
    compute_capability: str,
    precision: str,
    shapes: Mapping[str, Sequence[Sequence[int]]],
) -> str:
    """A stable sha256 hex digest of everything that makes an engine; independent of the order of `shapes`."""
    _check_precision(precision)
    fields = {
        "schema": CACHE_SCHEMA,
        "onnx_sha256": onnx_sha256,
        "trt_version": trt_version,
        "gpu_name": gpu_name,
        "compute_capability": compute_capability,
        "precision": precision,
        "shapes": _canonical_shapes(shapes),
    }
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-.") or "x"


def timing_cache_path(cache_dir: str | Path, trt_version: str, gpu_name: str, compute_capability: str) -> Path:
    """The timing cache file for one (TensorRT version, GPU, compute capability): readable name plus a short hash of
    the exact strings, so two GPUs whose names slug alike never share a file."""
    exact = json.dumps([trt_version, gpu_name, compute_capability]).encode()
    digest = hashlib.sha256(exact).hexdigest()[:12]
    name = f"timing-trt{_slug(trt_version)}-{_slug(gpu_name)}-sm{_slug(compute_capability)}-{digest}.cache"
    return Path(cache_dir) / name


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")


def precision_plan(precision: str, onnx_dtype: str, has_weak_typing_flags: bool, trt_major: int) -> PrecisionPlan:
    """Which ONNX to feed, and how to build it, to get `precision` from TensorRT `trt_major`.

    onnx_dtype: the variant of the ONNX at hand ("fp32", "fp16" or "qdq"; see `onnx_variant`). The plan's
    `onnx_variant` is the one to feed; where it differs, the caller must export that variant first.
    """
    _check_precision(precision)
    if onnx_dtype not in ONNX_VARIANTS:
        raise ValueError(f"unknown ONNX variant {onnx_dtype!r}; valid: {', '.join(ONNX_VARIANTS)}")
    if trt_major < 10:
        raise ValueError(f"TensorRT {trt_major}.x is not supported: this module needs TensorRT >= 10")
    # Weak typing (precision flags that let TensorRT pick lower-precision kernels) exists only on TensorRT 10 and
    # only where the installed build still has the flags; TensorRT 11 removed them and every network is strongly
    # typed: the tensor types in the ONNX are the precision.
    weak = has_weak_typing_flags and trt_major < 11
    if precision == "fp32":
        # An fp32 ONNX in a strongly typed network is fp32 on every version. TensorRT enables TF32 by default,
        # which is not fp32 numerics on Ampere and later: clear it so "fp32" means fp32.
        return PrecisionPlan(strongly_typed=True, builder_flags=(), onnx_variant="fp32", cleared_flags=("TF32",))
    if precision == "fp16":
        if weak and onnx_dtype != "fp16":
            # TensorRT 10: the fp32 ONNX plus the FP16 flag lets the builder choose fp16 kernels layer by layer.
            return PrecisionPlan(strongly_typed=False, builder_flags=("FP16",), onnx_variant="fp32")
        # An fp16 ONNX is fp16 by its types: strongly typed, no flag (the only way on TensorRT 11).
        return PrecisionPlan(strongly_typed=True, builder_flags=(), onnx_variant="fp16")
    # int8 always comes from a QDQ ONNX: Q/DQ nodes quantize explicitly, with the scales calibrated at export.
    if weak:
        # TensorRT 10 weakly typed: INT8 must be enabled for the builder to use the Q/DQ layers' int8 kernels, and
        # FP16 lets the layers outside Q/DQ pairs run in fp16 instead of fp32 (as trtexec --int8 --fp16 does).
        return PrecisionPlan(strongly_typed=False, builder_flags=("INT8", "FP16"), onnx_variant="qdq")
    # Strongly typed: the Q/DQ nodes alone say where int8 runs; precision flags are not allowed.
    return PrecisionPlan(strongly_typed=True, builder_flags=(), onnx_variant="qdq")


def sha256_file(paths: str | Path | Sequence[str | Path]) -> str:
    """sha256 over one file or several (an ONNX graph and its external data), each with its name and length.

    Independent of the order the files are given in; a file given twice counts once.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files = sorted({Path(p) for p in paths}, key=lambda p: (p.name, str(p)))
    if not files:
        raise ValueError("sha256_file needs at least one file")
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}\0{path.stat().st_size}\0".encode())
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _load_onnx_graph(onnx_path: str | Path):
    import onnx

    return onnx.load(str(onnx_path), load_external_data=False)


def _tensors(graph):
    """Every tensor proto of a graph: initializers and tensor attributes, subgraphs (If, Loop, Scan) included."""
    import onnx

    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == onnx.AttributeProto.GRAPH:
                yield from _tensors(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _tensors(sub)


def onnx_external_files(onnx_path: str | Path) -> list[Path]:
    """The ONNX graph file followed by the external-data files its tensors point to."""
    import onnx

    graph = _load_onnx_graph(onnx_path).graph
    locations = {
        entry.value
        for tensor in _tensors(graph)
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    base = Path(onnx_path).parent
    return [Path(onnx_path), *(base / loc for loc in sorted(locations))]


def onnx_input_shapes(onnx_path: str | Path) -> dict[str, Shape]:
    """The graph's real inputs (initializers listed as inputs excluded) and their shapes, -1 where dynamic."""
    graph = _load_onnx_graph(onnx_path).graph
    initializers = {t.name for t in graph.initializer}
    return {
        i.name: tuple(d.dim_value if d.HasField("dim_value") else -1 for d in i.type.tensor_type.shape.dim)
        for i in graph.input
        if i.name not in initializers
    }


def onnx_variant(onnx_path: str | Path) -> str:
    """Which variant an ONNX file is: qdq when the graph has QuantizeLinear/DequantizeLinear nodes, fp16 when any
    input, output or initializer is float16 (or a Cast makes float16), else fp32."""
    import onnx

    graph = _load_onnx_graph(onnx_path).graph
    ops = {n.op_type for n in graph.node}
    if ops & {"QuantizeLinear", "DequantizeLinear"}:
        return "qdq"
    half = onnx.TensorProto.FLOAT16
    io = [v.type.tensor_type.elem_type for v in (*graph.input, *graph.output)]
    casts = [a.i for n in graph.node if n.op_type == "Cast" for a in n.attribute if a.name == "to"]
    if half in io or half in casts or any(t.data_type == half for t in graph.initializer):
        return "fp16"
    return "fp32"


def _atomic_write(path: Path, data: bytes | str) -> None:
    """Write whole or not at all, so a concurrent reader or a killed run never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------------------------
# TensorRT: imported lazily.


def _import_trt():
    try:
        import tensorrt as trt
    except ImportError as error:
        raise ImportError(f"optimizations.tensorrt needs tensorrt: {INSTALL_HINT}. ({error})") from error
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


def _torch_dtypes(trt) -> dict:
    pairs = {
        "FLOAT": torch.float32,
        "HALF": torch.float16,
        "BF16": torch.bfloat16,
        "INT8": torch.int8,
        "UINT8": torch.uint8,
        "INT32": torch.int32,
        "INT64": torch.int64,
        "BOOL": torch.bool,
        "FP8": torch.float8_e4m3fn,
    }
    return {getattr(trt.DataType, name): dtype for name, dtype in pairs.items() if hasattr(trt.DataType, name)}


class TrtEngineRunner:
    """Runs a TensorRT engine on torch CUDA tensors, enqueued on torch's current stream; never synchronizes.

    Output tensors are reused from call to call while their shapes stay the same (as with CUDA graphs): a caller
    that keeps an output across calls must clone it.
    """

    def __init__(self, engine: Any, device: str | torch.device = "cuda"):
        trt = _import_trt()
        _require_cuda()
        self.device = torch.device(device)
        self._runtime = trt.Runtime(_logger())  # must outlive the engine
        if isinstance(engine, (str, Path)):
            engine = Path(engine).read_bytes()
        if isinstance(engine, (bytes, bytearray, memoryview)):
            engine = self._runtime.deserialize_cuda_engine(bytes(engine))
            if engine is None:
                raise RuntimeError("TensorRT could not deserialize the engine (see TensorRT's log above)")
        self.engine = engine
        self.context = engine.create_execution_context()
        if self.context is None:
            raise RuntimeError("TensorRT could not create an execution context (out of device memory?)")
        dtypes = _torch_dtypes(trt)
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self.dtypes = {n: dtypes[engine.get_tensor_dtype(n)] for n in names}
        self.calls = 0
        self._shapes: dict[str, Shape] = {}
        self._outputs: dict[str, torch.Tensor] = {}

    def prepare(self, inputs: tuple) -> tuple:
        """The inputs on the engine's device, in its input dtypes, contiguous (done once, outside timing)."""
        self._check_count(inputs)
        return tuple(self._as_input(n, x) for n, x in zip(self.input_names, inputs))

    def _as_input(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return x.to(device=self.device, dtype=self.dtypes[name]).contiguous()

    def _set_input(self, name: str, x: torch.Tensor) -> None:
        shape = tuple(x.shape)
        if self._shapes.get(name) != shape:
            if not self.context.set_input_shape(name, shape):
                lo, _, hi = (tuple(s) for s in self.engine.get_tensor_profile_shape(name, 0))
                raise ValueError(f"input {name!r} of shape {shape} is outside the engine's profile {lo} .. {hi}")
            self._shapes[name] = shape
        self.context.set_tensor_address(name, x.data_ptr())

    def _output(self, name: str) -> torch.Tensor:
        shape = tuple(self.context.get_tensor_shape(name))
        if any(d < 0 for d in shape):
            raise RuntimeError(f"output {name!r} has a data-dependent shape {shape}; not supported")
        buf = self._outputs.get(name)
        if buf is None or tuple(buf.shape) != shape:
            buf = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
            self._outputs[name] = buf
        self.context.set_tensor_address(name, buf.data_ptr())
        return buf

    def _check_count(self, inputs: Sequence[torch.Tensor]) -> None:
        if len(inputs) != len(self.input_names):
            raise ValueError(f"the engine takes {len(self.input_names)} inputs {self.input_names}, got {len(inputs)}")

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        self._check_count(inputs)
        # Converted inputs come from torch's caching allocator on the current stream, so their memory is not
        # reused before the engine (enqueued on that same stream) has read it.
        ready = [self._as_input(n, x) for n, x in zip(self.input_names, inputs)]
        for name, x in zip(self.input_names, ready):
            self._set_input(name, x)
        outputs = [self._output(n) for n in self.output_names]
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed (see TensorRT's log above)")
        self.calls += 1
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def layer_info(self) -> str:
        """The engine inspector's JSON description of the layers (with their precisions when built DETAILED)."""
        trt = _import_trt()
        inspector = self.engine.create_engine_inspector()
        return inspector.get_engine_information(trt.LayerInformationFormat.JSON)


def layer_types(layer_info_json: str) -> dict[str, str]:
    """Layer name -> layer type (e.g. CaskConvolution, PointWiseV2, Reformat) from the engine inspector's JSON; empty
    when the engine was built without detailed profiling verbosity (the inspector then lists names only)."""
    try:
        layers = json.loads(layer_info_json).get("Layers", [])
    except (ValueError, AttributeError):
        return {}
    return {
        layer["Name"]: layer.get("LayerType", layer["Name"])
        for layer in layers
        if isinstance(layer, dict) and "Name" in layer
    }


def layer_profile(engine_runner: TrtEngineRunner, inputs: tuple, steps: int) -> dict:
    """TensorRT's per-layer times (an IProfiler on the runner's own execution context, no new engine) over `steps`
    executions after one warm-up, each synchronized. TensorRT reports every layer once per execute_async_v3 when a
    profiler is set; the profiler is detached again afterwards."""
    trt = _import_trt()
    reports: list[tuple[str, float]] = []

    class LayerTimes(trt.IProfiler):
        def __init__(self) -> None:
            trt.IProfiler.__init__(self)

        def report_layer_time(self, layer_name: str, ms: float) -> None:
            reports.append((layer_name, ms))

    profiler = LayerTimes()
    context = engine_runner.context
    context.profiler = profiler
    try:
        engine_runner(*inputs)
        torch.cuda.synchronize(engine_runner.device)
        reports.clear()
        bounds = []
        for _ in range(steps):
            engine_runner(*inputs)
            torch.cuda.synchronize(engine_runner.device)
            bounds.append(len(reports))
    finally:
        try:
            context.profiler = None
        except TypeError:  # some TensorRT builds do not take None: the profiler stays, the pass is the last user
            pass
    types = layer_types(engine_runner.layer_info())
    ops, start = [], 0
    for step, end in enumerate(bounds):
        for layer, ms in reports[start:end]:
            ops.append({"name": layer, "op": types.get(layer, layer), "us": ms * 1e3, "bytes": None, "run": step})
        start = end
    return {
        "source": "tensorrt IProfiler: layer time",
        "steps": steps,
        "ops": ops,
        "trace_file": None,
        "kernels_counted": "TensorRT layers",
    }


# Evidence of each reduced precision in the inspector's layer formats (e.g. "Row major linear FP16 format",
# "Int8 NC/32HW32"); fp32 needs none.
PRECISION_EVIDENCE = {"fp16": ("fp16", "half"), "int8": ("int8",)}


def _input_shapes(onnx_path: Path, example_inputs: Sequence[torch.Tensor]) -> dict[str, Shape]:
    names = list(onnx_input_shapes(onnx_path))
    if len(names) != len(example_inputs):
        raise ValueError(f"{onnx_path} takes {len(names)} inputs {names}, got {len(example_inputs)} example inputs")
    return {name: tuple(x.shape) for name, x in zip(names, example_inputs)}


def _check_batch_in_profile(shapes: Mapping[str, Shape], config: TrtConfig) -> None:
    for name, shape in shapes.items():
        if shape and not config.min_batch <= shape[0] <= config.max_batch:
            raise ValueError(
                f"input {name!r} has batch {shape[0]}, outside the profile "
                f"[{config.min_batch}, {config.max_batch}] of {config}"
            )


def apply(
    model: nn.Module | None,
    example_inputs: tuple,
    config: TrtConfig,
    onnx_files: Sequence[str | Path],
) -> Runner:
    """A Runner executing `model` as a TensorRT engine built from an ONNX export the caller made first.

    onnx_files: the export's files (`OnnxArtifact.files`), the .onnx graph first. Only onnx_files[0] is read: the
        external-data files that the graph references are found from it, and hashed into the engine key with it
        (TensorRT's parser reads them from beside the graph). Which ONNX to export for `config.precision` on the
        installed TensorRT is `precision_plan(precision, "fp32", ...).onnx_variant`: "fp32", "fp16" (the model in
        half) or "qdq".
    The Runner's artifact is the engine file (its size is the model size); `model` is only for the caller's
    bookkeeping (the engine runs outside PyTorch).
    """
    _import_trt()
    _require_cuda()
    if not onnx_files:
        raise ValueError("apply needs onnx_files: the exported .onnx graph first, then its external data")
    onnx_path = Path(onnx_files[0])
    if onnx_path.suffix != ".onnx":
        raise ValueError(f"onnx_files[0] must be the .onnx graph, got {onnx_path}")
    input_shapes = _input_shapes(onnx_path, example_inputs)
    _check_batch_in_profile(input_shapes, config)
    built = load_or_build(onnx_path, input_shapes, config)
    engine_runner = TrtEngineRunner(built.data)
    facts = trt_facts()
    info = {
        "precision": config.precision,
        "onnx_variant": built.plan.onnx_variant,
        "strongly_typed": built.plan.strongly_typed,
        "builder_flags": ",".join(built.plan.builder_flags),
        "trt_version": facts.version,
        "engine_cache_hit": built.cache_hit,
        "engine_build_s": built.build_s,
        "engine_key": built.key[:16],
        "engine_bytes": len(built.data),
        "profile_batches": f"{config.min_batch}/{config.opt_batch}/{config.max_batch}",
    }

    def verify() -> None:
        if engine_runner.calls < 1:
            raise NotEngagedError("the TensorRT engine never ran")
        evidence = PRECISION_EVIDENCE.get(config.precision)
        if evidence:
            layers = engine_runner.layer_info().lower()
            if not any(word in layers for word in evidence):
                raise NotEngagedError(
                    f"TensorRT {config.precision} engine shows no {'/'.join(evidence)} layer in its inspector output"
                )

    return Runner(
        fn=engine_runner,
        prepare=engine_runner.prepare,
        model=None,
        artifact_files=(str(built.path),),
        verify=verify,
        info=info,
        engine_profile=lambda inputs, steps, out_dir, name: layer_profile(engine_runner, inputs, steps),
    )
