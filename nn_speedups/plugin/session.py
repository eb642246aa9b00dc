"""The run's lifecycle: configure and unconfigure, the run record, the --traces tracer, the run header and the progress
lines."""

from __future__ import annotations

import datetime
import inspect
import sys
import time
from pathlib import Path

import pytest

from nn_speedups.core import env
from nn_speedups.plugin.keys import (
    BENCH_FIXTURES,
    DURATIONS_CACHE,
    INPUT_SIZES,
    OUTCOMES,
    PROGRESS,
    RECORDS,
    RUN_NAME,
    RUN_RECORD,
    SETTINGS,
    STOCK_REGRESSIONS,
    TRACER,
    VARIANT_NAMES,
)
from nn_speedups.plugin.options import _settings
from nn_speedups.plugin.params import register_markers
from nn_speedups.plugin.progress import PRIOR_S_PER_CASE, RunProgress, family_of


def pytest_configure(config: pytest.Config) -> None:
    register_markers(config)
    config.stash[RUN_RECORD] = capture_record(config)  # before anything runs: Inductor's cache as the run found it
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


def suite_seeds() -> dict[str, int]:
    """The seeds the benches use. The suite has no one shared seed constant: each is read where it lives (a default
    argument or a module constant)."""
    from nn_speedups.data.synthetic import synthetic_splits
    from nn_speedups.measure.calibration import CALIBRATION_SEED
    from nn_speedups.models.registry import WEIGHTS_SEED, image_inputs

    default = lambda function: inspect.signature(function).parameters["seed"].default  # noqa: E731
    return {
        "model_weights": WEIGHTS_SEED,  # build_model seeds torch with it before every model (seeded random weights)
        "example_inputs": default(image_inputs),  # the benches' inputs (text and user models take the same seed)
        "calibration_inputs": CALIBRATION_SEED,  # INT8 calibration batches: CALIBRATION_SEED + batch index
        "synthetic_data": default(synthetic_splits),  # nn_speedups.data's synthetic set (accuracy, calibration)
    }


def capture_record(config: pytest.Config) -> dict:
    """The run record (nn_speedups.core.env.run_record) with the suite's seeds and the arguments pytest was given."""
    record = env.run_record(argv=sys.argv, cwd=str(config.invocation_params.dir), seeds=suite_seeds())
    record["process_start_s"] = env.process_age_s()  # Python, pytest, torch and the suite imported: a cold start's
    record["pytest_args"] = [str(a) for a in config.invocation_params.args]
    return record


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
    from nn_speedups.trace import Tracer, TraceSetupError

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


def _input_size_line(config: pytest.Config, name: str, image_size: int) -> str:
    """What a model of the run is fed, for the header: the size actually used, or its own inputs."""
    from nn_speedups.models import get_spec
    from nn_speedups.models.user import is_user

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
