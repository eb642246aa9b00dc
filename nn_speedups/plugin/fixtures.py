"""The fixtures the benches take: settings, baselines and the measure* fixtures that time a case and keep its record."""

from __future__ import annotations

import functools

import pytest

from nn_speedups.measure import energy, timing
from nn_speedups.measure.protocol import (
    BaselineCache,
    Case,
    MeasurementError,
    Settings,
    measure_rounds,
    run_case,
    run_training_case,
    timing_fields,
)
from nn_speedups.plugin.keys import RECORDS, SETTINGS, TRACER


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
    from nn_speedups.distributed.bench import Unsupported, run_distributed_case

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
