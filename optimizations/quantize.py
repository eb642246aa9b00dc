"""INT8 with ONNX Runtime: static quantization (QDQ format, per-channel weights, calibrated on data-source images)
and dynamic quantization (int8 weights, activations quantized on the fly), each following a recipe read from the
exported graph (`graph_recipe`), not from the model's tags:

- `conv` (a conv net: Conv and no transformer blocks) and `dense` (neither): every op ONNX Runtime quantizes.
- `transformer` (weight MatMul/Gemm plus attention, Softmax or layer norms: BERT, ViT, DeiT, Swin): only the weight
  MatMuls/Gemms (projections, feed-forward layers, heads), as TensorRT's and ORT's BERT recipes do (the QDQ graph
  TensorRT builds INT8 engines from); attention's activation x activation MatMuls, Softmax, LayerNorm, GELU, the
  embedding gathers and a patch-embedding Conv stay float.
- `hybrid` (a transformer with conv stages: MobileViT, ConvNeXt-like LayerNorm conv nets): the Convs and the weight
  MatMuls/Gemms; attention, Softmax, LayerNorm and GELU stay float.

Dynamic quantization takes the weight MatMuls (and the embedding gathers) of every recipe; a graph without any has
nothing for it to do (`Recipe.dynamic_applies`). Both paths run ONNX Runtime's `quant_pre_process` (ONNX shape
inference, after the export's own value_info is dropped: it can disagree with what ORT's quantizer infers).

Artifacts are cached beside their fp32 source, keyed by its sha256, the configuration (recipe included) and the
calibration data.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from nn_speedups.optimizations.onnx_export import MANIFEST, OnnxArtifact, _load_cached, sha256_files

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
    recipe: str = ""  # the graph recipe's name (Recipe.name), part of the cache key and the manifest
    reduce_range: bool = False  # 7-bit weights, for CPUs whose u8s8 kernels saturate (saturating_cpu)
    cache_dir: str = "artifacts/int8"


# A transformer's static INT8: the weight MatMuls (projections and feed-forward layers), as TensorRT's and ORT's
# BERT recipes do; LayerNorm, Softmax, GELU, the embedding gathers and attention's score products stay float.
TRANSFORMER_OPS = ("MatMul", "Gemm")
HYBRID_OPS = ("Conv", "MatMul", "Gemm")  # a transformer with conv stages: its convs too
DYNAMIC_OPS = ("MatMul", "Gather")  # ORT's dynamic quantizer: weight MatMuls (MatMulInteger) and embedding tables

NORM_OPS = ("LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization", "RMSNormalization")
GELU_OPS = ("Gelu", "Erf", "FastGelu", "BiasGelu")
ATTENTION_OPS = ("Softmax", "Attention", "MultiHeadAttention")
_PASSTHROUGH = frozenset({"Transpose", "Reshape", "Cast", "Identity", "Unsqueeze", "Squeeze"})


@dataclass(frozen=True)
class Recipe:
    """What INT8 quantizes in one graph, read from the graph (`graph_recipe`)."""

    name: str  # conv | dense | transformer | hybrid
    op_types: tuple[str, ...] = ()  # static: op types to quantize; empty: every type ORT can
    weight_matmuls_only: bool = False  # static: attention's activation x activation MatMuls stay float
    per_channel: bool = True  # per-channel (per output channel) int8 weights
    kept_float: tuple[str, ...] = ()  # what the static recipe leaves float, as found in the graph
    weight_matmuls: int = 0  # MatMul/Gemm nodes with a weight (initializer/constant) second input
    dynamic_weights: int = 0  # nodes ORT's dynamic quantizer takes: weight MatMuls and embedding Gathers

    @property
    def dynamic_applies(self) -> bool:
        return self.dynamic_weights > 0

    def describe(self) -> str:
        """One line for a row's info: the recipe, what it quantizes, what stays float."""
        what = "every op ORT quantizes" if not self.op_types else "/".join(self.op_types)
        kept = ", ".join(self.kept_float) or "nothing"
        weights = "per-channel" if self.per_channel else "per-tensor"
        return f"{self.name}: int8 {what} ({weights} weights); float: {kept}"

    def describe_dynamic(self) -> str:
        """One line for a dynamic INT8 row's info."""
        return (
            f"{self.name}: int8 {self.dynamic_weights} weight MatMuls and embedding Gathers (per-tensor weights, "
            "activations quantized per call); float: Gemm, Conv, attention MatMuls and every other op"
        )


# The tag-based recipes (static_config(method, True/False)), for callers that have no graph at hand.
CONV_RECIPE = Recipe("conv")
TRANSFORMER_RECIPE = Recipe("transformer", TRANSFORMER_OPS, weight_matmuls_only=True)


