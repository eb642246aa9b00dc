"""ONNX Runtime: the model exported to ONNX (dynamo exporter, dynamic batch, external weights) and run in an ORT
session, against eager PyTorch fp32 of the same model and batch.

Variants: `ort-cpu` at graph optimization levels disabled/basic/extended/all (seed 002's "constant folding,
redundant operation removal, fusion" as figures); `ort-cuda` with IOBinding on torch CUDA tensors, and
`ort-cuda-copies` feeding host arrays (what the copies cost); `ort-cuda-fp16` (the fp16 export); `ort-trt`
(TensorRT execution provider, engine cache on); INT8: `ort-int8-minmax` / `ort-int8-percentile` (static QDQ,
per-channel weights, calibrated on data-source images) for conv nets, `ort-int8-minmax` for BERT too (static QDQ of
its weight MatMuls, calibrated on token sequences the checks never use: the graph TensorRT INT8 builds from) and
`ort-int8-dynamic` for BERT.

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

from harness.bench import CALIBRATION_IMAGES, CALIBRATION_SEED, calibration_feeds
from harness.matrix import matrix
from harness.variant import EAGER, Variant
from optimizations import onnxruntime as ort_
from optimizations import quantize
from optimizations.base import NotEngagedError, Runner
from optimizations.onnx_export import ExportConfig, export, op_counts


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


def ort_int8_static(method: str):
    def apply(model, inputs, ctx) -> Runner:
        source = _export(model, inputs, ctx)
        text = "nlp" in ctx.spec.tags
        artifact = quantize.quantize_static(source, calibration_feeds(ctx), quantize.static_config(method, text))
        runner = ort_.apply(model, inputs, ort_.OrtConfig(provider="cpu"), artifact)
        seen = f"token sequences (seed {CALIBRATION_SEED}+)" if text else f"images of {ctx.data}"
        runner.info["calibration"] = f"{method} on {CALIBRATION_IMAGES} {seen}"
        return _quantized(runner, artifact)

    return apply


def ort_int8_dynamic(model, inputs, ctx) -> Runner:
    artifact = quantize.quantize_dynamic(_export(model, inputs, ctx), quantize.DynamicQuantConfig())
    return _quantized(ort_.apply(model, inputs, ort_.OrtConfig(provider="cpu"), artifact), artifact)


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
    Variant("ort-int8-dynamic", ort_int8_dynamic, check="lossy", dtype="int8", only="nlp", **ORT),
]


@matrix(VARIANTS, models=["resnet18", "resnet50", "densenet121", "mobilenet_v3_large", "convnext-seed", "bert-base"])
def test_onnxruntime(case, measure):
    measure(case)
