"""Measuring one training case: eager fp32's seeded training baseline, the variant's checked and timed steps, and
the data pipeline's cost apart from the step. Re-exported by nn_speedups.measure.protocol (run_training_case)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from nn_speedups.matrix.variant import VariantContext
from nn_speedups.measure import energy, metrics, timing
from nn_speedups.measure.cases import Case, Settings, case_fields, image_size_of, timing_fields
from nn_speedups.measure.correctness import TRAINING_CHECK_STEPS, check_training
from nn_speedups.measure.failures import out_of_memory, release_memory, size_refusal
from nn_speedups.measure.rounds import measure_rounds
from nn_speedups.models.registry import build_model, count_parameters

TINYIMAGENET_TRAIN_IMAGES = 100_000  # what epoch_s_projected projects to


@dataclass
class TrainingBaseline:
    """Eager fp32 training from the seeded weights on one fixed batch: the model, the batch, eager's losses."""

    model: torch.nn.Module
    inputs: tuple  # (images, labels)
    losses: list[float]
    params: int
    eager: timing.Summary | None = None  # the vanilla variant's step timing, once measured


_TRAINING: dict[tuple, TrainingBaseline] = {}
_DATA_RATES: dict[tuple, dict] = {}
DATA_TIMED_BATCHES = 8  # batches timed after the first (which starts workers and warms caches)


