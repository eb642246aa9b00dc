"""The measurement protocol for one benchmark case: build, apply, check against eager, then time.

Used by every bench file through the plugin's fixtures; it never imports pytest. A failed check raises before any
timing, so a wrong variant records no time. Its parts live beside it, and every name the plugin, the benches and the
tests import from here is re-exported: the case and its record's fields (cases.py), the ways a case fails
(failures.py), the timed rounds (rounds.py), the eager baseline (baselines.py), INT8 calibration feeds
(calibration.py) and the training case (training_case.py).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import torch

from nn_speedups.matrix.variant import VariantContext
from nn_speedups.measure import energy, metrics, timing
from nn_speedups.measure.baselines import Baseline, BaselineCache, data_inputs
from nn_speedups.measure.calibration import CALIBRATION_BATCH, CALIBRATION_IMAGES, CALIBRATION_SEED, calibration_feeds
from nn_speedups.measure.cases import Case, Settings, case_fields, image_size_of, timing_fields
from nn_speedups.measure.correctness import CHECKS, check_accuracy
from nn_speedups.measure.failures import (
    MeasurementError,
    cuda_memory_numbers,
    out_of_memory,
    release_memory,
    size_refusal,
)
from nn_speedups.measure.rounds import measure_rounds
from nn_speedups.measure.training_case import (
    DATA_TIMED_BATCHES,
    TINYIMAGENET_TRAIN_IMAGES,
    TrainingBaseline,
    data_pipeline_fields,
    run_training_case,
    training_baseline,
)
from nn_speedups.optimizations import onnx_file as _onnx_file  # noqa: F401 - supplies the engine of models/onnx_file.py
from nn_speedups.optimizations.base import engine_message, engine_of

__all__ = [
    "CALIBRATION_BATCH",
    "CALIBRATION_IMAGES",
    "CALIBRATION_SEED",
    "DATA_TIMED_BATCHES",
    "TINYIMAGENET_TRAIN_IMAGES",
    "Baseline",
    "BaselineCache",
    "Case",
    "MeasurementError",
    "Settings",
    "TrainingBaseline",
    "accuracy_fields",
    "calibration_feeds",
    "case_fields",
    "cuda_memory_numbers",
    "data_inputs",
    "data_pipeline_fields",
    "image_size_of",
    "measure_rounds",
    "out_of_memory",
    "release_memory",
    "run_case",
    "run_training_case",
    "size_refusal",
    "timing_fields",
    "training_baseline",
]


def run_case(case: Case, baselines: BaselineCache, run: Callable | None = None, trace: Callable | None = None) -> dict:
    """Apply `case.variant`, check it against eager, time it; return the extra_info record.

    `trace` (nn_speedups.trace.Tracer.trace with the case's name bound) runs after everything else, untimed, on the
    same runner. An engine's own exception (ONNX Runtime, TensorRT, OpenVINO), or inputs the model cannot be given,
    end the case with a MeasurementError of one line: the engine's message cut to what matters and, where the
    model can tell (an ONNX file), the input that most likely caused it."""
    from nn_speedups.models.user import UserModelError

    try:
        return _run_case(case, baselines, run, trace)
    except UserModelError as error:
        raise MeasurementError(f"{case.id}: {error}") from None
    except Exception as error:
        engine = engine_of(error)
        if engine is None:
            raise
        message = engine_message(error)
        hint = case.spec.explain_failure(message) if case.spec.explain_failure else ""
        raise MeasurementError(f"{case.id}: {engine} failed: {message}{hint}") from None


def _run_case(case: Case, baselines: BaselineCache, run: Callable | None, trace: Callable | None) -> dict:
    settings = baselines.settings
    meter = energy.meter(case.device)
    base = baselines.get(case)
    variant = case.variant
    dtype = variant.torch_dtype(case.device)
    size = image_size_of(case.spec, settings.image_size)
    ctx = VariantContext(
        case.device, dtype, case.spec, size, settings.data, settings.profile, settings.eval_samples, base.weights
    )
    sync = timing.synchronizer(case.device)
    try:
        is_cuda = torch.device(case.device).type == "cuda"
        nvml = metrics.NvmlProcessPeak(torch.device(case.device).index or 0) if is_cuda else contextlib.nullcontext()
        metrics.settle_host_memory()  # host_mb: what this case adds to the process, whatever ran before it
        with metrics.HostPeak() as host, metrics.DevicePeak(case.device) as device_peak, nvml, torch.inference_mode():
            start = time.perf_counter()
            runner = variant.apply(base.model, base.inputs, ctx)
            inputs = runner.prepare(base.inputs)
            out = runner(*inputs)
            sync()
            compile_s = time.perf_counter() - start
            # Seed 004's RAM/VRAM are what the deployed model holds while it runs, not what building it took
            # (export, INT8 calibration, compilation): the peaks restart here, the build's are kept apart.
            build_host_mb, build_device_mb = host.reset(), device_peak.reset()
            runner.verify()
            accuracy = None
            if variant.check == "accuracy":  # judged by top-1 on held-out images, before any timing
                accuracy = accuracy_fields(runner, base, case, settings)
                check = check_accuracy(out, base.reference, accuracy, runner.fields, label=case.id)
            else:
                check = CHECKS[variant.check](out, base.reference, dtype, label=case.id)
            del out
            summary = measure_rounds(lambda: runner(*inputs), sync, settings.profile, run, meter)
    except torch.OutOfMemoryError as error:
        raise out_of_memory(case, error) from None
    if variant.name == "eager":
        base.eager = summary
    if variant.name == "compile" and case.family == "compression":
        base.compiled = summary
    eager = baselines.eager_summary(case)
    peak_device_mb = device_peak.peak_mb if runner.device_memory == "torch" or not is_cuda else nvml.peak_mb
    if accuracy is None:
        accuracy = accuracy_fields(runner, base, case, settings)
    vs_compiled = {}
    if variant.vs_compiled:
        compiled = baselines.compiled_summary(case)
        vs_compiled = {
            "compiled_median_ms": compiled.median_ms,
            "speedup_vs_compiled": timing.speedup(compiled.median_ms, summary.median_ms),
        }
    model_size = (
        metrics.files_bytes(*runner.artifact_files)
        if runner.artifact_files
        else (metrics.state_dict_bytes(runner.model) if runner.model is not None else None)
    )
    record = {
        **case_fields(case, settings.profile.name),
        "image_size": size if "vision" in case.spec.tags else None,
        "inputs": base.inputs_from,
        **timing_fields(summary),
        "samples_per_s": timing.samples_per_s(case.batch_size, summary.median_ms),
        "eager_median_ms": eager.median_ms,
        "speedup_vs_eager": timing.speedup(eager.median_ms, summary.median_ms),
        "peak_device_mb": peak_device_mb,
        "device_memory": runner.device_memory if is_cuda else None,
        "host_mb": host.peak_mb - host.start_mb,
        "build_host_mb": build_host_mb - host.start_mb,
        "peak_host_mb": host.peak_mb,
        "build_peak_host_mb": build_host_mb,
        "build_peak_device_mb": build_device_mb,
        "params": base.params,
        "gflops": base.gflops,
        "compile_s": compile_s,
        "model_load_s": base.load_s,
        "model_size_mb": None if model_size is None else model_size / metrics.MB,
        "threads": torch.get_num_threads(),
        **base.eager_repeat,
        **check.as_extra_info(),
        **accuracy,
        **vs_compiled,
        **{f"info_{k}": v for k, v in runner.info.items()},
        **meter.fields(summary.rounds * case.batch_size),
        **runner.fields,  # what the variant measured of itself (a pruned model's params, gflops, build_s...)
    }
    if trace is not None:
        with torch.inference_mode():
            record.update(trace(lambda: runner(*inputs), sync, case.device, record, runner, inputs))
    return record


def accuracy_fields(runner, base: Baseline, case: Case, settings: Settings) -> dict:
    """top-1/top-5 and agreement with eager on the evaluation images, for image classifiers: for every variant when
    the weights are trained (a checkpoint, --weights, or the quick profile's trained model), else for lossy variants
    only (agreement is their correctness criterion; distinct_top1 says whether random weights make it trivial)."""
    if not case.spec.num_classes or "vision" not in case.spec.tags:
        return {}
    if not (base.trained or case.variant.check == "lossy"):
        return {}
    from nn_speedups.measure.accuracy import eval_set, evaluate

    images, labels = eval_set(settings.data, image_size_of(case.spec, settings.image_size), settings.eval_samples)
    fields = evaluate(runner, base.model, case.batch_size, case.device, images, labels, trained=base.trained)
    return {**fields, "eval_data": settings.data, "weights": base.weights}
