"""The pytest glue: options, validation, the matrix parametrization, requirement skips, fixtures, machine info and
the end-of-run report. Loaded from the top-level conftest.py."""

from __future__ import annotations

import datetime
import functools
import time
from pathlib import Path

import pytest

from harness import capabilities, energy, env, timing
from harness.axes import PROFILES, default_profile
from harness.bench import (
    BaselineCache,
    Case,
    MeasurementError,
    Settings,
    case_fields,
    measure_rounds,
    run_case,
    run_training_case,
    timing_fields,
)
from harness.progress import PRIOR_S_PER_CASE, RunProgress, family_of

SETTINGS = pytest.StashKey[Settings]()
RECORDS = pytest.StashKey[list]()
VARIANT_NAMES = pytest.StashKey[set]()
PROGRESS = pytest.StashKey[RunProgress]()
DURATIONS_CACHE = "nn-speedups/durations"
BENCH_FIXTURES = ("measure", "measure_training", "measure_fn", "measure_distributed")
OUTCOMES = pytest.StashKey[dict]()  # {"failed": {node id: message}, "skipped": {node id: reason}}, for harness.gate
STOCK_REGRESSIONS = pytest.StashKey[list]()  # what --benchmark-compare-fail found, printed as a summary
RUN_NAME = pytest.StashKey[str]()
TRACER = pytest.StashKey[object]()  # a harness.trace.Tracer, or None without --traces
INPUT_SIZES = pytest.StashKey[dict]()  # user model name -> what the run header says of its inputs
FAILED_CASES = pytest.StashKey[dict]()  # node id -> the failed case's family, model, variant, batch (the report's)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("nn-speedups")
    group.addoption(
        "--profile",
        choices=sorted(PROFILES),
        default=None,
        help="quick (CPU default): "
        + PROFILES["quick"].summary
        + "; full (CUDA default): "
        + PROFILES["full"].summary
        + "; smoke: "
        + PROFILES["smoke"].summary,
    )
    group.addoption("--device", default=None, help="cpu or cuda (default: cuda when available, else cpu)")
    group.addoption("--models", default=None, help="comma-separated model names (default: the profile's)")
    group.addoption("--batch-sizes", default=None, help="comma-separated batch sizes, e.g. 1,4,8,16,32,64,128,256")
    group.addoption("--variants", default=None, help="comma-separated variant names to run (default: all)")
    group.addoption("--image-size", type=int, default=None, help="input height and width (default: the profile's)")
    group.addoption(
        "--weights",
        default=None,
        help="a state-dict file to load, 'pretrained' (torchvision's, local cache only) or 'random' (also for the "
        "models the quick profile would otherwise train once for its accuracy columns)",
    )
    group.addoption(
        "--data",
        default=None,
        help="images for calibration and accuracy: synthetic (default), tinyimagenet:PATH or imagenet-val:PATH",
    )
    group.addoption(
        "--checkpoint",
        default=None,
        help="a harness.train checkpoint: its weights, and by default its model, data and image size; every "
        "inference variant then reports top-1/top-5 on the data's evaluation images",
    )
    group.addoption("--eval-samples", type=int, default=None, help="evaluation images (default: quick 128, full 1024)")
    group.addoption("--report-dir", default="reports", help="where the end-of-run report is written")
    group.addoption(
        "--model",
        action="append",
        default=None,
        metavar="[NAME=]MODULE:FACTORY",
        help="your own model (repeatable; also accepted inside --models): module.path:factory or file.py:factory, "
        "whose factory() returns (model, example_inputs) or a ModelSpec; or hf:PATH, a local Hugging Face folder",
    )
    group.addoption(
        "--onnx",
        action="append",
        default=None,
        metavar="[NAME=]PATH",
        help="an ONNX file (repeatable), run by the ONNX Runtime and TensorRT benches against ONNX Runtime fp32",
    )
    group.addoption(
        "--onnx-dim",
        action="append",
        default=None,
        metavar="NAME=SIZE",
        help="size of an open (symbolic) input dim of an --onnx graph other than the batch, e.g. sequence=128",
    )
    group.addoption(
        "--onnx-inputs",
        action="append",
        default=None,
        metavar="FILE.npz",
        help="inputs of an --onnx graph by name (np.savez), used as saved or tiled along the batch dim",
    )
    group.addoption(
        "--onnx-input",
        action="append",
        default=None,
        metavar="NAME=VALUE",
        help="a scalar or small constant input of an --onnx graph, e.g. sr=16000 (repeatable)",
    )
    group.addoption("--seq-len", type=int, default=None, help="sequence length of hf: models (default 128)")
    group.addoption(
        "--world-sizes",
        default="1,2",
        help="distributed bench: torchrun world sizes, e.g. 1,2,4,8 (default 1,2; one process per GPU, or per core)",
    )
    group.addoption(
        "--dist-timeout", type=float, default=600.0, help="distributed bench: seconds one torchrun job may take"
    )
    group.addoption(
        "--traces",  # not --trace: pytest's own --trace breaks into pdb at every test
        default=None,
        metavar="all|SUBSTRING",
        help="after each case's timed rounds, profile a few more steps (untimed) of the cases whose test id "
        "contains SUBSTRING (or all): Chrome trace, TensorBoard run and flame chart under REPORT_DIR/<run>/, op "
        "breakdown and kernel counts in extra_info",
    )
    group.addoption(
        "--price-per-hour",
        type=float,
        default=None,
        metavar="USD",
        help="what the machine costs per hour: adds usd_per_million_samples to every row",
    )
    group.addoption(
        "--finetune-steps",
        type=int,
        default=None,
        help="compression: fine-tune steps after pruning and QAT steps (default: quick 60 and 20, full 300 and 300)",
    )


