"""A saved run as rows: its benchmarks, its failed cases with a one-line reason, and the plots' speed-up grids.

Also the row fields every table shares: the variant label, the world-size point, the memory column.
"""

from __future__ import annotations

import json
import re
from pathlib import Path


def load_run(path: str | Path) -> dict:
    with open(path) as f:
        run = json.load(f)
    if "benchmarks" not in run:
        raise ValueError(f"{path}: not a pytest-benchmark JSON file (no 'benchmarks' key)")
    return run


def rows(run: dict) -> list[dict]:
    """One flat row per benchmark: the extra_info fields plus the test name and group, its anomaly flags
    (nn_speedups.report.anomalies) and `cold_start_s`: the run's process start-up (record.process_start_s) plus the
    case's model load (model_load_s) and its build, compile or engine load and first call (compile_s), where all
    three were recorded."""
    from nn_speedups.report import anomalies

    out = []
    for bench in run["benchmarks"]:
        info = bench.get("extra_info") or {}
        if "median_ms" not in info:
            continue
        out.append({"name": bench.get("name"), "group": bench.get("group"), **info})
    started = ((run.get("machine_info") or {}).get("record") or {}).get("process_start_s")
    for row in out:
        parts = (started, row.get("model_load_s"), row.get("compile_s"))
        if all(isinstance(p, (int, float)) for p in parts):  # a fresh process's start, the model's load, build + call
            row["cold_start_s"] = sum(parts)
    return anomalies.annotate(out, anomalies.effective_isa(run.get("machine_info") or {}))


_CASE_ID = re.compile(r"^(?P<head>.+?)-bs(?P<batch>\d+)-(?P<variant>.+)$")
# the suite's errors (nn_speedups.*, and the module names before the package, in older runs): messages for the reader
_OWN_MODULES = ("nn_speedups.", "harness.", "optimizations.", "models.", "kernels.")
_BARE_TYPES = ("AssertionError", "Failed")  # an assert's message, pytest.fail's (the suite's one-line failures)


def _outcomes(run: dict) -> dict:
    """{"failed": {node id: one line}, "skipped": {node id: reason}}: what the plugin saved beside the benchmarks."""
    saved = run.get("nn_speedups") or {}
    return {"failed": dict(saved.get("failed") or {}), "skipped": dict(saved.get("skipped") or {})}


def _activations() -> set[str]:
    try:
        from nn_speedups.models.activations import ACTIVATIONS
    except Exception:  # noqa: BLE001 - the report reads saved runs without needing the models to import
        return set()
    return set(ACTIVATIONS)


def reason_line(message: str, case_id: str = "") -> str:
    """A failure's first meaningful line, trimmed: the suite's own errors (CorrectnessError, MeasurementError, ...)
    and assertion messages without their type, other exceptions as `Type: message` without the module path, the
    case's own id in front dropped."""
    lines = [line.strip() for line in (message or "").splitlines() if line.strip()]
    line = lines[0] if lines else "failed (no message)"
    kind, sep, text = line.partition(": ")
    if sep and re.fullmatch(r"[A-Za-z_][\w.]*", kind) and text.strip():
        own = kind.startswith(_OWN_MODULES) or kind.rsplit(".", 1)[-1] in _BARE_TYPES
        line = text.strip() if own else f"{kind.rsplit('.', 1)[-1]}: {text.strip()}"
    for prefix in (f"{case_id}: ", f"{case_id} "):
        if case_id and line.startswith(prefix) and len(line) > len(prefix):
            line = line[len(prefix) :]
    return line if len(line) <= 300 else line[:297] + "..."


def failed_rows(run: dict) -> list[dict]:
    """One row per failed case of the run (the node ids the plugin saved under nn_speedups.failed): its test name,
    family, model, activation, variant label and batch (as the plugin saved them under nn_speedups.failed_cases;
    else parsed from the node id), and the one-line reason. A case whose id is not model-bsN-variant keeps its id as
    the variant."""
    failed = _outcomes(run)["failed"]
    if not failed:
        return []
    saved = (run.get("nn_speedups") or {}).get("failed_cases") or {}
    activations = _activations()
    out = []
    for node_id, message in failed.items():
        path, _, name = node_id.rpartition("::")
        family = Path(path.replace("\\", "/")).stem.removeprefix("test_") if path else ""
        case_id = name[name.index("[") + 1 : -1] if "[" in name and name.endswith("]") else ""
        row = {"name": name or node_id, "fullname": node_id, "family": family, "model": None, "activation": None,
               "variant": case_id or name, "batch_size": None}  # fmt: skip
        match = _CASE_ID.match(case_id)
        if match:
            head = match["head"]
            act = next((a for a in sorted(activations, key=len, reverse=True) if head.endswith(f"-{a}")), None)
            row.update(model=head[: -len(act) - 1] if act else head, activation=act, variant=match["variant"])
            row["batch_size"] = int(match["batch"])
        row.update(saved.get(node_id) or {})
        row["variant"] = row["variant"] or case_id or name
        row["status"], row["reason"] = "failed", reason_line(message, case_id)
        out.append(row)
    return out


def _label(row: dict) -> str:
    dtype = row.get("dtype") or ""
    return row["variant"] if row["variant"].endswith(dtype) else f"{row['variant']}-{dtype}"


def _world(row: dict) -> str:
    """A distributed row's world-size point (ws1, ws2-weak, ws2-strong); empty for other rows."""
    if row.get("world_size") is None:
        return ""
    return f"ws{row['world_size']}" + (f"-{row['scaling']}" if row.get("scaling") not in (None, "reference") else "")


def _host(row: dict):
    """What the case added to host memory (host_mb); the process's peak for runs saved before it existed."""
    return row["host_mb"] if row.get("host_mb") is not None else row.get("peak_host_mb")


def _memory(row: dict):
    return row.get("peak_device_mb") if row.get("peak_device_mb") is not None else _host(row)


def speedup_grid(run_rows: list[dict]) -> dict[str, tuple[list[str], list[str], list[list[float | None]]]]:
    """Per panel: (variant labels, column labels "model[-activation] bsN", speedup[variant][column] or None). A panel
    is a family, or a family's bench function where the family has several (FastSwish's model inference and
    training steps differ in batch and baseline: in one panel they leave half its cells empty); a panel with its
    baseline alone is left out."""

    def function(r: dict) -> str:
        return (r.get("name") or "").split("[")[0]

    def panel(r: dict) -> str:
        family = r.get("family", "")
        several = len({function(o) for o in run_rows if o.get("family", "") == family}) > 1
        return f"{family} {function(r).removeprefix('test_').replace('_', ' ')}" if several else family

    grids = {}
    for key in sorted({panel(r) for r in run_rows}):
        mine = [r for r in run_rows if panel(r) == key]
        where = lambda r: (r["model"], r.get("activation") or "", r["batch_size"])  # noqa: E731
        columns = sorted({where(r) for r in mine})
        labels = list(dict.fromkeys(_label(r) for r in mine))  # the order the bench file lists its variants
        if len(labels) < 2:
            continue  # the baseline alone: a panel of 1.00x says nothing
        cells = {(_label(r), where(r)): r["speedup_vs_eager"] for r in mine}
        values = [[cells.get((label, column)) for column in columns] for label in labels]
        names = [f"{m}{'-' + a if a else ''} bs{b}" for m, a, b in columns]
        grids[key] = (labels, names, values)
    return grids
