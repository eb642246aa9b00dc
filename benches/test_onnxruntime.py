"""ONNX Runtime: the model exported to ONNX (dynamo exporter, dynamic batch, external weights) and run in an ORT
session, against eager PyTorch fp32 of the same model and batch.

Variants: `ort-cpu` at graph optimization levels disabled/basic/extended/all (seed 002's "constant folding,
redundant operation removal, fusion" as figures); `ort-cuda` with IOBinding on torch CUDA tensors, and
`ort-cuda-copies` feeding host arrays (what the copies cost); `ort-cuda-fp16` (the fp16 export); `ort-trt`
(TensorRT execution provider, engine cache on); INT8: `ort-int8-minmax` / `ort-int8-percentile` (static QDQ,
per-channel weights, calibrated on data-source images, or for a text model on token sequences the checks never use)
and `ort-int8-dynamic` (int8 weight MatMuls, for any graph that has them), each with the recipe read from the
exported graph (`quantize.graph_recipe`, named in the row's `int8_recipe`): a conv net's every op; a transformer's
(text or vision) weight MatMuls/Gemms only, attention's score products, Softmax, LayerNorm and GELU kept float (the
graph TensorRT INT8 builds from); a hybrid's (MobileViT) convs and weight MatMuls.

Correctness before timing: fp32 sessions match eager (`exact`); fp16 and TensorRT keep cosine >= 0.99 (`lowp`);
INT8 keeps SQNR >= 20 dB (`lossy`), reports top-1 agreement with eager on `--data` images, and must really hold
quantized ops. Sessions for CUDA/TensorRT refuse CPU fallback and are checked to run on the provider asked for.
Model size counts the .onnx graph and its external data. Threads: intra-op = torch's thread count, recorded.

An existing ONNX file (`--onnx PATH`) runs here too: its `eager` row is the file in ONNX Runtime fp32 (there is no
torch model), the baseline of the other rows; `ort-cuda-fp16` (an fp16 export) skips on it.

    pytest benches/test_onnxruntime.py --benchmark-autosave
    pytest benches/test_onnxruntime.py --models resnet50 --batch-sizes 1,8 --variants eager,ort-cpu,ort-int8-minmax
    pytest benches/test_onnxruntime.py --onnx model.onnx --onnx-dim sequence=128 --batch-sizes 1,8
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from nn_speedups.matrix.declare import matrix
from nn_speedups.matrix.variant import EAGER, Variant
from nn_speedups.measure.protocol import CALIBRATION_IMAGES, CALIBRATION_SEED, calibration_feeds
from nn_speedups.optimizations import onnxruntime as ort_
from nn_speedups.optimizations import quantize
from nn_speedups.optimizations.base import NotEngagedError, Runner
from nn_speedups.optimizations.onnx_export import ExportConfig, export, op_counts


def _export(model, inputs, ctx, dtype: str = "fp32"):
    return export(model, inputs, ExportConfig(name=ctx.spec.name, dtype=dtype, input_names=ctx.spec.input_names))


def _session(config: ort_.OrtConfig, artifact, model, inputs, with_copies: bool = False) -> Runner:
    runner = ort_.apply(model, inputs, config, artifact, with_copies=with_copies)
    runner.info.update(export_cached=artifact.cached, onnx_ops=op_counts(artifact.path))
    if config.provider != "cpu":
        runner.device_memory = "nvml"
    return runner


def ort_session(provider: str, level: str = "all", dtype: str = "fp32", with_copies: bool = False, fp16_engine=False):
    def apply(model, inputs, ctx) -> Runner:
        artifact = _export(model, inputs, ctx, dtype)
        config = ort_.OrtConfig(provider=provider, graph_level=level, trt_fp16=fp16_engine)
        runner = _session(config, artifact, model, inputs, with_copies)
        runner.info["onnx_dtype"] = dtype
        return runner

    return apply


def _quantized(runner: Runner, artifact) -> Runner:
    ops = op_counts(artifact.path)
    n_quant = quantize.quantized_op_count(ops)
    if n_quant == 0:
        raise NotEngagedError(f"the INT8 graph holds no quantization ops: {ops}")
    runner.info.update(quantized_ops=n_quant, onnx_ops=ops, onnx_dtype="int8")
    return runner


def _recipe(runner: Runner, recipe: quantize.Recipe, line: str) -> None:
    runner.info.update(int8_recipe=recipe.name, int8_recipe_detail=line)


def ort_int8_static(method: str):
    def apply(model, inputs, ctx) -> Runner:
        source = _export(model, inputs, ctx)
        recipe = quantize.graph_recipe(source.path)  # from what the graph holds, not the model's tags
        artifact = quantize.quantize_static(source, calibration_feeds(ctx), quantize.static_config(method, recipe))
        runner = ort_.apply(model, inputs, ort_.OrtConfig(provider="cpu"), artifact)
        tags = ctx.spec.tags  # calibration_feeds' choice: images for a vision model, else example inputs
        seen = (
            f"token sequences (seed {CALIBRATION_SEED}+)"
            if "nlp" in tags
            else f"example inputs (seed {CALIBRATION_SEED}+)"
            if "vision" not in tags
            else f"images of {ctx.data}"
        )
        runner.info["calibration"] = f"{method} on {CALIBRATION_IMAGES} {seen}"
        _recipe(runner, recipe, recipe.describe())
        return _quantized(runner, artifact)

    return apply


def ort_int8_dynamic(model, inputs, ctx) -> Runner:
    source = _export(model, inputs, ctx)
    recipe = quantize.graph_recipe(source.path)
    if not recipe.dynamic_applies:
        pytest.skip(
            f"ort-int8-dynamic quantizes weight MatMuls and embedding tables; {ctx.spec.name}'s graph has none "
            f"(recipe {recipe.name}: its weights are Conv/Gemm, which the static INT8 variants quantize)"
        )
    artifact = quantize.quantize_dynamic(source, quantize.dynamic_config(recipe))
    runner = ort_.apply(model, inputs, ort_.OrtConfig(provider="cpu"), artifact)
    _recipe(runner, recipe, recipe.describe_dynamic())
    return _quantized(runner, artifact)


# onnx_file=True: the variant also runs on a model given as an ONNX file (--onnx), whose eager row is ORT fp32
ORT = {"marks": ("ort",), "onnx_file": True}
VARIANTS = [
    replace(EAGER, onnx_file=True),
    Variant("ort-cpu", ort_session("cpu"), check="exact", **ORT),
    *[
        Variant(f"ort-cpu-opt-{level}", ort_session("cpu", level), check="exact", **ORT)
        for level in ("disabled", "basic", "extended")
    ],
    Variant("ort-cuda", ort_session("cuda"), check="exact", marks=("gpu", "ort_cuda"), onnx_file=True),
    Variant(
        "ort-cuda-copies",
        ort_session("cuda", with_copies=True),
        check="exact",
        marks=("gpu", "ort_cuda"),
        onnx_file=True,
    ),
    Variant("ort-cuda-fp16", ort_session("cuda", dtype="fp16"), check="lowp", dtype="fp16", marks=("gpu", "ort_cuda")),
    Variant("ort-trt", ort_session("trt"), check="lowp", marks=("gpu", "ort_trt"), onnx_file=True),
    Variant(
        "ort-trt-fp16",
        ort_session("trt", fp16_engine=True),
        check="lowp",
        dtype="fp16",
        marks=("gpu", "ort_trt"),
        onnx_file=True,
    ),
    Variant("ort-int8-minmax", ort_int8_static("minmax"), check="lossy", dtype="int8", **ORT),
    Variant("ort-int8-percentile", ort_int8_static("percentile"), check="lossy", dtype="int8", only="conv", **ORT),
    # any model whose graph has weight MatMuls (a transformer, text or vision); a conv net's case skips, saying why
    Variant("ort-int8-dynamic", ort_int8_dynamic, check="lossy", dtype="int8", **ORT),
]


@matrix(VARIANTS, models=["resnet18", "resnet50", "densenet121", "mobilenet_v3_large", "convnext-seed", "bert-base"])
def test_onnxruntime(case, measure):
    measure(case)