def _csv(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def _settings(config: pytest.Config) -> Settings:
    import torch

    from models import REGISTRY

    checkpoint = _checkpoint_config(config)
    device = config.getoption("--device")
    if device is None:
        device = "cuda" if capabilities.has_cuda() else "cpu"
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise pytest.UsageError(f"--device {device!r}: not a device; valid: cpu, cuda") from None
    if kind not in ("cpu", "cuda"):
        raise pytest.UsageError(f"--device {device!r}: valid: cpu, cuda")
    if kind == "cuda" and not capabilities.has_cuda():
        raise pytest.UsageError(
            f"--device {device} asked for, but this machine has no usable CUDA device "
            "(torch.cuda.is_available() is False); run with --device cpu, or on a machine with an NVIDIA GPU"
        )
    profile = PROFILES[config.getoption("--profile") or default_profile(device)]
    models = _csv(config.getoption("--models")) or ([checkpoint["model"]] if checkpoint.get("model") else None)
    models = _with_user_models(config, models)
    if models is not None:
        unknown = [m for m in models if m not in REGISTRY]
        if unknown:
            raise pytest.UsageError(f"--models: unknown {', '.join(unknown)}; valid: {', '.join(sorted(REGISTRY))}")
    batches = _csv(config.getoption("--batch-sizes"))
    if batches is not None:
        if not all(b.isdigit() and int(b) > 0 for b in batches):
            raise pytest.UsageError(
                f"--batch-sizes {config.getoption('--batch-sizes')!r}: give positive integers, e.g. 1,8,64"
            )
    image_size = config.getoption("--image-size") or checkpoint.get("image_size") or profile.image_size
    if image_size <= 0 or image_size % 32:
        raise pytest.UsageError(f"--image-size {image_size}: give a positive multiple of 32 (e.g. 224)")
    _user_image_sizes(config, models or (), image_size)
    from dataclasses import replace

    profile = replace(
        profile,
        models=tuple(models) if models else profile.models,
        batch_sizes=tuple(int(b) for b in batches) if batches else profile.batch_sizes,
        compile_models=profile.compile_models if models is None else None,
    )
    steps = config.getoption("--finetune-steps")
    if steps is not None:
        if steps < 1:
            raise pytest.UsageError(f"--finetune-steps {steps}: give a positive number of steps")
        profile = replace(profile, finetune_steps=steps, qat_steps=steps)
    data = config.getoption("--data") or checkpoint.get("data") or "synthetic"
    try:
        from harness.data import parse_source

        parse_source(data)
    except ValueError as error:
        raise pytest.UsageError(f"--data {data!r}: {error}") from None
    eval_samples = config.getoption("--eval-samples") or (1024 if profile.name == "full" else 128)
    from harness.distributed.bench import parse_world_sizes

    try:
        world_sizes = parse_world_sizes(config.getoption("--world-sizes"))
    except ValueError as error:
        raise pytest.UsageError(str(error)) from None
    if not config.getoption("--dist-timeout") > 0:
        raise pytest.UsageError(f"--dist-timeout {config.getoption('--dist-timeout')}: give seconds > 0, e.g. 600")
    return Settings(
        device=device,
        profile=profile,
        image_size=image_size,
        weights=config.getoption("--checkpoint") or config.getoption("--weights"),
        data=data,
        eval_samples=eval_samples,
        train_image_size=config.getoption("--image-size") or profile.train_image_size,
        world_sizes=world_sizes,
        dist_timeout_s=config.getoption("--dist-timeout"),
    )


def _with_user_models(config: pytest.Config, models: list[str] | None) -> list[str] | None:
    """`models` with the user's own (module:factory and hf:PATH entries of --models, --model, --onnx) registered as
    specs and named in their place; a bad one is a usage error naming it and the cause."""
    from models.user import UserModelError, load_user_specs, register_user

    entries = [m for m in models or [] if ":" in m] + (config.getoption("--model") or [])
    onnx_files = config.getoption("--onnx") or []
    input_files, input_values = config.getoption("--onnx-inputs") or [], config.getoption("--onnx-input") or []
    if not entries and not onnx_files and not config.getoption("--onnx-dim") and not input_files and not input_values:
        return models
    try:
        dims, seq_len = config.getoption("--onnx-dim") or [], config.getoption("--seq-len")
        specs = load_user_specs(entries, onnx_files, dims, seq_len, input_files, input_values)
        names = iter([register_user(spec).name for spec in specs])
    except UserModelError as error:
        raise pytest.UsageError(str(error)) from None
    named = [next(names) if ":" in m else m for m in models or []]
    return named + list(names)


def _checkpoint_config(config: pytest.Config) -> dict:
    """The training configuration saved in --checkpoint (empty without one)."""
    path = config.getoption("--checkpoint")
    if path is None:
        return {}
    if config.getoption("--weights"):
        raise pytest.UsageError("give --weights or --checkpoint, not both")
    import torch

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise pytest.UsageError(
            f"--checkpoint {path}: no such file (python -m harness.train writes OUT_DIR/last.pt)"
        ) from None
    except Exception as error:  # noqa: BLE001 - torch.load raises many kinds for a file that is not a checkpoint
        raise pytest.UsageError(f"--checkpoint {path}: not a checkpoint torch can load ({error})") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
        raise pytest.UsageError(f"--checkpoint {path}: no 'model' state dict in it (was it written by harness.train?)")
    return saved.get("config") or {}


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


def pytest_configure(config: pytest.Config) -> None:
    # the suite's closed marker set (--strict-markers), registered here for this repository and for a project that
    # runs the installed benches (`pytest --pyargs benches`) from its own ini
    known = {line.split(":")[0].strip() for line in config.getini("markers")}
    for name, text in MARKERS.items():
        if name not in known:
            config.addinivalue_line("markers", f"{name}: {text}")
    config.stash[SETTINGS] = _settings(config)
    config.stash[RECORDS] = []
    config.stash[VARIANT_NAMES] = set()
    config.stash[OUTCOMES] = {"failed": {}, "skipped": {}}
    config.stash[STOCK_REGRESSIONS] = []
    # one name for the run's report and its traces: reports/<run>.md beside reports/<run>/traces/
    settings = config.stash[SETTINGS]
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    config.stash[RUN_NAME] = f"{stamp}-{settings.device}-{settings.profile.name}"
    _refuse_pdb_trace_with_a_filter(config)
    config.stash[TRACER] = _tracer(config)
    price = config.getoption("--price-per-hour")
    if price is not None and not price > 0:
        raise pytest.UsageError(f"--price-per-hour {price}: give the machine's price in USD per hour, e.g. 2.5")


def _refuse_pdb_trace_with_a_filter(config: pytest.Config) -> None:
    """`--trace all` reaches pytest's own --trace (pdb at every test) and makes `all` a path: say what was meant."""
    if not config.getoption("trace", False):
        return
    args = [str(a) for a in config.invocation_params.args]
    after = args[args.index("--trace") + 1] if "--trace" in args[:-1] else None
    if after and not after.startswith("-") and "::" not in after and not Path(after).exists():
        raise pytest.UsageError(
            f"--trace {after}: --trace is pytest's own (break into pdb at every test); "
            f"to profile cases use --traces {after}"
        )


def pytest_unconfigure(config: pytest.Config) -> None:
    tracer = config.stash.get(TRACER, None)
    if tracer is not None:
        tracer.remove_if_empty()


def _tracer(config: pytest.Config):
    selection = config.getoption("--traces")
    if selection is None:
        return None
    from harness.trace import Tracer, TraceSetupError

    try:
        return Tracer.create(config.getoption("--report-dir"), config.stash[RUN_NAME], selection)
    except TraceSetupError as error:
        raise pytest.UsageError(str(error)) from None


def _check_trace_filter(session: pytest.Session) -> None:
    """A --traces filter that matches no collected case is a usage error, before anything runs."""
    tracer = session.config.stash.get(TRACER, None)
    if tracer is None or tracer.selection == "all":
        return
    measured = [i for i in session.items if set(BENCH_FIXTURES) & set(getattr(i, "fixturenames", ()))]
    if not any(tracer.wants(i.nodeid) for i in measured):
        example = measured[0].nodeid.rsplit("/", 1)[-1] if measured else "test_inference[resnet18-bs1-eager-fp32]"
        raise pytest.UsageError(
            f"--traces {tracer.selection!r} matches no collected benchmark case (ids look like {example}; "
            "pytest --collect-only -q lists them); give a substring of one, or --traces all"
        )


def pytest_report_header(config: pytest.Config) -> list[str]:
    s = config.stash[SETTINGS]
    p = s.profile
    return [
        f"nn-speedups: profile {p.name} on {s.device}; image {s.image_size}; batch sizes "
        f"{','.join(map(str, p.batch_sizes))}; models {','.join(p.models)}",
        "nn-speedups inputs: " + "; ".join(_input_size_line(config, m, s.image_size) for m in p.models),
    ]


def _user_image_sizes(config: pytest.Config, models, image_size: int) -> None:
    """An explicit --image-size for the user's models whose example fixes a size: one float NCHW image input is
    resized to it (models.user.at_image_size; the case fails in one line where the model does not take it), other
    inputs stay the model's own and the run header says so."""
    from models import get_spec
    from models.user import at_image_size, is_user, register_user

    sizes = config.stash[INPUT_SIZES] = {}
    if config.getoption("--image-size") is None:
        return
    for name in models:
        spec = get_spec(name)
        if is_user(spec):
            spec, sizes[name] = at_image_size(spec, image_size)
            register_user(spec)


def _input_size_line(config: pytest.Config, name: str, image_size: int) -> str:
    """What a model of the run is fed, for the header: the size actually used, or its own inputs."""
    from models import get_spec
    from models.user import is_user

    note = config.stash.get(INPUT_SIZES, {}).get(name)
    if note:
        return note
    spec = get_spec(name)
    if spec.image_size:
        own = " (its own size)" if is_user(spec) else ""
        return f"{name} {spec.image_size}x{spec.image_size}{own}"
    if "vision" in spec.tags:
        return f"{name} {image_size}x{image_size}"
    return f"{name}: its own inputs" + (" (--image-size does not apply)" if config.getoption("--image-size") else "")


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


def _user_named(config: pytest.Config) -> bool:
    return bool(config.getoption("--model") or config.getoption("--onnx"))


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
    from models import get_spec

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
    from harness.distributed import world_size_problem
    from harness.distributed.bench import scaling_points

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


def pytest_collection_finish(session: pytest.Session) -> None:
    """Check the --traces filter, and plan the per-family progress lines: which bench cases will run, and how long
    they took last time."""
    _check_trace_filter(session)
    cases = {
        item.nodeid: (family_of(item.module.__name__), item.get_closest_marker("skip") is None)
        for item in session.items
        if isinstance(item, pytest.Function) and any(f in item.fixturenames for f in BENCH_FIXTURES)
    }
    if cases:
        cache = getattr(session.config, "cache", None)
        previous = cache.get(DURATIONS_CACHE, {}) if cache is not None else {}
        settings = session.config.stash[SETTINGS]
        prior = PRIOR_S_PER_CASE.get((settings.profile.name, settings.device.split(":")[0]), {})
        previous = {k: v for k, v in previous.items() if k in cases}
        session.config.stash[PROGRESS] = RunProgress(cases, previous=previous, prior=prior)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem):
    """Print a progress line when a family starts (cases to run, time so far, an estimate of what is left)."""
    progress = item.config.stash.get(PROGRESS, None)
    if progress is None or item.nodeid not in progress.cases:
        return (yield)
    line = progress.starting(item.nodeid)
    reporter = item.config.pluginmanager.get_plugin("terminalreporter")
    if line and reporter is not None:
        reporter.ensure_newline()
        reporter.write_line(line, bold=True)
    start = time.perf_counter()
    try:
        return (yield)
    finally:
        progress.finished(item.nodeid, time.perf_counter() - start)


