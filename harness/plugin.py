"""The pytest glue: options, validation, the matrix parametrization, requirement skips, fixtures, machine info and
the end-of-run report. Loaded from the top-level conftest.py."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from harness import capabilities, env, timing
from harness.axes import PROFILES, default_profile
from harness.bench import (
    BaselineCache,
    Case,
    Settings,
    measure_rounds,
    run_case,
    run_training_case,
    timing_fields,
)

SETTINGS = pytest.StashKey[Settings]()
RECORDS = pytest.StashKey[list]()
VARIANT_NAMES = pytest.StashKey[set]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("nn-speedups")
    group.addoption(
        "--profile",
        choices=sorted(PROFILES),
        default=None,
        help="quick (CPU default): " + PROFILES["quick"].summary + "; full (CUDA default): " + PROFILES["full"].summary,
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
    return Settings(
        device=device,
        profile=profile,
        image_size=image_size,
        weights=config.getoption("--checkpoint") or config.getoption("--weights"),
        data=data,
        eval_samples=eval_samples,
        train_image_size=config.getoption("--image-size") or profile.train_image_size,
    )


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


def pytest_configure(config: pytest.Config) -> None:
    config.stash[SETTINGS] = _settings(config)
    config.stash[RECORDS] = []
    config.stash[VARIANT_NAMES] = set()


def pytest_report_header(config: pytest.Config) -> str:
    s = config.stash[SETTINGS]
    p = s.profile
    return (
        f"nn-speedups: profile {p.name} on {s.device}; image {s.image_size}; batch sizes "
        f"{','.join(map(str, p.batch_sizes))}; models {','.join(p.models)}"
    )


def _skip_reason(case: Case, settings: Settings, training: bool = False) -> str | None:
    variant, profile = case.variant, settings.profile
    if "gpu" in variant.marks and settings.device == "cpu":
        return f"{variant.name} is GPU-only: " + (
            "run with --device cuda" if capabilities.has_cuda() else "needs a CUDA device (this machine has none)"
        )
    if "cpu" in variant.marks and settings.device != "cpu":
        return f"{variant.name} is a CPU path (it lowers to oneDNN through X86InductorQuantizer): run with --device cpu"
    reason = variant.unsuitable(case.spec)
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
    if variant.trained_only and not _has_trained_weights(case, settings):
        return (
            f"{variant.name} is judged by top-1 on labelled images and needs trained weights: {case.spec.name} has "
            f"none here (pass --checkpoint PATH, or run a model the {profile.name} profile trains: "
            f"{', '.join(profile.accuracy_models)})"
        )
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
    from models import get_spec

    settings = metafunc.config.stash[SETTINGS]
    family = metafunc.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    metafunc.config.stash[VARIANT_NAMES].update(v.name for v in spec_matrix.variants)
    models = [m for m in settings.profile.models if spec_matrix.models is None or m in spec_matrix.models]
    family_models = settings.profile.family_models.get(family)
    if metafunc.config.getoption("--models") or metafunc.config.getoption("--checkpoint"):
        family_models = None  # models named on the command line run in every bench
    batch_sizes = settings.profile.train_batch_sizes if spec_matrix.training else settings.profile.batch_sizes
    if spec_matrix.training and metafunc.config.getoption("--batch-sizes"):
        batch_sizes = settings.profile.batch_sizes  # an explicit --batch-sizes applies to every bench
    explicit_batches = metafunc.config.getoption("--batch-sizes") is not None
    params = []
    for model in models:
        spec = get_spec(model)
        model_batches = batch_sizes
        if not explicit_batches:
            model_batches = settings.profile.family_batch_sizes.get(family, {}).get(model, batch_sizes)
        for activation in spec_matrix.activations:
            for batch in model_batches:
                for variant in spec_matrix.variants:
                    case = Case(spec, batch, variant, settings.device, activation, family)
                    marks = [getattr(pytest.mark, m) for m in variant.marks]
                    reason = _skip_reason(case, settings, spec_matrix.training)
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
        params = [pytest.param(None, id="no-model", marks=pytest.mark.skip(reason=reason))]
    metafunc.parametrize("case", params)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
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


@pytest.fixture(scope="session")
def settings(pytestconfig: pytest.Config) -> Settings:
    return pytestconfig.stash[SETTINGS]


@pytest.fixture(scope="session")
def baselines(settings: Settings) -> BaselineCache:
    return BaselineCache(settings)


@pytest.fixture
def measure(request: pytest.FixtureRequest, benchmark, baselines: BaselineCache):
    """measure(case): check the case's variant against eager, time it with pytest-benchmark, record extra_info."""

    return _measurer(request, benchmark, lambda case, drive: run_case(case, baselines, run=drive))


@pytest.fixture
def measure_training(request: pytest.FixtureRequest, benchmark, settings: Settings):
    """measure_training(case): check the training variant's losses against eager fp32, then time its steps."""
    return _measurer(request, benchmark, lambda case, drive: run_training_case(case, settings, run=drive))


@pytest.fixture
def measure_fn(request: pytest.FixtureRequest, benchmark, settings: Settings):
    """measure_fn(group, fn, device, record, derive=None): time `fn` (each round synchronized on `device`) with
    pytest-benchmark and keep `record`, the timing fields and `derive(timing fields)` as the test's extra_info."""

    def run(group: str, fn, device: str, record: dict, derive=None) -> dict:
        benchmark.group = group

        def drive(target, rounds):
            benchmark.pedantic(target, rounds=rounds, iterations=1, warmup_rounds=0)

        summary = measure_rounds(fn, timing.synchronizer(device), settings.profile, drive)
        record = {**record, **timing_fields(summary)}
        if derive is not None:
            record.update(derive(record))
        _keep(request, benchmark, group, record)
        return record

    return run


def _keep(request: pytest.FixtureRequest, benchmark, group: str, record: dict) -> None:
    benchmark.extra_info.update(record)
    request.config.stash[RECORDS].append(
        {"name": request.node.name, "fullname": request.node.nodeid, "group": group, "extra_info": record}
    )


def _measurer(request, benchmark, measure_case):
    def run(case: Case) -> dict:
        benchmark.group = case.group

        def drive(target, rounds):
            benchmark.pedantic(target, rounds=rounds, iterations=1, warmup_rounds=0)

        record = measure_case(case, drive)
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


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    records = config.stash.get(RECORDS, [])
    if not records:
        return
    from harness import report

    settings = config.stash[SETTINGS]
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_name = f"{stamp}-{settings.device}-{settings.profile.name}"
    run = {"machine_info": env.machine_info(), "benchmarks": records}
    paths = report.write_report(run, Path(config.getoption("--report-dir")) / run_name)
    terminalreporter.section("nn-speedups report")
    terminalreporter.write(report.render_tables(run))
    terminalreporter.write_line("")
    for path in paths:
        terminalreporter.write_line(f"written: {path}")
