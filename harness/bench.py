"""The measurement protocol for one benchmark case: build, apply, check against eager, then time.

Used by every bench file through the plugin's fixtures; it never imports pytest. A failed check raises before any
timing, so a wrong variant records no time.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from harness import metrics, timing
from harness.axes import Profile
from harness.correctness import CHECKS
from harness.variant import Variant, VariantContext
from models.registry import ModelSpec, build_model, count_parameters


class MeasurementError(AssertionError):
    """A case that could not be measured, with the numbers that say why (e.g. CUDA out of memory)."""


@dataclass(frozen=True)
class Case:
    spec: ModelSpec
    batch_size: int
    variant: Variant
    device: str
    activation: str | None = None  # None: the model's own activation

    @property
    def id(self) -> str:
        act = f"-{self.activation}" if self.activation else ""
        return f"{self.spec.name}{act}-bs{self.batch_size}-{self.variant.label(self.device)}"

    @property
    def group(self) -> str:
        act = f"-{self.activation}" if self.activation else ""
        return f"{self.spec.name}{act}-bs{self.batch_size}"


@dataclass
class Baseline:
    """Eager fp32 for one (model, activation, batch): the model, its inputs, its output, its eager timing."""

    model: torch.nn.Module
    inputs: tuple
    reference: object
    params: int
    gflops: float
    eager: timing.Summary | None = None


@dataclass
class Settings:
    device: str
    profile: Profile
    image_size: int
    weights: str | None = None


def measure_rounds(
    fn: Callable[[], object], sync: Callable[[], None], profile: Profile, run: Callable | None = None
) -> timing.Summary:
    """Warm up, choose the number of rounds from the budget, then time them (through `run` when given).

    `run(target, rounds)` lets pytest-benchmark drive the same rounds; without it they are timed here.
    """
    timer = timing.RoundTimer(fn, sync)
    for _ in range(profile.warmup_rounds):
        timer()
    one_call = min(timer.times) if timer.times else 0.0
    timer.times.clear()
    rounds = timing.choose_rounds(one_call, profile.timing_budget_s, profile.min_rounds, profile.max_rounds)
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
        model = build_model(case.spec, s.image_size, activation=case.activation, weights=s.weights).to(s.device)
        inputs = case.spec.example_inputs(case.batch_size, s.image_size, s.device)
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with torch.inference_mode(), counter:
            reference = model(*inputs)
        return Baseline(
            model=model,
            inputs=inputs,
            reference=reference,
            params=count_parameters(model),
            gflops=counter.get_total_flops() / 1e9,
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


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def run_case(case: Case, baselines: BaselineCache, run: Callable | None = None) -> dict:
    """Apply `case.variant`, check it against eager, time it; return the extra_info record."""
    settings = baselines.settings
    base = baselines.get(case)
    variant = case.variant
    dtype = variant.torch_dtype(case.device)
    ctx = VariantContext(device=case.device, dtype=dtype, spec=case.spec, image_size=settings.image_size)
    sync = timing.synchronizer(case.device)
    try:
        with metrics.HostPeak() as host, metrics.DevicePeak(case.device) as device_peak, torch.inference_mode():
            start = time.perf_counter()
            runner = variant.apply(base.model, base.inputs, ctx)
            inputs = runner.prepare(base.inputs)
            out = runner(*inputs)
            sync()
            compile_s = time.perf_counter() - start
            runner.verify()
            check = CHECKS[variant.check](out, base.reference, dtype, label=case.id)
            del out
            summary = measure_rounds(lambda: runner(*inputs), sync, settings.profile, run)
    except torch.OutOfMemoryError as error:
        numbers = cuda_memory_numbers()
        release_memory()
        raise MeasurementError(f"{case.id}: CUDA out of memory ({numbers}): {str(error).splitlines()[0]}") from None
    if variant.name == "eager":
        base.eager = summary
    eager = baselines.eager_summary(case)
    model_size = (
        metrics.files_bytes(*runner.artifact_files)
        if runner.artifact_files
        else (metrics.state_dict_bytes(runner.model) if runner.model is not None else None)
    )
    record = {
        "model": case.spec.name,
        "activation": case.activation,
        "variant": variant.name,
        "device": case.device,
        "dtype": variant.dtype_name(case.device),
        "batch_size": case.batch_size,
        "image_size": settings.image_size if "vision" in case.spec.tags else None,
        "profile": settings.profile.name,
        "rounds": summary.rounds,
        "median_ms": summary.median_ms,
        "mean_ms": summary.mean_ms,
        "stdev_ms": summary.stdev_ms,
        "min_ms": summary.min_ms,
        "p90_ms": summary.p90_ms,
        "p99_ms": summary.p99_ms,
        "samples_per_s": timing.samples_per_s(case.batch_size, summary.median_ms),
        "eager_median_ms": eager.median_ms,
        "speedup_vs_eager": timing.speedup(eager.median_ms, summary.median_ms),
        "peak_device_mb": device_peak.peak_mb,
        "peak_host_mb": host.peak_mb,
        "params": base.params,
        "gflops": base.gflops,
        "compile_s": compile_s,
        "model_size_mb": None if model_size is None else model_size / metrics.MB,
        "threads": torch.get_num_threads(),
        **check.as_extra_info(),
        **{f"info_{k}": v for k, v in runner.info.items()},
    }
    return record


def cuda_memory_numbers() -> str:
    if not torch.cuda.is_available():
        return "no CUDA"
    free, total = torch.cuda.mem_get_info()
    return (
        f"peak allocated {torch.cuda.max_memory_allocated() / metrics.MB:.0f} MB, "
        f"reserved {torch.cuda.memory_reserved() / metrics.MB:.0f} MB, "
        f"free {free / metrics.MB:.0f} of {total / metrics.MB:.0f} MB"
    )
