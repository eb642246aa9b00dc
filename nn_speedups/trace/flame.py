"""A PNG flame chart of one step of a saved trace, for people who would rather look than open a tool: time runs
left to right, nesting grows downwards, one band per thread (CPU) or stream (GPU), boxes coloured by category."""

from __future__ import annotations

import re
from pathlib import Path

from nn_speedups.trace import chrome
from nn_speedups.trace.breakdown import CATEGORIES, INDUCTOR_CPP_KERNEL, category

COLOURS = {
    "matmul": "#d62728",
    "elementwise": "#2ca02c",
    "memcpy": "#ff7f0e",
    "fused": "#9467bd",
    "other": "#1f77b4",
    "step": "#bbbbbb",
}
MAX_ROWS = 40


def short(name: str, limit: int = 28) -> str:
    """A readable label: no C++ return type or template arguments, no namespaces, at most `limit` characters."""
    name = re.sub(r"^void ", "", name)
    name = re.split(r"[<(]", name, maxsplit=1)[0] or name
    name = name.rsplit("::", 1)[-1]
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _label(e: dict) -> str:
    if e.get("cat") == "Node":
        return e.get("args", {}).get("op_name") or e["name"].removesuffix("_kernel_time")
    if e.get("cat") == "inductor_kernel":
        return INDUCTOR_CPP_KERNEL
    return e.get("name", "?")


def _colour(e: dict) -> str:
    if e.get("cat") in ("user_annotation", "Session"):
        return COLOURS["step"]
    if e.get("cat") == "cpu_op" and "::" not in e.get("name", ""):
        return COLOURS["step"]  # framework ranges: Dynamo's cache lookup, autograd's evaluate_function, ...
    return COLOURS[category(_label(e))]


def pick_step(windows: list[dict], step: int | None = None) -> dict:
    """The step to draw: `step` (0-based) when given, else the one of median duration."""
    if step is not None:
        return windows[step]
    return sorted(windows, key=lambda w: w["dur"])[len(windows) // 2]


def draw(trace: str | Path, out: str | Path, title: str = "", step: int | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection
    from matplotlib.patches import Patch

    events = chrome.load(trace)
    windows = chrome.step_windows(events)
    if not windows:
        raise ValueError(f"{trace}: no steps to draw (no ProfilerStep#N or model_run events)")
    window = pick_step(windows, step)
    t0, span = window["ts"], max(window["dur"], 1e-3)
    bands = []
    for lane, lane_events in sorted(chrome.lanes(chrome.within(events, window), window).items(), key=str):
        nested = chrome.nest(lane_events)
        rows = min(MAX_ROWS, 1 + max(depth for _e, depth, _s in nested))
        bands.append((lane, rows, [(e, d) for e, d, _s in nested if d < MAX_ROWS]))
    total_rows = sum(rows for _lane, rows, _boxes in bands)
    fig, ax = plt.subplots(figsize=(14, min(14, 1.2 + 0.22 * total_rows)))
    y, ticks, verts, colours = 0.0, [], [], []
    for lane, rows, boxes in bands:
        for e, depth in boxes:
            x, w = (e["ts"] - t0) / 1e3, max(e["dur"], 0.01) / 1e3
            top = y + depth
            verts.append([(x, top), (x + w, top), (x + w, top + 0.9), (x, top + 0.9)])
            colours.append(_colour(e))
            if w > 0.06 * span / 1e3:
                ax.text(x + w / 2, top + 0.45, short(_label(e)), ha="center", va="center", fontsize=6, clip_on=True)
        ticks.append((y + rows / 2, f"pid {lane[0]}\ntid {lane[1]}"))
        y += rows + 0.5
    ax.add_collection(PolyCollection(verts, facecolors=colours, linewidths=0))
    ax.set_ylim(y, -0.2)
    ax.set_xlim(0, span / 1e3)
    ax.set_yticks([t for t, _ in ticks], [label for _, label in ticks], fontsize=6)
    ax.set_xlabel("ms from the start of the step")
    ax.set_title(f"{title}  ({window.get('name', 'step')}: {span / 1e3:.2f} ms, profiled)", fontsize=9, loc="left")
    handles = [Patch(color=COLOURS[c], label=c) for c in CATEGORIES] + [Patch(color=COLOURS["step"], label="ranges")]
    ax.legend(handles=handles, fontsize=7, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=6, frameon=False)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
