"""The end of the run: machine info (with the run record) for pytest-benchmark, the report written and printed, the
smoke summary."""

from __future__ import annotations

from pathlib import Path

import pytest

from nn_speedups.core import env
from nn_speedups.measure import energy
from nn_speedups.plugin.gate import _stock_gate_summary
from nn_speedups.plugin.keys import FAILED_CASES, OUTCOMES, RECORDS, RUN_NAME, RUN_RECORD, SETTINGS


def run_machine_info(config: pytest.Config | None = None) -> dict:
    """The machine and its versions (nn_speedups.core.env), what its energy meters can read, and the run record
    captured when the session started (nn_speedups.plugin.session.capture_record)."""
    info = {**env.machine_info(), "energy": energy.describe()}
    record = config.stash.get(RUN_RECORD, None) if config is not None else None
    if record is not None:
        info["record"] = record
    return info


def commit_info(config: pytest.Config) -> dict:
    """The commit and whether the tree was dirty, gathered as pytest-benchmark does for the JSON it saves."""
    from pytest_benchmark.utils import get_commit_info

    try:
        project = config.getoption("benchmark_project_name", None)
    except ValueError:
        project = None
    return get_commit_info(project)


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    machine_info.update(run_machine_info(config))
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
    from nn_speedups import report

    run_name = config.stash[RUN_NAME]
    outcomes = config.stash.get(OUTCOMES, {"failed": {}, "skipped": {}})
    cases = dict(config.stash.get(FAILED_CASES, {}))  # the bench cases that failed (not a self-test's failure)
    run = {
        "machine_info": run_machine_info(config),
        "commit_info": commit_info(config),
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
    terminalreporter.write_line(report.run_record.summary_line(run))
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
