"""The TensorRT optimization's plan of an engine, decided without TensorRT or CUDA: an internal helper of
optimizations/tensorrt.py, not a family of its own (adding an optimization touches one optimizations/ module; this
one is split by job only to keep each file small). Import its names from nn_speedups.optimizations.tensorrt, which
re-exports them.

- the configuration (`TrtConfig`) and the precision plan (`PrecisionPlan`, `precision_plan`);
- the optimization profile's shapes (`profile_shapes`, `network_profile`);
- the engine and timing cache names (`engine_cache_key`, `timing_cache_path`, `sha256_file`);
- ONNX inspection (`onnx_external_files`, `onnx_input_shapes`, `onnx_variant`), with onnx imported inside them.

Nothing here imports tensorrt, at import time or later: all of it runs on a machine without TensorRT or a GPU.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

PRECISIONS = ("fp32", "fp16", "int8")
ONNX_VARIANTS = ("fp32", "fp16", "qdq")
CACHE_SCHEMA = 1  # bump when the engine cache layout or key fields change

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


def onnx_external_files(onnx_path: str | Path) -> list[Path]:
    """The ONNX graph file followed by the external-data files its tensors point to."""
    from nn_speedups.models.onnx_file import external_files  # the one walk over a graph's tensors

    return external_files(onnx_path, _load_onnx_graph(onnx_path).graph)


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
