"""The regression gate's glue: each case's outcome, how to re-run it (rerun_args), the stock gate's summary."""

from __future__ import annotations

from pathlib import Path

import pytest

from nn_speedups.measure.protocol import Case, case_fields
from nn_speedups.plugin.keys import BENCH_FIXTURES, FAILED_CASES, OUTCOMES, SETTINGS, STOCK_REGRESSIONS
from nn_speedups.plugin.session import _keep_durations

# nn_speedups.gate reads from a saved run which cases failed or were skipped (a case that fails now is a regression, not
# just "gone") and how to re-run a case in a fresh process (--confirm).

# the options a re-run passes on; the repeatable ones a user model run needs (--model ... --onnx-input, action="append")
# pass on every value given, one `--opt value` pair each
RERUN_OPTIONS = ("--profile", "--device", "--models", "--batch-sizes", "--variants", "--image-size", "--weights",
                 "--data", "--checkpoint", "--eval-samples",
                 "--model", "--onnx", "--onnx-dim", "--onnx-inputs", "--onnx-input", "--seq-len")  # fmt: skip


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
    (nn_speedups.measure.protocol.case_fields: family, model, activation, variant, dtype, batch...) and the world-size
    point; a test without a case, its family (the bench file) and its parameter id as the variant."""
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
        for one in value if isinstance(value, list) else [value]:  # an append option's list: each value given
            if one is not None:
                args += [option, str(one)]
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
        "failed_cases": dict(config.stash.get(FAILED_CASES, {})),  # nn_speedups.report's "Failed cases" rows
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
        "`python -m nn_speedups.gate BASELINE.json HEAD.json` decides with the rounds, calibrated noise and re-runs "
        "(docs/gate.md)."
    )
