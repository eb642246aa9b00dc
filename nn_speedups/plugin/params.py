"""The matrix: the closed marker set, the cases' parametrization, and why a case skips (collection and setup)."""

from __future__ import annotations

import pytest

from nn_speedups.core import capabilities
from nn_speedups.measure.protocol import Case, Settings
from nn_speedups.plugin.keys import SETTINGS, VARIANT_NAMES
from nn_speedups.plugin.options import _csv, _user_named

MARKERS = {
    "gpu": "needs a CUDA device; skipped on a CPU with the reason",
    "triton": "needs triton with a CUDA device, or TRITON_INTERPRET=1 on a CPU",
    "ort": "needs onnxruntime",
    "ort_cuda": "needs onnxruntime's CUDAExecutionProvider and a CUDA device",
    "ort_trt": "needs onnxruntime's TensorrtExecutionProvider and a CUDA device",
    "trt": "needs tensorrt (pip install nn-speedups[trt])",
    "slow": "long-running; runs in --profile full",
    "torchrun": "needs torch.distributed and torchrun (the distributed bench); skipped with the reason",
    "torchao": "needs torchao (PyTorch INT8, 2:4 sparsity)",
    "pruning": "needs torch-pruning (structured channel pruning)",
    "sm80": "needs a CUDA GPU of compute capability >= 8.0",
    "cpu": "a CPU-only path; skipped with --device cuda",
}


def register_markers(config: pytest.Config) -> None:
    """The suite's closed marker set (--strict-markers), registered for this repository and for a project that runs
    the installed benches (`pytest --pyargs nn_speedups.benches`) from its own ini (pytest_configure calls it)."""
    known = {line.split(":")[0].strip() for line in config.getini("markers")}
    for name, text in MARKERS.items():
        if name not in known:
            config.addinivalue_line("markers", f"{name}: {text}")


def _skip_reason(
    case: Case, settings: Settings, training: bool = False, function: str = "", named: tuple[str, ...] = ()
) -> str | None:
    """Why `case` does not run here, or None. `function` is the bench test's name, `named` the --variants given."""
    variant, profile = case.variant, settings.profile
    if "gpu" in variant.marks and settings.device == "cpu":
        return f"{variant.name} is GPU-only: " + (
            "run with --device cuda" if capabilities.has_cuda() else "needs a CUDA device (this machine has none)"
        )
    if profile.gpu_paths_only and settings.device == "cpu":
        return f"the smoke profile runs {variant.name} only as the baseline of the GPU-only variants (needs CUDA)"
    if "cpu" in variant.marks and settings.device != "cpu":
        return f"{variant.name} is a CPU path (it lowers to oneDNN through X86InductorQuantizer): run with --device cpu"
    reason = variant.unsuitable(case.spec) or _spec_reason(case, training)
    if reason:
        return reason
    if variant.compiles and profile.compile_models is not None and case.spec.name not in profile.compile_models:
        return (
            f"compiled variants of {case.spec.name} are left out of the {profile.name} profile to keep it short; "
            f"run with --profile full or --models {case.spec.name}"
        )
    if training and variant.compiles and case.activation and not profile.compile_training_activations:
        return (
            f"compiling a training step takes minutes on a CPU: compiled training with {case.activation} runs in "
            "--profile full"
        )
    if "slow" in variant.marks and not profile.run_slow:
        return f"{variant.name} is slow: it runs in --profile full"
    keys = (function, case.family, f"{case.family}/{case.spec.name}")
    left_out = tuple(name for key in keys for name in profile.left_out.get(key, ()))
    if "*" in left_out:
        return f"{function} is left out of the {profile.name} profile to keep it short; --profile full runs it"
    if variant.name in left_out and variant.name not in named:
        return (
            f"{variant.name} is left out of the {profile.name} profile to keep it short; --profile full or "
            f"--variants {variant.name} runs it"
        )
    if variant.trained_only and not _has_trained_weights(case, settings):
        return (
            f"{variant.name} is judged by top-1 on labelled images and needs trained weights: {case.spec.name} has "
            f"none here (pass --checkpoint PATH, or run a model the {profile.name} profile trains: "
            f"{', '.join(profile.accuracy_models)})"
        )
    return None


def _spec_reason(case: Case, training: bool) -> str | None:
    """Why the case's model cannot take this matrix's axes (a user's model may lack what a built-in one has)."""
    spec = case.spec
    if training and not (spec.num_classes and "vision" in spec.tags):
        return (
            f"the training benches train image classifiers; {spec.name} is not one "
            "(ModelSpec num_classes and tag vision: one [B, 3, H, H] float input)"
        )
    if case.activation and "activation-slot" not in spec.tags:
        return f"{spec.name} has no activation slot to swap {case.activation} into (ModelSpec tag activation-slot)"
    if spec.batch_sizes is not None and case.batch_size not in spec.batch_sizes:
        return f"{spec.name} runs batch {', '.join(map(str, spec.batch_sizes))} only (a static batch dim)"
    return None