def data_pipeline_fields(data: str, image_size: int, batch_size: int, device: str) -> dict:
    """What the training data pipeline costs, measured apart from the step: batches drawn from `data`'s training
    split through nn_speedups.data's loader and training transforms (decode, resize, crop, flip, normalize), as
    nn_speedups.train feeds them. Worker processes: none on a CPU (they would take the cores the step runs on), up to 8
    on CUDA. `epoch_s_projected_with_data` adds the data time to compute without workers, and takes the larger of
    the two with workers (they load while the GPU computes). Cached per process by (data, size, batch, device)."""
    import os

    from nn_speedups.data import build_datasets, make_loader

    key = (data, image_size, batch_size, device)
    if key not in _DATA_RATES:
        workers = 0 if torch.device(device).type == "cpu" else min(8, os.cpu_count() or 1)
        train = build_datasets(data, image_size=image_size).train
        if train is None:
            _DATA_RATES[key] = {"data_note": f"{data} has no training split: no data pipeline figure"}
            return _DATA_RATES[key]
        batches = min(DATA_TIMED_BATCHES, len(train) // batch_size - 1)
        if batches < 1:
            _DATA_RATES[key] = {"data_note": f"{data}'s training split holds fewer than 2 batches of {batch_size}"}
            return _DATA_RATES[key]
        loader = iter(make_loader(train, batch_size, shuffle=True, workers=workers, drop_last=True))
        next(loader)
        start = time.perf_counter()
        for _ in range(batches):
            images, _labels = next(loader)
            images.to(device, non_blocking=False)
        timing.synchronizer(device)()
        elapsed = time.perf_counter() - start
        _DATA_RATES[key] = {
            "data_images_per_s": batches * batch_size / elapsed,
            "data_workers": workers,
            "data_source": data,
        }
        del loader
    return _DATA_RATES[key]


def training_baseline(case: Case, settings: Settings) -> TrainingBaseline:
    from nn_speedups.optimizations import training

    key = (case.spec.name, case.activation, case.batch_size, settings.device, settings.train_image_size)
    if key not in _TRAINING:
        _TRAINING.clear()
        release_memory()
        size = image_size_of(case.spec, settings.train_image_size)
        model = build_model(case.spec, size, activation=case.activation, weights=settings.weights)
        model = model.to(settings.device)
        images = case.spec.example_inputs(case.batch_size, size, settings.device)[0]
        labels = torch.randint(0, case.spec.num_classes, (case.batch_size,), generator=torch.Generator().manual_seed(0))
        inputs = (images, labels.to(settings.device))
        step = training.apply(model, inputs, training.TrainStepConfig(device=settings.device))
        try:
            losses = [step(*inputs).item()]
        except Exception as error:  # noqa: BLE001 - a user's model at --image-size: its own error, in one line
            refusal = size_refusal(case.spec, size, error)
            if refusal is None:
                raise
            raise refusal from None
        losses += [step(*inputs).item() for _ in range(TRAINING_CHECK_STEPS - 1)]
        _TRAINING[key] = TrainingBaseline(model, inputs, losses, count_parameters(model))
    return _TRAINING[key]


def run_training_case(
    case: Case, settings: Settings, run: Callable | None = None, trace: Callable | None = None
) -> dict:
    """Check a training variant (loss goes down, ends near eager fp32's), then time its steps (and trace a few more,
    untimed, when `trace` is given)."""
    from nn_speedups.optimizations.training import saved_activation_bytes

    meter = energy.meter(case.device)
    if not case.spec.num_classes:
        raise ValueError(f"{case.spec.name} is not a classifier: the training benches train image classifiers")
    base = training_baseline(case, settings)
    variant = case.variant
    dtype = variant.torch_dtype(case.device)
    size = image_size_of(case.spec, settings.train_image_size)
    ctx = VariantContext(case.device, dtype, case.spec, size, settings.data)
    sync = timing.synchronizer(case.device)
    try:
        with metrics.HostPeak() as host, metrics.DevicePeak(case.device) as device_peak:
            start = time.perf_counter()
            runner = variant.apply(base.model, base.inputs, ctx)
            inputs = runner.prepare(base.inputs)
            losses = [runner(*inputs).item()]  # the first step compiles, where compiling is asked for
            first_step_s = time.perf_counter() - start
            runner.verify()
            losses += [runner(*inputs).item() for _ in range(TRAINING_CHECK_STEPS - 1)]
            check = check_training(losses, base.losses, variant.check, label=case.id)
            summary = measure_rounds(lambda: runner(*inputs), sync, settings.profile, run, meter)
    except torch.OutOfMemoryError as error:
        raise out_of_memory(case, error) from None
    if variant.name == "vanilla":
        base.eager = summary
    if base.eager is None:
        from nn_speedups.optimizations import training

        vanilla = training.apply(base.model, base.inputs, training.TrainStepConfig(device=settings.device))
        base.eager = measure_rounds(lambda: vanilla(*base.inputs), sync, settings.profile)
    saved = None
    if not runner.info.get("graphs") and runner.model is not None:
        saved = saved_activation_bytes(runner.model, inputs[:1]) / metrics.MB
    images_per_s = timing.samples_per_s(case.batch_size, summary.median_ms)
    epoch_s = TINYIMAGENET_TRAIN_IMAGES / images_per_s
    data = data_pipeline_fields(settings.data, settings.train_image_size, case.batch_size, settings.device)
    if "data_images_per_s" in data:
        data_epoch_s = TINYIMAGENET_TRAIN_IMAGES / data["data_images_per_s"]
        overlapped = data["data_workers"] > 0  # workers load while the device computes
        with_data = max(epoch_s, data_epoch_s) if overlapped else epoch_s + data_epoch_s
        data = {**data, "data_epoch_s_projected": data_epoch_s, "epoch_s_projected_with_data": with_data}
    record = {
        **case_fields(case, settings.profile.name),
        "image_size": size,
        **timing_fields(summary),
        "samples_per_s": images_per_s,
        "images_per_s": images_per_s,
        "eager_median_ms": base.eager.median_ms,
        "speedup_vs_eager": timing.speedup(base.eager.median_ms, summary.median_ms),
        "epoch_s_projected": epoch_s,
        **data,
        "peak_device_mb": device_peak.peak_mb,
        "peak_host_mb": host.peak_mb,
        "saved_activation_mb": saved,
        "params": base.params,
        "compile_s": max(0.0, first_step_s - summary.median_ms / 1e3),
        "threads": torch.get_num_threads(),
        **check,
        **{f"info_{k}": v for k, v in runner.info.items()},
        **meter.fields(summary.rounds * case.batch_size),
    }
    if trace is not None:
        record.update(trace(lambda: runner(*inputs), sync, case.device, record, runner, inputs))
    return record
