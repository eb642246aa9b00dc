"""The run's shared state: every stash key (each defined once, here) and the names the other modules share."""

from __future__ import annotations

import pytest

from nn_speedups.measure.protocol import Settings
from nn_speedups.plugin.progress import RunProgress

SETTINGS = pytest.StashKey[Settings]()
RECORDS = pytest.StashKey[list]()
VARIANT_NAMES = pytest.StashKey[set]()
PROGRESS = pytest.StashKey[RunProgress]()
DURATIONS_CACHE = "nn-speedups/durations"
BENCH_FIXTURES = ("measure", "measure_training", "measure_fn", "measure_distributed")
OUTCOMES = pytest.StashKey[dict]()  # {"failed": {node id: message}, "skipped": {node id: reason}}, for nn_speedups.gate
STOCK_REGRESSIONS = pytest.StashKey[list]()  # what --benchmark-compare-fail found, printed as a summary
RUN_NAME = pytest.StashKey[str]()
TRACER = pytest.StashKey[object]()  # a nn_speedups.trace.Tracer, or None without --traces
INPUT_SIZES = pytest.StashKey[dict]()  # user model name -> what the run header says of its inputs
FAILED_CASES = pytest.StashKey[dict]()  # node id -> the failed case's family, model, variant, batch (the report's)
RUN_RECORD = pytest.StashKey[dict]()  # nn_speedups.core.env.run_record, captured at configure (machine_info["record"])
