"""Saved Chrome-format traces (torch.profiler's, ONNX Runtime's, the TensorRT layer timeline written here), read back
for the flame chart and for `python -m nn_speedups.trace summarize`, where no live profiler object exists any more."""

from __future__ import annotations

import gzip
import json
from collections import Counter, defaultdict
from pathlib import Path

from nn_speedups.trace.breakdown import INDUCTOR_CPP_KERNEL

STEP_NAMES = ("ProfilerStep#",)  # torch.profiler; the TensorRT timeline written here uses the same names
ORT_STEP = "model_run"
OP_CATEGORIES = ("cpu_op", "kernel", "gpu_memcpy", "gpu_memset", "Node", "trt_layer")
DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
DRAWN = ("cpu_op", "user_annotation", "kernel", "gpu_memcpy", "gpu_memset", "Node", "Session", "trt_layer")
CPP_KERNEL_CALL = "<built-in function kernel>"


def load(path: str | Path) -> list[dict]:
    """The events of a Chrome trace file (.json or .json.gz; an object with traceEvents, or a bare list)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        data = json.load(f)
    events = data.get("traceEvents", []) if isinstance(data, dict) else data
    if not isinstance(events, list):
        raise ValueError(f"{path}: not a Chrome trace (no traceEvents list)")
    return events


def complete(events: list[dict]) -> list[dict]:
    return [e for e in events if e.get("ph") == "X" and isinstance(e.get("ts"), (int, float)) and "dur" in e]


def step_windows(events: list[dict]) -> list[dict]:
    """The step events: torch.profiler's ProfilerStep#N annotations, else ONNX Runtime's model_run events without
    the first (the warm-up run of the profiling session)."""
    steps = [e for e in complete(events) if str(e.get("name", "")).startswith(STEP_NAMES)]
    if steps:
        return sorted(steps, key=lambda e: e["ts"])
    runs = sorted((e for e in complete(events) if e.get("name") == ORT_STEP), key=lambda e: e["ts"])
    return runs[1:] if len(runs) > 1 else runs


def within(events: list[dict], window: dict) -> list[dict]:
    start, end = window["ts"], window["ts"] + window["dur"]
    return [e for e in complete(events) if start <= e["ts"] <= end]


def nest(events: list[dict]) -> list[tuple[dict, int, float]]:
    """(event, depth, self time in us) for events of one lane, nested by time containment."""
    ordered = sorted(events, key=lambda e: (e["ts"], -e["dur"]))
    out: list[list] = []
    stack: list[list] = []  # [event, depth, self time, end]
    for e in ordered:
        end = e["ts"] + e["dur"]
        while stack and stack[-1][3] < e["ts"] + 1e-3:
            stack.pop()
        while stack and end > stack[-1][3] + 1e-3:  # overlaps without nesting: not a child of it
            stack.pop()
        if stack:
            stack[-1][2] -= e["dur"]
        entry = [e, len(stack), float(e["dur"]), end]
        out.append(entry)
        stack.append(entry)
    return [(e, depth, max(0.0, self_us)) for e, depth, self_us, _ in out]


def lanes(events: list[dict], anchor: dict | None = None) -> dict[tuple, list[dict]]:
    """Events by (pid, tid). Inductor's C++ kernel calls (Python-tracer events, on a lane of their own in the file)
    join the lane of `anchor` (the step annotation), where the operators that surround them run."""
    by_lane: dict[tuple, list[dict]] = defaultdict(list)
    for e in events:
        cat = e.get("cat")
        if cat == "python_function" and e.get("name") == CPP_KERNEL_CALL and anchor is not None:
            by_lane[(anchor.get("pid"), anchor.get("tid"))].append({**e, "cat": "inductor_kernel"})
        elif cat in DRAWN:
            by_lane[(e.get("pid"), e.get("tid"))].append(e)
    return by_lane


def summarize(path: str | Path, top: int = 15) -> dict:
    """Steps, the top operators by self time (device time where the trace has device events) and kernel counts of
    a saved trace file."""
    from nn_speedups.trace.breakdown import op_breakdown

    events = load(path)
    windows = step_windows(events)
    if not windows:
        raise ValueError(f"{path}: no steps in it (no ProfilerStep#N or model_run events)")
    inside = [e for w in windows for e in within(events, w)]
    device = [e for e in inside if e.get("cat") in DEVICE_CATEGORIES]
    op_times: list[tuple[str, float]] = []
    if device:
        op_times = [(e["name"], float(e["dur"])) for e in device]
        source = "device time"
    else:
        for lane in lanes(inside, windows[0]).values():
            for e, _depth, self_us in nest(lane):
                if (e.get("cat") == "cpu_op" and "::" in e["name"]) or e.get("cat") == "trt_layer":
                    op_times.append((e["name"], self_us))
                elif e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                    op_times.append((e.get("args", {}).get("op_name") or e["name"], self_us))
                elif e.get("cat") == "inductor_kernel":
                    op_times.append((INDUCTOR_CPP_KERNEL, self_us))
        source = "self time"
    step_ms = sum(w["dur"] for w in windows) / len(windows) / 1e3
    fields = op_breakdown(op_times, len(windows), step_ms, top=top)
    cats = Counter(e.get("cat") for e in inside)
    return {
        "file": str(path),
        "steps": len(windows),
        "step_ms": step_ms,
        "source": source,
        "event_counts": dict(cats),
        "kernels_per_step": cats.get("kernel", 0) / len(windows),
        "inductor_cpp_kernel_calls_per_step": sum(
            1 for e in inside if e.get("cat") == "python_function" and e.get("name") == CPP_KERNEL_CALL
        )
        / len(windows),
        **fields,
    }