def _keep_durations(session: pytest.Session) -> None:
    """This run's case durations into pytest's cache: the next run's estimate of what is left."""
    progress = session.config.stash.get(PROGRESS, None)
    cache = getattr(session.config, "cache", None)
    if progress is None or cache is None:
        return
    ran = {n: s for n, s in progress.done.items() if progress.cases[n][1]}
    cache.set(DURATIONS_CACHE, {**cache.get(DURATIONS_CACHE, {}), **ran})


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers():
        if marker.name in capabilities.REQUIREMENTS:
            reason = capabilities.missing_requirement(marker.name)
            if reason:
                pytest.skip(reason)


@pytest.fixture(scope="session")
def settings(pytestconfig: pytest.Config) -> Settings:
    return pytestconfig.stash[SETTINGS]


@pytest.fixture(scope="session")
def baselines(settings: Settings) -> BaselineCache:
    return BaselineCache(settings)


@pytest.fixture
def measure(request: pytest.FixtureRequest, benchmark, baselines: BaselineCache):
    """measure(case): check the case's variant against eager, time it with pytest-benchmark, record extra_info."""

    trace = _trace_hook(request)
    return _measurer(request, benchmark, lambda case, drive: run_case(case, baselines, run=drive, trace=trace))


@pytest.fixture
def measure_training(request: pytest.FixtureRequest, benchmark, settings: Settings):
    """measure_training(case): check the training variant's losses against eager fp32, then time its steps."""
    trace = _trace_hook(request)
    return _measurer(request, benchmark, lambda case, drive: run_training_case(case, settings, run=drive, trace=trace))


