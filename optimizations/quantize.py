"""INT8 with ONNX Runtime: static quantization (QDQ format, per-channel weights, calibrated on data-source images)
for conv nets and for a transformer's weight MatMuls (the QDQ graph TensorRT builds INT8 engines from), dynamic
quantization (int8 weights, activations quantized on the fly) for transformers.

Artifacts are cached beside their fp32 source, keyed by its sha256, the configuration and the calibration data.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from optimizations.onnx_export import MANIFEST, OnnxArtifact, _load_cached, sha256_files

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
QUANTIZED_OPS = frozenset(
    {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger",
     "DynamicQuantizeLinear", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}
)  # fmt: skip


@dataclass(frozen=True)
class StaticQuantConfig:
    method: str = "minmax"  # minmax | entropy | percentile
    per_channel: bool = True
    # TensorRT accepts only symmetric int8 Q/DQ (zero point 0); ORT on x86 is fastest with asymmetric uint8
    # activations, so symmetric is for the QDQ graph that TensorRT builds from.
    symmetric: bool = False
    # Op types to quantize; empty: every type ORT can quantize (right for conv nets). Transformers: TRANSFORMER_OPS.
    op_types: tuple[str, ...] = ()
    # Quantize only MatMuls whose second input is a weight (not attention's activation x activation products).
    weight_matmuls_only: bool = False
    cache_dir: str = "artifacts/int8"


# A transformer's static INT8: the weight MatMuls (projections and feed-forward layers), as TensorRT's and ORT's
# BERT recipes do; LayerNorm, Softmax, GELU, the embedding gathers and attention's score products stay float.
TRANSFORMER_OPS = ("MatMul", "Gemm")


def static_config(method: str, text_model: bool, symmetric: bool = False) -> StaticQuantConfig:
    """The static INT8 configuration for a conv net (every quantizable op) or a transformer (weight MatMuls)."""
    if text_model:
        return StaticQuantConfig(method, symmetric=symmetric, op_types=TRANSFORMER_OPS, weight_matmuls_only=True)
    return StaticQuantConfig(method, symmetric=symmetric)


@dataclass(frozen=True)
class DynamicQuantConfig:
    per_channel: bool = False
    cache_dir: str = "artifacts/int8"


def _quantization():
    try:
        from onnxruntime import quantization
    except ImportError:
        raise ImportError("INT8 variants need onnxruntime: pip install -e .") from None
    return quantization


class _Batches:
    """onnxruntime's CalibrationDataReader over a list of {input name: array} feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self):
        return next(self._feeds, None)

    def rewind(self):  # some calibrators read twice
        raise NotImplementedError


def _digest(feeds: list[dict[str, np.ndarray]]) -> str:
    digest = hashlib.sha256()
    for feed in feeds:
        for name in sorted(feed):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(feed[name]).tobytes())
    return digest.hexdigest()[:16]


