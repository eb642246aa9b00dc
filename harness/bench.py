"""The measurement protocol for one benchmark case: build, apply, check against eager, then time.

Used by every bench file through the plugin's fixtures; it never imports pytest. A failed check raises before any
timing, so a wrong variant records no time.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from harness import energy, metrics, timing
from harness.axes import Profile
from harness.correctness import CHECKS, TRAINING_CHECK_STEPS, check_accuracy, check_training
from harness.variant import Variant, VariantContext
from models.registry import ModelSpec, build_model, count_parameters
from optimizations.base import engine_message, engine_of


class MeasurementError(AssertionError):
    """A case that could not be measured, with the numbers that say why (e.g. CUDA out of memory)."""


@dataclass(frozen=True)
class Case:
    spec: ModelSpec
    batch_size: int
    variant: Variant
    device: str
    activation: str | None = None  # None: the model's own activation
    family: str = "inference"  # the bench file's family: test_<family>.py

    @property
    def id(self) -> str:
        act = f"-{self.activation}" if self.activation else ""
        return f"{self.spec.name}{act}-bs{self.batch_size}-{self.variant.label(self.device)}"

    @property
    def group(self) -> str:
        act = f"-{self.activation}" if self.activation else ""
        return f"{self.family}/{self.spec.name}{act}-bs{self.batch_size}"


@dataclass
class Baseline:
    """Eager fp32 for one (model, activation, batch): the model, its inputs, its output, its eager timing."""

    model: torch.nn.Module
    inputs: tuple
    reference: object
    params: int
    gflops: float
    weights: str  # "random", or the file the weights came from
    trained: bool  # weights trained on the data source's labels: accuracy columns for every variant
    inputs_from: str = "random"  # what the checks and timings run on
    eager: timing.Summary | None = None
    compiled: timing.Summary | None = None  # torch.compile of the same model, for speedup_vs_compiled


@dataclass
class Settings:
    device: str
    profile: Profile
    image_size: int
    weights: str | None = None
    data: str = "synthetic"  # where calibration and evaluation images come from (harness.data sources)
    eval_samples: int = 256
    train_image_size: int = 224  # the training benches' input size
    world_sizes: tuple[int, ...] = (1, 2)  # the distributed bench's torchrun world sizes
    dist_timeout_s: float = 600.0  # a whole torchrun job of the distributed bench, startup included


def case_fields(case: Case, profile: str) -> dict:
    """What a record says of the case itself, the same for every family."""
    return {
        "family": case.family,
        "model": case.spec.name,
        "activation": case.activation,
        "variant": case.variant.name,
        "device": case.device,
        "dtype": case.variant.dtype_name(case.device),
        "batch_size": case.batch_size,
        "profile": profile,
    }


def timing_fields(summary: timing.Summary) -> dict:
    return {
        "rounds": summary.rounds,
        "median_ms": summary.median_ms,
        "mean_ms": summary.mean_ms,
        "stdev_ms": summary.stdev_ms,
        "min_ms": summary.min_ms,
        "p90_ms": summary.p90_ms,
        "p99_ms": summary.p99_ms,
    }


def measure_rounds(
    fn: Callable[[], object],
    sync: Callable[[], None],
    profile: Profile,
    run: Callable | None = None,
    meter=None,
) -> timing.Summary:
    """Warm up, choose the number of rounds from the budget, then time them (through `run` when given).

    `run(target, rounds)` lets pytest-benchmark drive the same rounds; without it they are timed here.
    `meter` (a harness.energy meter) is entered around the timed rounds only, not the warm-up.
    """
    timer = timing.RoundTimer(fn, sync)
    for _ in range(profile.warmup_rounds):
        timer()
    one_call = min(timer.times) if timer.times else 0.0
    timer.times.clear()
    rounds = timing.choose_rounds(one_call, profile.timing_budget_s, profile.min_rounds, profile.max_rounds)
    with meter if meter is not None else contextlib.nullcontext():
        if run is None:
            for _ in range(rounds):
                timer()
        else:
            run(timer, rounds)
    return timing.summarize(timer.times)


@dataclass
class BaselineCache:
    """Keeps the eager baseline of the (model, activation, batch) in use; building the next one drops the last, so
    at most one model's baseline sits in memory."""

    settings: Settings
    _key: tuple | None = None
    _value: Baseline | None = field(default=None, repr=False)

    def get(self, case: Case) -> Baseline:
        key = (case.spec.name, case.activation, case.batch_size)
        if key != self._key:
            self._key, self._value = None, None
            release_memory()
            self._value = self._build(case)
            self._key = key
        return self._value

    def _build(self, case: Case) -> Baseline:
        s = self.settings
        weights = s.weights
        if weights is None and case.spec.name in s.profile.accuracy_models and case.activation is None:
            from harness.accuracy import trained_checkpoint

            weights = str(trained_checkpoint(case.spec.name, s.image_size, s.device, s.data))
        size = image_size_of(case.spec, s.image_size)
        model = build_model(case.spec, size, activation=case.activation, weights=weights).to(s.device)
        trained = weights not in (None, "", "random", "pretrained")
        inputs, inputs_from = case.spec.example_inputs(case.batch_size, size, s.device), "random"
        if trained and "vision" in case.spec.tags:
            inputs, inputs_from = data_inputs(s, case.batch_size, size), f"evaluation images of {s.data}"
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with torch.inference_mode(), counter:
            try:
                reference = model(*inputs)
            except Exception as error:  # noqa: BLE001 - a user's model at --image-size: its own error, in one line
                refusal = size_refusal(case.spec, size, error)
                if refusal is None:
                    raise
                raise refusal from None
        return Baseline(
            model=model,
            inputs=inputs,
            reference=reference,
            params=count_parameters(model),
            gflops=None if "onnx-file" in case.spec.tags else counter.get_total_flops() / 1e9,  # ORT: torch sees 0
            weights=weights or "random",
            trained=trained,
            inputs_from=inputs_from,
        )

    def eager_summary(self, case: Case) -> timing.Summary:
        """Eager's timing for this case's group: the eager test's own when it ran, else measured here once."""
        base = self.get(case)
        if base.eager is None:
            with torch.inference_mode():
                base.eager = measure_rounds(
                    lambda: base.model(*base.inputs), timing.synchronizer(self.settings.device), self.settings.profile
                )
        return base.eager

    def compiled_summary(self, case: Case) -> timing.Summary:
        """The same model compiled (fp32, Inductor default), timed once per group: the `compile` row's own timing
        when it ran, else measured here (its compilation outside any timing)."""
        base = self.get(case)
        if base.compiled is None:
            from harness.variant import compile_runner

            ctx = VariantContext(self.settings.device, torch.float32, case.spec, self.settings.image_size)
            with torch.inference_mode():
                runner = compile_runner(base.model, base.inputs, ctx)
                runner(*base.inputs)
                base.compiled = measure_rounds(
                    lambda: runner(*base.inputs), timing.synchronizer(self.settings.device), self.settings.profile
                )
        return base.compiled