@pytest.fixture
def measure_fn(request: pytest.FixtureRequest, benchmark, settings: Settings):
    """measure_fn(group, fn, device, record, derive=None): time `fn` (each round synchronized on `device`) with
    pytest-benchmark and keep `record`, the timing fields and `derive(timing fields)` as the test's extra_info."""

    def run(group: str, fn, device: str, record: dict, derive=None) -> dict:
        benchmark.group = group

        def drive(target, rounds):
            benchmark.pedantic(target, rounds=rounds, iterations=1, warmup_rounds=0)

        meter = energy.meter(device)
        sync = timing.synchronizer(device)
        summary = measure_rounds(fn, sync, settings.profile, drive, meter)
        record = {**record, **timing_fields(summary), **meter.fields(summary.rounds * record.get("batch_size", 1))}
        if derive is not None:
            record.update(derive(record))
        trace = _trace_hook(request)
        if trace is not None:
            record.update(trace(fn, sync, device, record))
        _keep(request, benchmark, group, record)
        return record

    return run


@pytest.fixture
def measure_distributed(request: pytest.FixtureRequest, benchmark, settings: Settings):
    """measure_distributed(case, scaling): a torchrun job checks the data-parallel step against one process's, then
    times it; the slowest rank's per-step times become this test's pytest-benchmark rounds."""
    from harness.distributed.bench import Unsupported, run_distributed_case

    def run(case: Case, scaling) -> dict:
        benchmark.group = case.group
        try:
            record, rounds_s = run_distributed_case(case, scaling, settings)
        except Unsupported as reason:
            pytest.skip(str(reason))
        _record_rounds(benchmark, rounds_s)
        _keep(request, benchmark, case.group, record)
        return record

    return run