def _constants(graph) -> set[str]:
    """Tensors that are weights: initializers and Constants, possibly through Transpose/Reshape/Cast/Identity."""
    constant = {t.name for t in graph.initializer}
    for node in graph.node:  # topological order: a node's inputs are settled before it
        if node.op_type == "Constant" or (node.op_type in _PASSTHROUGH and node.input and node.input[0] in constant):
            constant.update(node.output)
    return constant


def _reduce_mean_norms(graph) -> int:
    """Layer norms written out as ops: Sub(x, ReduceMean(x)) (older exporters, hand-written norms)."""
    producers = {out: node for node in graph.node for out in node.output}
    count = 0
    for node in graph.node:
        if node.op_type == "Sub" and len(node.input) == 2:
            mean = producers.get(node.input[1])
            count += bool(mean is not None and mean.op_type == "ReduceMean" and mean.input[0] == node.input[0])
    return count


def graph_recipe(path: str | Path) -> Recipe:
    """The INT8 recipe for the ONNX graph at `path` (its weights are not read): see the module docstring."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    constant = _constants(graph)
    ops = Counter(node.op_type for node in graph.node)
    weights = [n for n in graph.node if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in constant]
    computed = [n for n in graph.node if n.op_type == "MatMul" and n.input[1] not in constant]
    initializers = {t.name for t in graph.initializer}
    embeddings = sum(n.op_type == "Gather" and n.input[0] in initializers for n in graph.node)
    dynamic = sum(n.op_type == "MatMul" for n in weights) + embeddings
    norms = sum(ops[op] for op in NORM_OPS) + _reduce_mean_norms(graph)
    attention = sum(ops[op] for op in ATTENTION_OPS) + len(computed)
    convs = ops["Conv"]
    counts = {"weight_matmuls": len(weights), "dynamic_weights": dynamic}
    if not weights or not (attention or norms):
        return Recipe("conv" if convs else "dense", **counts)
    kept = [f"{len(computed)} attention MatMuls"] if computed else []
    kept += [op for op in ("Softmax", *NORM_OPS, *GELU_OPS) if ops[op]]
    if _reduce_mean_norms(graph):
        kept.append("ReduceMean layer norms")
    if embeddings:
        kept.append("embedding Gathers")
    if convs > 2:  # conv stages, not just a patch embedding: quantize them too
        return Recipe("hybrid", HYBRID_OPS, weight_matmuls_only=True, kept_float=tuple(kept), **counts)
    if convs:
        kept.append(f"{convs} Conv (patch embedding)")
    return Recipe("transformer", TRANSFORMER_OPS, weight_matmuls_only=True, kept_float=tuple(kept), **counts)


def saturating_cpu() -> bool:
    """Whether this CPU runs ONNX Runtime's u8s8 int8 kernels with saturation: x86 without VNNI (AVX2/AVX-512 only)
    sums pairs of u8 x s8 products into int16 (vpmaddubsw), which overflows on full-range int8 weights. A tiny MLP
    lands at 9-15 dB there and at 35 dB with 7-bit weights (reduce_range), as ONNX Runtime's documentation advises."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # x86 of unknown features: the safe choice
    return not any(flag in flags for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))


def static_config(method: str, recipe: Recipe | bool, symmetric: bool = False) -> StaticQuantConfig:
    """The static INT8 configuration of a graph recipe (`graph_recipe`). A bool stands for the tag-based choice:
    True a transformer's weight MatMuls, False a conv net's every quantizable op. Asymmetric (ORT CPU) graphs get
    7-bit weights where this CPU's int8 kernels saturate; symmetric ones are TensorRT's and keep the full range."""
    if isinstance(recipe, bool):
        recipe = TRANSFORMER_RECIPE if recipe else CONV_RECIPE
    return StaticQuantConfig(
        method,
        per_channel=recipe.per_channel,
        symmetric=symmetric,
        op_types=recipe.op_types,
        weight_matmuls_only=recipe.weight_matmuls_only,
        recipe=recipe.name,
        reduce_range=not symmetric and saturating_cpu(),
    )


@dataclass(frozen=True)
class DynamicQuantConfig:
    per_channel: bool = False
    op_types: tuple[str, ...] = DYNAMIC_OPS
    recipe: str = ""  # the graph recipe's name, part of the cache key and the manifest
    reduce_range: bool = False  # 7-bit weights, for CPUs whose u8s8 kernels saturate (saturating_cpu)
    cache_dir: str = "artifacts/int8"


def dynamic_config(recipe: Recipe, cache_dir: str = "artifacts/int8") -> DynamicQuantConfig:
    """The dynamic INT8 configuration of a graph recipe: its weight MatMuls and embedding tables, whatever the
    recipe; attention's activation MatMuls stay float (ORT's dynamic quantizer also keeps Gemm and Conv float).
    7-bit weights where this CPU's int8 kernels saturate (saturating_cpu)."""
    return DynamicQuantConfig(per_channel=False, recipe=recipe.name, reduce_range=saturating_cpu(), cache_dir=cache_dir)