def _has_trained_weights(case: Case, settings: Settings) -> bool:
    """Whether the case's model gets weights trained on the data's labels (the accuracy columns' condition)."""
    if not case.spec.num_classes or "vision" not in case.spec.tags or case.activation:
        return False
    if settings.weights is None:
        return case.spec.name in settings.profile.accuracy_models
    return settings.weights not in ("", "random", "pretrained")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    spec_matrix = getattr(metafunc.function, "nn_matrix", None)
    if spec_matrix is None or "case" not in metafunc.fixturenames:
        return
    from nn_speedups.models import get_spec

    settings = metafunc.config.stash[SETTINGS]
    family = metafunc.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    metafunc.config.stash[VARIANT_NAMES].update(v.name for v in spec_matrix.variants)
    # a user's own models run in every matrix; a matrix's list of models names the built-in ones it runs
    models = [
        m
        for m in settings.profile.models
        if spec_matrix.models is None or m in spec_matrix.models or "user" in get_spec(m).tags
    ]
    family_models = settings.profile.family_models.get(family)
    config = metafunc.config
    if config.getoption("--models") or config.getoption("--checkpoint") or _user_named(config):
        family_models = None  # models named on the command line run in every bench
    batch_sizes = settings.profile.train_batch_sizes if spec_matrix.training else settings.profile.batch_sizes
    if spec_matrix.training and metafunc.config.getoption("--batch-sizes"):
        batch_sizes = settings.profile.batch_sizes  # an explicit --batch-sizes applies to every bench
    explicit_batches = metafunc.config.getoption("--batch-sizes") is not None
    named = tuple(_csv(metafunc.config.getoption("--variants")) or ())
    params = []
    for model in models:
        spec = get_spec(model)
        model_batches = batch_sizes
        if not explicit_batches:
            sizes = settings.profile.family_batch_sizes  # keyed by bench function or family
            model_batches = sizes.get(metafunc.function.__name__, sizes.get(family, {})).get(model, batch_sizes)
        if settings.profile.gpu_paths_only and family_models is not None and model not in family_models:
            continue
        for activation in spec_matrix.activations:
            for batch in model_batches:
                for variant in smoke_variants(spec_matrix.variants, settings):
                    case = Case(spec, batch, variant, settings.device, activation, family)
                    marks = [getattr(pytest.mark, m) for m in variant.marks]
                    reason = _skip_reason(case, settings, spec_matrix.training, metafunc.function.__name__, named)
                    if family_models is not None and model not in family_models:
                        reason = (
                            f"{family} runs {', '.join(family_models)} in the {settings.profile.name} profile; "
                            f"--models {model} or --profile full runs {model}"
                        )
                    if reason:
                        marks.append(pytest.mark.skip(reason=reason))
                    params.append(pytest.param(case, id=case.id, marks=marks))
    if not params:
        wanted = ", ".join(spec_matrix.models or settings.profile.models)
        reason = f"this matrix runs on {wanted}; none of them is selected (--models)"
        if settings.profile.gpu_paths_only:
            reason = "the smoke profile runs GPU-only variants, and this matrix has none"
        params = [pytest.param(None, id="no-model", marks=pytest.mark.skip(reason=reason))]
    metafunc.parametrize("case", params)
    if "scaling" in metafunc.fixturenames:
        _parametrize_scaling(metafunc, settings)


def _parametrize_scaling(metafunc: pytest.Metafunc, settings: Settings) -> None:
    """The distributed bench's world-size axis: ws1 (the reference), and per larger world size its weak- and
    strong-scaling points; world sizes this machine cannot hold skip with the reason."""
    from nn_speedups.distributed import world_size_problem
    from nn_speedups.distributed.bench import scaling_points

    params = []
    for point in scaling_points(settings.world_sizes):
        problem = world_size_problem(point.world_size, settings.device)
        marks = [pytest.mark.skip(reason=problem)] if problem else []
        params.append(pytest.param(point, id=point.id, marks=marks))
    metafunc.parametrize("scaling", params)


BASELINES = ("eager", "vanilla")


def smoke_variants(variants, settings: Settings) -> list:
    """All of `variants`, or in the smoke profile only the GPU-only ones and, beside them, the baseline."""
    if not settings.profile.gpu_paths_only:
        return list(variants)
    gpu = [v for v in variants if "gpu" in v.marks]
    return [v for v in variants if v in gpu or (gpu and v.name in BASELINES)]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.stash[SETTINGS].profile.gpu_paths_only:  # smoke: matrices with no GPU-only variant are not listed
        empty = [i for i in items if hasattr(i, "callspec") and i.callspec.params.get("case", 0) is None]
        if empty:
            config.hook.pytest_deselected(items=empty)
            items[:] = [i for i in items if i not in empty]
    if _user_named(config) and not config.getoption("--models"):
        # a run about the user's own models: benches that time no model (the kernel level) say so and skip
        reason = "times kernels, not a model: run without --model/--onnx, or add --models for the built-in ones"
        for item in items:
            params = item.callspec.params if hasattr(item, "callspec") else {}
            if "measure_fn" in getattr(item, "fixturenames", ()) and "case" not in params:
                item.add_marker(pytest.mark.skip(reason=reason))
    wanted = _csv(config.getoption("--variants"))
    if wanted:
        known = config.stash[VARIANT_NAMES]
        unknown = [v for v in wanted if v not in known]
        if unknown:
            raise pytest.UsageError(f"--variants: unknown {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        keep, drop = [], []
        for item in items:
            params = item.callspec.params if hasattr(item, "callspec") else {}
            name = params["case"].variant.name if params.get("case") else params.get("variant")
            (keep if name is None or name in wanted else drop).append(item)
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers():
        if marker.name in capabilities.REQUIREMENTS:
            reason = capabilities.missing_requirement(marker.name)
            if reason:
                pytest.skip(reason)