def image_size_of(spec: ModelSpec, image_size: int) -> int:
    """The input size a model runs at: its own when its spec fixes one (a user's model: its example's size, or the
    --image-size asked for, to which the plugin resized its example images: models.user.at_image_size), else the
    run's."""
    return spec.image_size or image_size


def size_refusal(spec: ModelSpec, size: int, error: BaseException) -> MeasurementError | None:
    """The one-line failure of a user's model that --image-size resized and whose forward then raised (None for any
    other model: its error stands as it is)."""
    from models.user import cause, resized_from

    own = resized_from(spec)
    if own is None:
        return None
    return MeasurementError(
        f"{spec.name} does not take {size} x {size} inputs (its example is {own[0]}x{own[1]}): drop --image-size or "
        f"make the model take other sizes (e.g. adaptive pooling before its head); {cause(error, 200)}"
    )


def data_inputs(settings: Settings, batch_size: int, image_size: int | None = None) -> tuple[torch.Tensor]:
    """A batch of the data source's evaluation images: what a model trained on that data is checked on. On random
    noise its activations leave the range it was trained (and INT8-calibrated) for, so every check would judge
    out-of-distribution outputs: trained resnet50's INT8 logits had 7 dB SQNR on noise and 22 dB on these images."""
    from harness.accuracy import eval_set

    images, _ = eval_set(settings.data, image_size or settings.image_size, settings.eval_samples)
    return (images[torch.arange(batch_size) % len(images)].to(settings.device),)


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def run_case(case: Case, baselines: BaselineCache, run: Callable | None = None, trace: Callable | None = None) -> dict:
    """Apply `case.variant`, check it against eager, time it; return the extra_info record.

    `trace` (harness.trace.Tracer.trace with the case's name bound) runs after everything else, untimed, on the
    same runner. An engine's own exception (ONNX Runtime, TensorRT, OpenVINO), or inputs the model cannot be given,
    end the case with a MeasurementError of one line: the engine's message cut to what matters and, where the
    model can tell (an ONNX file), the input that most likely caused it."""
    from models.user import UserModelError

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
        "model_size_mb": None if model_size is None else model_size / metrics.MB,
        "threads": torch.get_num_threads(),
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