def _quantization():
    try:
        from onnxruntime import quantization
    except ImportError:
        raise ImportError("INT8 variants need onnxruntime: pip install -e .") from None
    return quantization


class _Batches:
    """onnxruntime's CalibrationDataReader over a list of {input name: array} feeds, read once: quantize_static's
    calibrators (MinMax, Entropy, Percentile) collect in one pass of get_next() until it returns None."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self):
        return next(self._feeds, None)


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
    fields = {**asdict(config), "cache_dir": None, "calibration": _digest(feeds), "prepare": 1}
    tag = f"qdq-{config.method}{'-sym' if config.symmetric else ''}"
    folder = _folder(source, config.cache_dir, tag, fields)
    cached = _load_cached(folder)
    if cached is not None:
        return cached
    folder.mkdir(parents=True, exist_ok=True)
    prepared = _prepare(source, folder)
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
        reduce_range=config.reduce_range,
        calibrate_method=method,
        op_types_to_quantize=list(config.op_types) or None,
        nodes_to_exclude=activation_matmuls(prepared) if config.weight_matmuls_only else None,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True} if config.symmetric else {},
    )
    _clean(folder)
    files = (out,) + tuple(sorted(p for p in folder.iterdir() if p.name not in ("model.onnx", MANIFEST)))
    extra = {"method": config.method, "per_channel": config.per_channel, "recipe": config.recipe}
    extra["reduce_range"] = config.reduce_range
    return _finish(folder, files, source, extra)


def _prepare(source: OnnxArtifact, folder: Path) -> Path:
    """ONNX Runtime's quant_pre_process of `source` into folder/prepared.onnx, ahead of either quantizer.

    The export's value_info goes first: the dynamo exporter records shapes for initializers that ORT's quantizer
    rewrites (a Gemm's weight), and ONNX shape inference then stops at "Inferred shape and existing shape differ";
    shape inference rebuilds it. Shape inference only: symbolic shape inference is skipped (ONNX's suffices for
    the quantizers), and so is the ORT-optimizer pass, which re-saves weights as external data in a temp folder and
    fails to read them back; ORT fuses the graph itself at session creation anyway."""
    import onnx

    q = _quantization()
    model = onnx.load(str(source.path))
    del model.graph.value_info[:]
    prepared = folder / "prepared.onnx"
    q.quant_pre_process(model, str(prepared), skip_optimization=True, skip_symbolic_shape=True)
    return prepared


def _clean(folder: Path) -> None:
    for leftover in folder.glob("prepared*"):
        leftover.unlink()


def activation_matmuls(path: Path) -> list[str]:
    """Names of the MatMul nodes whose second input is computed (attention's scores and context products), not a
    weight: an initializer or a Constant, possibly through Transpose/Reshape/Cast/Identity. ORT's MatMulConstBOnly
    option is honoured by its QOperator and dynamic quantizers only, not by QDQ, hence this list to exclude."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    constant = _constants(graph)
    return [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] not in constant]


def quantize_dynamic(source: OnnxArtifact, config: DynamicQuantConfig) -> OnnxArtifact:
    """Dynamic INT8 model of `source`: int8 weights for its weight MatMuls (and embedding Gathers), activations
    quantized per call; attention's activation x activation MatMuls stay float."""
    q = _quantization()
    folder = _folder(source, config.cache_dir, "dynamic", {**asdict(config), "cache_dir": None, "prepare": 1})
    cached = _load_cached(folder)
    if cached is not None:
        return cached
    folder.mkdir(parents=True, exist_ok=True)
    prepared = _prepare(source, folder)
    out = folder / "model.onnx"
    q.quantize_dynamic(
        str(prepared),
        str(out),
        weight_type=q.QuantType.QInt8,
        per_channel=config.per_channel,
        reduce_range=config.reduce_range,
        op_types_to_quantize=list(config.op_types) or None,
        nodes_to_exclude=activation_matmuls(prepared),
        extra_options={"MatMulConstBOnly": True},
    )
    _clean(folder)
    files = (out,) + tuple(sorted(p for p in folder.iterdir() if p.name not in ("model.onnx", MANIFEST)))
    return _finish(
        folder,
        files,
        source,
        {
            "dynamic": True,
            "per_channel": config.per_channel,
            "recipe": config.recipe,
            "reduce_range": config.reduce_range,
        },
    )


def quantized_op_count(counts: dict[str, int]) -> int:
    """How many quantization ops an op-count table (onnx_export.op_counts) holds."""
    return sum(n for op, n in counts.items() if op in QUANTIZED_OPS)
