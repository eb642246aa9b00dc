"""The suite's pytest plugin, the module pytest registers (conftest.py's pytest_plugins, or -p nn_speedups.plugin).

pytest finds hooks and fixtures among a plugin module's attributes, imported ones included, so this module imports
every hook (pytest_*) and fixture from the modules that hold them, and the names other code imports from here:

    options   the command line: options, their validation, the Settings built from them
    params    the matrix: markers, parametrization, requirement and profile skips
    session   configure/unconfigure, the --traces tracer, the run header, the per-family progress lines
    fixtures  settings, baselines, measure, measure_training, measure_fn, measure_distributed
    report    machine info, the end-of-run report, the smoke summary
    gate      outcomes and failure lines, rerun_args, the saved JSON's block, the stock gate's summary
    keys      the stash keys, each defined once
"""

from __future__ import annotations

from nn_speedups.plugin.fixtures import (
    baselines,
    measure,
    measure_distributed,
    measure_fn,
    measure_training,
    settings,
)
from nn_speedups.plugin.gate import (
    RERUN_OPTIONS,
    pytest_benchmark_update_json,
    pytest_runtest_makereport,
    pytest_sessionfinish,
    rerun_args,
)
from nn_speedups.plugin.keys import (
    BENCH_FIXTURES,
    DURATIONS_CACHE,
    FAILED_CASES,
    INPUT_SIZES,
    OUTCOMES,
    PROGRESS,
    RECORDS,
    RUN_NAME,
    SETTINGS,
    STOCK_REGRESSIONS,
    TRACER,
    VARIANT_NAMES,
)
from nn_speedups.plugin.options import pytest_addoption
from nn_speedups.plugin.params import (
    BASELINES,
    MARKERS,
    _skip_reason,
    pytest_collection_modifyitems,
    pytest_generate_tests,
    pytest_runtest_setup,
    smoke_variants,
)
from nn_speedups.plugin.report import (
    pytest_benchmark_update_machine_info,
    pytest_terminal_summary,
    smoke_summary,
)
from nn_speedups.plugin.session import (
    pytest_collection_finish,
    pytest_configure,
    pytest_report_header,
    pytest_runtest_protocol,
    pytest_unconfigure,
)

__all__ = [
    # hooks
    "pytest_addoption",
    "pytest_benchmark_update_json",
    "pytest_benchmark_update_machine_info",
    "pytest_collection_finish",
    "pytest_collection_modifyitems",
    "pytest_configure",
    "pytest_generate_tests",
    "pytest_report_header",
    "pytest_runtest_makereport",
    "pytest_runtest_protocol",
    "pytest_runtest_setup",
    "pytest_sessionfinish",
    "pytest_terminal_summary",
    "pytest_unconfigure",
    # fixtures
    "baselines",
    "measure",
    "measure_distributed",
    "measure_fn",
    "measure_training",
    "settings",
    # stash keys and shared names
    "BENCH_FIXTURES",
    "DURATIONS_CACHE",
    "FAILED_CASES",
    "INPUT_SIZES",
    "OUTCOMES",
    "PROGRESS",
    "RECORDS",
    "RUN_NAME",
    "SETTINGS",
    "STOCK_REGRESSIONS",
    "TRACER",
    "VARIANT_NAMES",
    # what benches, tests and the gate use
    "BASELINES",
    "MARKERS",
    "RERUN_OPTIONS",
    "_skip_reason",
    "rerun_args",
    "smoke_summary",
    "smoke_variants",
]
