"""Reports in the seeds' form from a run: per-model tables (markdown and terminal), a CSV of every row, PNG plots,
and a side-by-side comparison of two runs.

    python -m nn_speedups.report RUN.json [BASELINE.json] [--out reports/NAME]
    python -m nn_speedups.report --diff A.json B.json     what differs between two runs' records, then their medians

RUN.json is a file pytest-benchmark saved (`--benchmark-autosave` writes .benchmarks/<machine>/NNNN_*.json).

The package's modules, one job each: records (a run's benchmarks and failed cases as rows), cells (formatting a
value as a cell), tables and training (the markdown tables), compare (two runs side by side), csvfile (the CSV),
plots (the PNGs), document (the whole report as text and as files), run_record (two runs' records diffed: versions,
settings, Inductor's cache, seeds, command, commit); main() below is the command line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nn_speedups.report import run_record
from nn_speedups.report.compare import comparison_table
from nn_speedups.report.csvfile import write_csv
from nn_speedups.report.document import render_tables, write_report
from nn_speedups.report.plots import (
    plot_accuracy_latency,
    plot_latency,
    plot_operator_charts,
    plot_scaling,
    plot_speedups,
)
from nn_speedups.report.records import failed_rows, load_run, reason_line, rows, speedup_grid
from nn_speedups.report.tables import (
    MEMORY_LEGEND,
    REGIME_TITLES,
    activation_table,
    compression_tables,
    deployment_table,
    distillation_tables,
    failed_tables,
    kernel_tables,
    model_tables,
    operator_charts,
)
from nn_speedups.report.training import distributed_tables, training_tables

__all__ = [
    "MEMORY_LEGEND",
    "REGIME_TITLES",
    "activation_table",
    "comparison_table",
    "compression_tables",
    "deployment_table",
    "distillation_tables",
    "distributed_tables",
    "failed_rows",
    "failed_tables",
    "kernel_tables",
    "load_run",
    "main",
    "model_tables",
    "operator_charts",
    "plot_accuracy_latency",
    "plot_latency",
    "plot_operator_charts",
    "plot_scaling",
    "plot_speedups",
    "reason_line",
    "render_tables",
    "rows",
    "run_record",
    "speedup_grid",
    "training_tables",
    "write_csv",
    "write_report",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nn_speedups.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", nargs="?", help="a pytest-benchmark JSON file")
    parser.add_argument("baseline", nargs="?", help="a second run to compare against")
    parser.add_argument("--out", help="report path without suffix (default: reports/<run file name>)")
    parser.add_argument(
        "--diff",
        nargs=2,
        metavar=("A.json", "B.json"),
        help="what differs between two runs' records (machine, versions, settings, commit), then their medians",
    )
    args = parser.parse_args(argv)
    if args.diff:
        if args.run:
            parser.error("--diff takes the two runs itself: --diff A.json B.json")
        return run_record.diff_command(*args.diff)
    if not args.run:
        parser.error("give a run: RUN.json [BASELINE.json], or --diff A.json B.json")
    try:
        run = load_run(args.run)
        baseline = load_run(args.baseline) if args.baseline else None
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path("reports") / Path(args.run).stem
    print(render_tables(run, baseline))
    for path in write_report(run, out, baseline):
        print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