def _finish(folder: Path, files: tuple[Path, ...], source: OnnxArtifact, extra: dict) -> OnnxArtifact:
    manifest = {
        "files": [f.name for f in files],
        "sha256": sha256_files(files),
        "input_names": list(source.input_names),
        "output_names": list(source.output_names),
        "source_sha256": source.sha256,
        **extra,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return OnnxArtifact(files[0], files, manifest["sha256"], source.input_names, source.output_names, cached=False)


def _folder(source: OnnxArtifact, cache_dir: str, tag: str, key_fields: dict) -> Path:
    key = hashlib.sha256(json.dumps({"source": source.sha256, **key_fields}, sort_keys=True).encode()).hexdigest()
    return Path(cache_dir) / f"{source.path.parent.name}-{tag}-{key[:16]}"


def quantize_static(
    source: OnnxArtifact, calibration: Iterable[dict[str, np.ndarray]], config: StaticQuantConfig
) -> OnnxArtifact:
    """QDQ INT8 model of `source`, calibrated with `calibration` feeds (input name -> float32 array)."""
    if config.method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method {config.method!r}: valid: {', '.join(CALIBRATION_METHODS)}")
    q = _quantization()
    feeds = list(calibration)
    if not feeds:
        raise ValueError("static quantization needs at least one calibration batch")
    fields = {**asdict(config), "cache_dir": None, "calibration": _digest(feeds)}
    tag = f"qdq-{config.method}{'-sym' if config.symmetric else ''}"
    folder = _folder(source, config.cache_dir, tag, fields)
    cached = _load_cached(folder)
    if cached is not None:
        return cached
    folder.mkdir(parents=True, exist_ok=True)
    prepared = folder / "prepared.onnx"
    import onnx

    # Shape inference only: the pre-processor's ORT-optimizer pass re-saves weights as external data in a temp
    # folder and fails to read them back; ORT fuses the graph itself at session creation anyway.
    q.quant_pre_process(onnx.load(str(source.path)), str(prepared), skip_optimization=True, skip_symbolic_shape=True)
    out = folder / "model.onnx"
    method = {
        "minmax": q.CalibrationMethod.MinMax,
        "entropy": q.CalibrationMethod.Entropy,
        "percentile": q.CalibrationMethod.Percentile,
    }[config.method]
    q.quantize_static(
        str(prepared),
        str(out),
        _Batches(feeds),
        quant_format=q.QuantFormat.QDQ,
        per_channel=config.per_channel,
        activation_type=q.QuantType.QInt8 if config.symmetric else q.QuantType.QUInt8,
        weight_type=q.QuantType.QInt8,
        calibrate_method=method,
        op_types_to_quantize=list(config.op_types) or None,
        nodes_to_exclude=activation_matmuls(prepared) if config.weight_matmuls_only else None,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True} if config.symmetric else {},
    )
    prepared.unlink()
    for leftover in folder.glob("prepared*"):
        leftover.unlink()
    files = (out,) + tuple(sorted(p for p in folder.iterdir() if p.name not in ("model.onnx", MANIFEST)))
    return _finish(folder, files, source, {"method": config.method, "per_channel": config.per_channel})


def activation_matmuls(path: Path) -> list[str]:
    """Names of the MatMul nodes whose second input is computed (attention's scores and context products), not a
    weight: an initializer or a Constant, possibly through Transpose/Reshape/Cast/Identity. ORT's MatMulConstBOnly
    option is honoured by its QOperator and dynamic quantizers only, not by QDQ, hence this list to exclude."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    constant = {t.name for t in graph.initializer}
    passthrough = {"Transpose", "Reshape", "Cast", "Identity", "Unsqueeze", "Squeeze"}
    for node in graph.node:  # topological order: a node's inputs are settled before it
        if node.op_type == "Constant" or (node.op_type in passthrough and node.input and node.input[0] in constant):
            constant.update(node.output)
    return [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] not in constant]


def quantize_dynamic(source: OnnxArtifact, config: DynamicQuantConfig) -> OnnxArtifact:
    """Dynamic INT8 model of `source`: int8 weights for MatMul/Gemm, activations quantized per call."""
    q = _quantization()
    folder = _folder(source, config.cache_dir, "dynamic", {**asdict(config), "cache_dir": None})
    cached = _load_cached(folder)
    if cached is not None:
        return cached
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "model.onnx"
    q.quantize_dynamic(str(source.path), str(out), weight_type=q.QuantType.QInt8, per_channel=config.per_channel)
    files = (out,) + tuple(sorted(p for p in folder.iterdir() if p.name not in ("model.onnx", MANIFEST)))
    return _finish(folder, files, source, {"dynamic": True})


def quantized_op_count(counts: dict[str, int]) -> int:
    """How many quantization ops an op-count table (onnx_export.op_counts) holds."""
    return sum(n for op, n in counts.items() if op in QUANTIZED_OPS)