def _record_rounds(benchmark, rounds_s: list[float]) -> None:
    """Per-round durations measured elsewhere (in torchrun's ranks) into pytest-benchmark's statistics, as if it
    had timed them: what --benchmark-compare, the saved JSON and its tables read. pytest-benchmark 4-5 keep a
    test's rounds in the Stats of the Metadata that `_make_stats` registers with the session."""
    if benchmark.disabled:
        return
    make_stats = getattr(benchmark, "_make_stats", None)
    if make_stats is None:
        import pytest_benchmark

        raise RuntimeError(
            f"pytest-benchmark {pytest_benchmark.__version__} has no BenchmarkFixture._make_stats, which the "
            "distributed bench feeds its rounds through: install pytest-benchmark>=4,<6 (pip install -e .)"
        )
    benchmark._mode = "external rounds"  # the fixture's once-only guard, as pedantic() sets it
    stats = make_stats(1)
    for seconds in rounds_s:
        stats.update(seconds)


def _trace_hook(request: pytest.FixtureRequest):
    """The tracer's trace() with this test's id bound, when --traces selects this test; else None."""
    tracer = request.config.stash.get(TRACER, None)
    if tracer is None or not tracer.wants(request.node.nodeid):
        return None
    return functools.partial(tracer.trace, request.node.nodeid)


