"""The report's CSV: every row of the run (passed and failed cases), one column per field any row has."""

from __future__ import annotations

import csv
from pathlib import Path


def write_csv(run_rows: list[dict], path: Path, failed: list[dict] | None = None) -> Path:
    """Every row of the run, status "passed" and an empty reason, then the failed cases (failed_rows) with status
    "failed" and their one-line reason; `flags`: the row's anomaly flags (nn_speedups.report.anomalies), joined."""
    run_rows = [{**r, "status": "passed", "reason": ""} for r in run_rows] + list(failed or [])
    run_rows = [{**r, "flags": "; ".join(r.get("flags") or [])} for r in run_rows]  # one column, empty: nothing odd
    fields: list[str] = []
    for r in run_rows:
        fields += [k for k in r if k not in fields]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(run_rows)
    return path
