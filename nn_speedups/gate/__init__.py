"""The regression gate: one verdict per case between a baseline run and a head run, each with why.

    python -m nn_speedups.gate BASELINE.json HEAD.json [--thresholds T.json] [--confirm]
                               [--summary $GITHUB_STEP_SUMMARY]
    python -m nn_speedups.gate --calibrate RUN1.json RUN2.json RUN3.json ... [--out reports/gate-thresholds.json]
    python -m nn_speedups.gate --aa-study reports/gate-aa --runs 10 -- benches/test_inference.py

Runs are files pytest-benchmark saved (`--benchmark-autosave` writes .benchmarks/<machine>/NNNN_*.json; a folder
picks its newest); keep per-round data with `--benchmark-save-data` (without it the gate decides from medians and
the saved IQRs, and says so).

Verdicts (exit code 1 when any of the first four occurs, 2 for bad input, else 0):

- failed: the case fails in the head run (it passed in the baseline, or is new and fails);
- gone: the baseline has it, the head run neither timed nor failed it (skipped, deselected or removed);
  --allow-gone accepts removals;
- regressed: not timing: new graph breaks or more graphs (recompiles), a provider or backend that changed, fewer
  quantized ops, top1 / top5 / top1_agreement down by more than ACCURACY_TOLERANCE, model_size_mb more than
  SIZE_GROWTH larger, a peak memory more than MEMORY_GROWTH (and MEMORY_FLOOR_MB) larger;
- slower: the shift of the log round times (Hodges-Lehmann) is above the case's threshold AND significant over
  both runs' rounds (one-sided Mann-Whitney U, p < ALPHA); with the estimated slowdown and its 95% interval;
- faster, unchanged, new; noisy: too few rounds or too much spread to decide either way (also a case whose
  calibrated threshold is above BLIND: the machine's noise hides any slowdown below it).

A case's threshold is MIN_EFFECT for its device kind and family (the smallest slowdown worth failing a pull request
for), raised to SIGMAS x its between-run noise when a thresholds file from `--calibrate` knows it. One run's rounds
cannot see between-run noise (a 2-core CPU moved unchanged cases by -30%..+64% from one run to the next while each
run's rounds were tight), which is why the noise comes from repeated unchanged runs and why `--confirm` re-runs the
suspects in fresh processes before failing: pairs of fresh head and baseline processes in randomized ABBA order,
added until the pairs' interval decides or `--confirm-runs` pairs are spent (nn_speedups.gate.confirm; the formulas are
in nn_speedups.gate.stats).

The package's modules, each with one job (their names are re-exported here):

- verdicts: the policy above, Options and Verdict, and `compare`, one run against another into verdicts;
- thresholds: the thresholds file, written by `calibrate` (--calibrate) and read by `Thresholds` (--thresholds);
- render: the headline, the terminal text, the markdown table, the JSON and the calibration table;
- cli: the arguments and `main`; confirm: the --confirm re-runs; study: the --aa-study; runs: reading saved runs
  (and running pytest); stats: the formulas.
"""

from __future__ import annotations

# The names below stay attributes of the package: tests and callers import them from here, confirm.py reads
# min_effect, ORDER and _pct at call time (`from nn_speedups import gate as g`: this package imports confirm), and
# study.py reads Options, compare, calibrate, Thresholds, render_calibration, run_confirm, MIN_PAIRS, FAILING and
# _options. The two private ones are re-exported with `as` (not in __all__).
from nn_speedups.gate.cli import _options as _options
from nn_speedups.gate.cli import calibrate_cli, gate, main, parser
from nn_speedups.gate.confirm import MIN_PAIRS, confirm_threshold, run_confirm, suspects
from nn_speedups.gate.render import counts, failing, headline, markdown, render_calibration, terminal, to_json
from nn_speedups.gate.runs import CaseRun, GateError, Run, check_same_machine, identity, load_run
from nn_speedups.gate.thresholds import MEMORY_KEYS, Thresholds, calibrate
from nn_speedups.gate.verdicts import (
    ACCURACY_KEYS,
    ACCURACY_TOLERANCE,
    ALPHA,
    BLIND,
    CONFIRM_RUNS,
    ENGAGEMENT_KEYS,
    FAILING,
    MEMORY_FLOOR_MB,
    MEMORY_GROWTH,
    MIN_EFFECT,
    ORDER,
    SIGMAS,
    SIZE_GROWTH,
    Options,
    Verdict,
    compare,
    min_effect,
    non_timing,
)
from nn_speedups.gate.verdicts import _pct as _pct

__all__ = [
    "ACCURACY_KEYS",
    "ACCURACY_TOLERANCE",
    "ALPHA",
    "BLIND",
    "CONFIRM_RUNS",
    "ENGAGEMENT_KEYS",
    "FAILING",
    "MEMORY_FLOOR_MB",
    "MEMORY_GROWTH",
    "MEMORY_KEYS",
    "MIN_EFFECT",
    "MIN_PAIRS",
    "ORDER",
    "SIGMAS",
    "SIZE_GROWTH",
    "CaseRun",
    "GateError",
    "Options",
    "Run",
    "Thresholds",
    "Verdict",
    "calibrate",
    "calibrate_cli",
    "check_same_machine",
    "compare",
    "confirm_threshold",
    "counts",
    "failing",
    "gate",
    "headline",
    "identity",
    "load_run",
    "main",
    "markdown",
    "min_effect",
    "non_timing",
    "parser",
    "render_calibration",
    "run_confirm",
    "suspects",
    "terminal",
    "to_json",
]
