"""Native TensorRT: engines built from the ONNX export through TensorRT's parser (optimizations/tensorrt.py),
run with execute_async_v3 on torch CUDA tensors, against eager PyTorch fp32 of the same model and batch.

Variants: `trt-fp32`, `trt-fp16` (from the fp16 ONNX where TensorRT is strongly typed, else the fp16 builder flag),
`trt-int8` (from the symmetric QDQ ONNX calibrated on data-source images; for BERT, its weight MatMuls are the ones
quantized). Engine build time is compile_s, not latency; engines and timing caches are kept under
artifacts/tensorrt keyed by ONNX hash, TensorRT version, GPU and shapes. Model size is the engine file; device
memory is NVML process memory net of the CUDA context.

Correctness before timing: fp32 within `lowp` (TensorRT may pick TF32-free but reordered kernels; cosine >= 0.99),
fp16 `lowp`, INT8 `lossy` (SQNR >= 20 dB, top-1 agreement on `--data` images); the engine must have run and show
the precision asked for in its layer information.

    pytest benches/test_tensorrt.py --benchmark-autosave                 # needs a GPU and pip install -e .[trt]
    pytest benches/test_tensorrt.py --models bert-base --batch-sizes 1,8,64,256 --profile full
    pytest benches/test_tensorrt.py --onnx model.onnx --batch-sizes 1,8      # an existing ONNX file, as trtexec would
"""

from __future__ import annotations

from dataclasses import replace

from nn_speedups.matrix.declare import matrix
from nn_speedups.matrix.variant import EAGER, Variant
from nn_speedups.measure.protocol import calibration_feeds
from nn_speedups.optimizations import quantize
from nn_speedups.optimizations import tensorrt as trt_
from nn_speedups.optimizations.base import Runner
from nn_speedups.optimizations.onnx_export import ExportConfig, export


def engine(precision: str):
    def apply(model, inputs, ctx) -> Runner:
        facts = trt_.trt_facts()
        plan = trt_.precision_plan(precision, "fp32", facts.has_weak_typing_flags, facts.major)
        export_config = ExportConfig(name=ctx.spec.name, input_names=ctx.spec.input_names)
        if plan.onnx_variant == "fp16":
            export_config = ExportConfig(name=ctx.spec.name, dtype="fp16", input_names=ctx.spec.input_names)
        artifact = export(model, inputs, export_config)
        if plan.onnx_variant == "qdq":
            config = quantize.static_config("minmax", "nlp" in ctx.spec.tags, symmetric=True)
            artifact = quantize.quantize_static(artifact, calibration_feeds(ctx), config)
        batch = inputs[0].shape[0]
        config = trt_.TrtConfig(precision=precision, min_batch=1, opt_batch=batch, max_batch=max(batch, 64))
        runner = trt_.apply(model, inputs, config, artifact.files)
        runner.device_memory = "nvml"
        return runner

    return apply


# onnx_file=True: they also run on a model given as an ONNX file (--onnx), against its ORT fp32 eager row. trt-fp16
# builds from that file with the fp16 flag; where TensorRT is strongly typed (11+) it needs an fp16 export and fails
# on a file with the reason.
TRT = {"marks": ("gpu", "trt"), "onnx_file": True}
VARIANTS = [
    replace(EAGER, **TRT),  # the baseline only where an engine can run beside it
    Variant("trt-fp32", engine("fp32"), check="lowp", **TRT),
    Variant("trt-fp16", engine("fp16"), check="lowp", dtype="fp16", **TRT),
    Variant("trt-int8", engine("int8"), check="lossy", dtype="int8", **TRT),
]


@matrix(VARIANTS, models=["resnet18", "resnet50", "densenet121", "convnext-seed", "bert-base"])
def test_tensorrt(case, measure):
    measure(case)