def _keep(request: pytest.FixtureRequest, benchmark, group: str, record: dict) -> None:
    price = request.config.getoption("--price-per-hour")
    if price is not None and record.get("median_ms") and record.get("batch_size"):
        record["usd_per_million_samples"] = energy.usd_per_million_samples(
            price, record["batch_size"], record["median_ms"]
        )
    benchmark.extra_info.update(record)
    request.config.stash[RECORDS].append(
        {"name": request.node.name, "fullname": request.node.nodeid, "group": group, "extra_info": record}
    )


def _measurer(request, benchmark, measure_case):
    def run(case: Case) -> dict:
        benchmark.group = case.group

        def drive(target, rounds):
            benchmark.pedantic(target, rounds=rounds, iterations=1, warmup_rounds=0)

        try:
            record = measure_case(case, drive)
        except MeasurementError as error:
            failure = str(error)
        else:
            failure = None
        if failure is not None:  # one line, no traceback through the suite (an engine's failure, OOM)
            pytest.fail(failure, pytrace=False)
        _keep(request, benchmark, case.group, record)
        return record

    return run


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    machine_info.update(env.machine_info())
    settings = config.stash.get(SETTINGS, None)
    if settings is not None:
        machine_info["nn_speedups"] = {
            "profile": settings.profile.name,
            "device": settings.device,
            "image_size": settings.image_size,
        }
        if config.getoption("--traces") is not None:
            machine_info["nn_speedups"]["traces"] = config.getoption("--traces")
        if config.getoption("--price-per-hour") is not None:
            machine_info["nn_speedups"]["price_per_hour_usd"] = config.getoption("--price-per-hour")


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    settings = config.stash.get(SETTINGS, None)
    if settings is not None and settings.profile.gpu_paths_only:
        smoke_summary(terminalreporter)
    records = config.stash.get(RECORDS, [])
    if records or config.stash.get(FAILED_CASES, {}):  # every case failed: the report still says what, and why
        _write_report(terminalreporter, config, records)
    _stock_gate_summary(terminalreporter, config)