CALIBRATION_IMAGES, CALIBRATION_BATCH = 64, 8
CALIBRATION_SEED = 1000


def calibration_feeds(ctx: VariantContext) -> list[dict]:
    """INT8 calibration batches ({input name: float32 array}) from the data source's training split at the run's
    image size: never the images that accuracy is measured on. For a text model, or any model without one image input
    (a user's): batches of its example_inputs drawn with a seed (CALIBRATION_SEED) that neither the benches' inputs
    (seed 0) nor their checks use. A model with a static batch is calibrated at that batch."""
    size = ctx.spec.batch_sizes[0] if ctx.spec.batch_sizes else CALIBRATION_BATCH
    if "nlp" in ctx.spec.tags or "vision" not in ctx.spec.tags:
        batches = [
            ctx.spec.example_inputs(size, ctx.image_size, "cpu", seed=CALIBRATION_SEED + i)
            for i in range(max(1, CALIBRATION_IMAGES // size))
        ]
        return [{n: t.numpy() for n, t in zip(ctx.spec.input_names, batch, strict=True)} for batch in batches]
    from harness.data import build_datasets

    train = build_datasets(ctx.data, image_size=ctx.image_size, train_samples=CALIBRATION_IMAGES).train
    if train is None:
        raise ValueError(
            f"--data {ctx.data}: INT8 calibration needs a source with a training split "
            "(synthetic or tinyimagenet:PATH); imagenet-val is evaluation-only"
        )
    picked = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:CALIBRATION_IMAGES]
    images = torch.stack([train[int(i)][0] for i in picked]).numpy()
    name = ctx.spec.input_names[0]
    return [{name: images[i : i + size]} for i in range(0, len(images) - size + 1, size)]


def accuracy_fields(runner, base: Baseline, case: Case, settings: Settings) -> dict:
    """top-1/top-5 and agreement with eager on the evaluation images, for image classifiers: for every variant when
    the weights are trained (a checkpoint, --weights, or the quick profile's trained model), else for lossy variants
    only (agreement is their correctness criterion; distinct_top1 says whether random weights make it trivial)."""
    if not case.spec.num_classes or "vision" not in case.spec.tags:
        return {}
    if not (base.trained or case.variant.check == "lossy"):
        return {}
    from harness.accuracy import eval_set, evaluate

    images, labels = eval_set(settings.data, image_size_of(case.spec, settings.image_size), settings.eval_samples)
    fields = evaluate(runner, base.model, case.batch_size, case.device, images, labels, trained=base.trained)
    return {**fields, "eval_data": settings.data, "weights": base.weights}


def out_of_memory(case: Case, error: torch.OutOfMemoryError) -> MeasurementError:
    """The failure of a case that ran out of CUDA memory, with the allocator's numbers; memory is released so the
    run goes on with the next case."""
    numbers = cuda_memory_numbers()
    release_memory()
    return MeasurementError(f"{case.id}: CUDA out of memory ({numbers}): {str(error).splitlines()[0]}")


def cuda_memory_numbers() -> str:
    if not torch.cuda.is_available():
        return "no CUDA"
    free, total = torch.cuda.mem_get_info()
    return (
        f"peak allocated {torch.cuda.max_memory_allocated() / metrics.MB:.0f} MB, "
        f"reserved {torch.cuda.memory_reserved() / metrics.MB:.0f} MB, "
        f"free {free / metrics.MB:.0f} of {total / metrics.MB:.0f} MB"
    )


# ---------------------------------------------------------------------------------------------------- training

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
    split through harness.data's loader and training transforms (decode, resize, crop, flip, normalize), as
    harness.train feeds them. Worker processes: none on a CPU (they would take the cores the step runs on), up to 8
    on CUDA. `epoch_s_projected_with_data` adds the data time to compute without workers, and takes the larger of
    the two with workers (they load while the GPU computes). Cached per process by (data, size, batch, device)."""
    import os

    from harness.data import build_datasets, make_loader

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
    from optimizations import training

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
    from optimizations.training import saved_activation_bytes

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
        from optimizations import training

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
