"""The eager fp32 baseline of a (model, activation, batch): its model, inputs and reference output, its eager and
compiled timings, cached one model at a time. Re-exported by nn_speedups.measure.protocol."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from nn_speedups.matrix.variant import VariantContext
from nn_speedups.measure import timing
from nn_speedups.measure.cases import Case, Settings, image_size_of
from nn_speedups.measure.failures import release_memory, size_refusal
from nn_speedups.measure.rounds import measure_rounds
from nn_speedups.models.registry import build_model, count_parameters


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
    load_s: float | None = None  # building the model and loading its weights (a serving process pays it at start)
    eager_repeat: dict = field(default_factory=dict)  # eager run twice on the same inputs (repeat_fields)
    eager: timing.Summary | None = None
    compiled: timing.Summary | None = None  # torch.compile of the same model, for speedup_vs_compiled


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
            from nn_speedups.measure.accuracy import trained_checkpoint

            weights = str(trained_checkpoint(case.spec.name, s.image_size, s.device, s.data))
        size = image_size_of(case.spec, s.image_size)
        start = time.perf_counter()
        model = build_model(case.spec, size, activation=case.activation, weights=weights).to(s.device)
        load_s = time.perf_counter() - start
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
        with torch.inference_mode():
            repeat = repeat_fields(reference, model(*inputs))
        return Baseline(
            model=model,
            inputs=inputs,
            reference=reference,
            params=count_parameters(model),
            gflops=None if "onnx-file" in case.spec.tags else counter.get_total_flops() / 1e9,  # ORT: torch sees 0
            weights=weights or "random",
            trained=trained,
            inputs_from=inputs_from,
            eager_repeat=repeat,
            load_s=load_s,
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
            from nn_speedups.matrix.variant import compile_runner

            ctx = VariantContext(self.settings.device, torch.float32, case.spec, self.settings.image_size)
            with torch.inference_mode():
                runner = compile_runner(base.model, base.inputs, ctx)
                runner(*base.inputs)
                base.compiled = measure_rounds(
                    lambda: runner(*base.inputs), timing.synchronizer(self.settings.device), self.settings.profile
                )
        return base.compiled


def repeat_fields(first: object, second: object) -> dict:
    """Whether eager gave the same output twice on the same inputs: `eager_deterministic` (bit for bit) and
    `eager_repeat_max_abs` (the largest difference). Reported, never failed: some kernels are nondeterministic
    (atomics on a GPU, thread-count-dependent reductions), and then no variant can be held to an exact match."""
    from nn_speedups.measure.correctness import _tensors

    pairs = list(zip(_tensors(first), _tensors(second), strict=True))
    same = all(torch.equal(a, b) for a, b in pairs)
    worst = max(((a - b).abs().max().item() for a, b in pairs if a.numel()), default=0.0)
    return {"eager_deterministic": same, "eager_repeat_max_abs": worst}


def data_inputs(settings: Settings, batch_size: int, image_size: int | None = None) -> tuple[torch.Tensor]:
    """A batch of the data source's evaluation images: what a model trained on that data is checked on. On random
    noise its activations leave the range it was trained (and INT8-calibrated) for, so every check would judge
    out-of-distribution outputs: trained resnet50's INT8 logits had 7 dB SQNR on noise and 22 dB on these images."""
    from nn_speedups.measure.accuracy import eval_set

    images, _ = eval_set(settings.data, image_size or settings.image_size, settings.eval_samples)
    return (images[torch.arange(batch_size) % len(images)].to(settings.device),)