def _write_report(terminalreporter, config: pytest.Config, records: list) -> None:
    from harness import report

    run_name = config.stash[RUN_NAME]
    outcomes = config.stash.get(OUTCOMES, {"failed": {}, "skipped": {}})
    cases = dict(config.stash.get(FAILED_CASES, {}))  # the bench cases that failed (not a self-test's failure)
    run = {
        "machine_info": env.machine_info(),
        "benchmarks": records,
        "nn_speedups": {
            "failed": {node: line for node, line in outcomes["failed"].items() if node in cases},
            "skipped": dict(outcomes["skipped"]),
            "failed_cases": cases,
        },
    }
    paths = report.write_report(run, Path(config.getoption("--report-dir")) / run_name)
    terminalreporter.section("nn-speedups report")
    terminalreporter.write(report.render_tables(run))
    terminalreporter.write_line("")
    for path in paths:
        terminalreporter.write_line(f"written: {path}")


def smoke_summary(terminalreporter) -> None:
    """One line per case of the smoke profile: what ran (with its time), what failed and what skipped, and why."""
    lines = []
    for outcome in ("passed", "failed", "error", "skipped"):
        for report in terminalreporter.stats.get(outcome, []):
            if not hasattr(report, "nodeid") or (outcome == "passed" and report.when != "call"):
                continue
            name = report.nodeid.split("::")[-1]
            if outcome == "passed":
                why = f"{report.duration:.1f} s"
            elif outcome == "skipped" and isinstance(report.longrepr, tuple):
                why = report.longrepr[2].removeprefix("Skipped: ")
            else:
                why = str(report.longrepr).strip().splitlines()[-1][:160] if report.longrepr else ""
            lines.append(f"{'ran' if outcome == 'passed' else outcome:8} {name}: {why}")
    terminalreporter.section("nn-speedups smoke: every GPU-only path, what ran and what skipped")
    for line in lines:
        terminalreporter.write_line(line)


# ------------------------------------------------------------------------------------- regression gate glue
# harness.gate reads from a saved run which cases failed or were skipped (a case that fails now is a regression, not
# just "gone") and how to re-run a case in a fresh process (--confirm).

RERUN_OPTIONS = ("--profile", "--device", "--models", "--batch-sizes", "--variants", "--image-size", "--weights",
                 "--data", "--checkpoint", "--eval-samples")  # fmt: skip


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    outcomes = item.config.stash.get(OUTCOMES, None)
    if outcomes is not None and report.failed:
        outcomes["failed"][item.nodeid] = _failure_line(call, report)
        if set(BENCH_FIXTURES) & set(getattr(item, "fixturenames", ())):  # a bench case: the report lists it
            item.config.stash.setdefault(FAILED_CASES, {})[item.nodeid] = _case_fields(item)
    elif outcomes is not None and report.skipped and isinstance(report.longrepr, tuple):
        outcomes["skipped"][item.nodeid] = str(report.longrepr[2]).removeprefix("Skipped: ")[:200]
    return report


def _case_fields(item: pytest.Item) -> dict:
    """What the report's "Failed cases" rows say of a case: the fields a passed case's record starts with
    (harness.bench.case_fields: family, model, activation, variant, dtype, batch...) and the world-size point; a test
    without a case, its family (the bench file) and its parameter id as the variant."""
    module = getattr(getattr(item, "module", None), "__name__", "") or ""
    fields = {"family": module.rsplit(".", 1)[-1].removeprefix("test_"), "model": None, "activation": None,
              "variant": None, "batch_size": None}  # fmt: skip
    params = item.callspec.params if hasattr(item, "callspec") else {}
    case = params.get("case")
    if isinstance(case, Case):
        fields.update(case_fields(case, item.config.stash[SETTINGS].profile.name))
        point = getattr(params.get("scaling"), "id", None)
        if point:
            fields["world"] = point  # the distributed bench's world-size point (ws1, ws2-weak, ...)
    elif hasattr(item, "callspec"):
        fields["variant"] = item.callspec.id
    return fields


def _failure_line(call: pytest.CallInfo, report: pytest.TestReport) -> str:
    """A failure as one line: the exception's first line; for one without a message (a bare `assert` outside the
    test modules' assertion rewriting), the first `E ` line of the traceback that says more, or where it was raised."""
    message = call.excinfo.exconly() if call.excinfo else report.longreprtext
    line = (message.strip().splitlines() or [report.when])[0].strip()
    if call.excinfo and ":" not in line:
        said = [
            text[1:].strip()
            for text in report.longreprtext.splitlines()
            if text.startswith("E ") and text[1:].strip() and text[1:].strip() != line
        ]
        crash = getattr(report.longrepr, "reprcrash", None)
        if said:
            line = f"{line}: {said[0]}"
        elif crash is not None:
            line = f"{line} at {Path(crash.path).name}:{crash.lineno}"
    return line if len(line) <= 300 else line[:297] + "..."


def rerun_args(config: pytest.Config) -> list[str]:
    """The options that select and configure this run's cases, to re-run some of them by node id."""
    args = []
    for option in RERUN_OPTIONS:
        value = config.getoption(option)
        if value is not None:
            args += [option, str(value)]
    invocation = list(config.invocation_params.args)
    for i, arg in enumerate(invocation):
        if arg == "-p" and i + 1 < len(invocation):
            args += ["-p", invocation[i + 1]]
        elif arg.startswith("-p") and len(arg) > 2:
            args.append(arg)
    if config.getoption("markexpr", ""):
        args += ["-m", config.getoption("markexpr")]
    return args


def pytest_benchmark_update_json(config: pytest.Config, benchmarks, output_json: dict) -> None:
    outcomes = config.stash.get(OUTCOMES, {"failed": {}, "skipped": {}})
    output_json["nn_speedups"] = {
        "rootdir": str(config.rootpath),
        "rerun_args": rerun_args(config),
        "failed": dict(outcomes["failed"]),
        "skipped": dict(outcomes["skipped"]),
        "failed_cases": dict(config.stash.get(FAILED_CASES, {})),  # harness.report's "Failed cases" rows
    }


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """pytest-benchmark's --benchmark-compare-fail raises PerformanceRegression from its terminal summary, which
    ends the run in a traceback; its session's finish() (in its sessionfinish wrapper, before this) has found them,
    so take them here, fail the run, and print them as a summary (_stock_gate_summary). Also keeps the durations."""
    _keep_durations(session)
    bench_session = getattr(session.config, "_benchmarksession", None)
    regressions = getattr(bench_session, "performance_regressions", None)
    if regressions:
        session.config.stash[STOCK_REGRESSIONS] = list(regressions)
        regressions.clear()
        if session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _stock_gate_summary(terminalreporter, config: pytest.Config) -> None:
    regressions = config.stash.get(STOCK_REGRESSIONS, [])
    if not regressions:
        return
    terminalreporter.section("nn-speedups: performance has regressed (--benchmark-compare-fail)", red=True)
    for name, failure in regressions:
        terminalreporter.write_line(f"{name}: {failure}")
    terminalreporter.write_line(
        f"{len(regressions)} case(s) failed --benchmark-compare-fail. A single run's medians move from run to run: "
        "`python -m harness.gate BASELINE.json HEAD.json` decides with the rounds, calibrated noise and re-runs "
        "(README, 'Catching regressions')."
    )
