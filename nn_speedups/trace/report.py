"""Report sections of the trace room, rendered into nn_speedups.report's markdown and terminal tables: where the time
goes per traced case, the kernel counts by activation, energy and cost, the roofline, and, between two runs,
the operators whose time grew in the cases that slowed down."""

from __future__ import annotations

import os
from pathlib import Path

from nn_speedups.core.markdown import table
from nn_speedups.trace.breakdown import CATEGORIES

DEFAULT_ACTIVATION = {"convnext-seed": "gelu-tanh"}
SLOWER = 1.05  # a case "slowed down" when its median grew by more than this factor
GROWN_OPS = 5


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.{digits}f}"
    return str(value)


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def case_label(r: dict) -> str:
    act = f"-{r['activation']}" if r.get("activation") else ""
    dtype = r.get("dtype") or ""
    variant = r["variant"] if r["variant"].endswith(dtype) else f"{r['variant']}-{dtype}"
    if "elements" in r:
        return f"{r.get('family')}: {variant} {r.get('mode', '')} n={r['elements']:,}"
    return f"{r.get('family', '')}: {r['model']}{act} bs{r['batch_size']} {variant}"


def _name(op: str) -> str:
    """An operator or kernel name short enough for a table cell (C++ kernel names carry whole template lists)."""
    from nn_speedups.trace.flame import short

    return op if len(op) <= 80 else short(op, 80)


def _link(path: str | None, text: str, link_base: Path | None) -> str:
    if not path or link_base is None:
        return "-"
    return f"[{text}]({os.path.relpath(path, link_base)})"


def where_the_time_goes(rows: list[dict], link_base: Path | None = None) -> list[tuple[str, str]]:
    traced = [r for r in rows if "trace_steps" in r or "trace_error" in r]
    if not traced:
        return []
    header = ["case", "ms (timed)", "kernels/step", "graphs", "generated kernels"]
    header += [c for c in CATEGORIES] + ["op time / step", "top operators (share of op time)"]
    if link_base is not None:
        header += ["flame chart", "trace"]
    body = []
    for r in traced:
        if "top_ops" not in r:
            body.append([case_label(r), _fmt(r.get("median_ms")), "trace failed: " + str(r.get("trace_error"))]
                        + ["-"] * (len(header) - 3))  # fmt: skip
            continue
        top = ", ".join(f"{_name(o['op'])} ({o['share']:.0%})" for o in r["top_ops"][:3])
        cells = [
            case_label(r),
            _fmt(r.get("median_ms")),
            _fmt(r.get("kernels_per_step"), 1),
            _fmt(r.get("graph_count")),
            _fmt(r.get("generated_kernels")),
            *[_pct(r.get(f"{c}_share")) for c in CATEGORIES],
            _pct(r.get("op_share_of_step")),
            top.replace("|", "/"),
        ]
        if link_base is not None:
            cells += [
                _link(r.get("trace_flame_png"), "png", link_base),
                _link(r.get("trace_engine_file") or r.get("trace_file"), "json.gz", link_base),
            ]
        body.append(cells)
    counted = sorted({r["kernels_counted"] for r in traced if r.get("kernels_counted")})
    sources = sorted({r["breakdown_source"] for r in traced if r.get("breakdown_source")})
    notes = "\nKernels counted: " + "; ".join(counted) + ".\nOp time: " + "; ".join(sources) + "."
    notes += (
        " Category shares are of the op time; 'op time / step' is the op time over the profiled step's wall time "
        "(the rest: Python, framework and profiler overhead, or idle). Profiled steps carry the profiler's "
        "overhead: latency is the timed 'ms' column.\n"
    )
    return [("Where the time goes (traced cases)", table(header, body) + notes)]


def activation_kernels(rows: list[dict]) -> list[tuple[str, str]]:
    """Seed 001's FastSwish observation: kernels per step of convnext-seed with each activation, eager and
    compiled (from traced inference rows)."""
    picked = [
        r
        for r in rows
        if r.get("model") == "convnext-seed"
        and "epoch_s_projected" not in r
        and r.get("variant") in ("eager", "compile")
        and r.get("dtype") == "fp32"
        and r.get("kernels_per_step") is not None
    ]
    if not any(r["variant"] == "compile" for r in picked):
        return []
    cells: dict[tuple, dict[str, dict]] = {}
    for r in picked:
        key = (r.get("activation") or DEFAULT_ACTIVATION["convnext-seed"], r["batch_size"])
        cells.setdefault(key, {})[r["variant"]] = r
    header = ["activation", "batch", "eager kernels/step", "compiled kernels/step", "graphs", "generated kernels",
              "eager ms", "compiled ms"]  # fmt: skip
    body = []
    for (act, batch), per in sorted(cells.items()):
        eager, comp = per.get("eager", {}), per.get("compile", {})
        body.append([act, str(batch), _fmt(eager.get("kernels_per_step"), 0), _fmt(comp.get("kernels_per_step"), 0),
                     _fmt(comp.get("graph_count")), _fmt(comp.get("generated_kernels")), _fmt(eager.get("median_ms")),
                     _fmt(comp.get("median_ms"))])  # fmt: skip
    counted = sorted({r["kernels_counted"] for r in picked})
    note = "\nKernels counted: " + "; ".join(counted) + ".\n"
    return [
        (
            "convnext-seed: kernels per step by activation (does a custom activation cost kernels?)",
            table(header, body) + note,
        )
    ]


def energy_and_cost(rows: list[dict]) -> list[tuple[str, str]]:
    shown = [
        r
        for r in rows
        if r.get("joules_per_sample") is not None
        or r.get("usd_per_million_samples") is not None
        or r.get("gpu_state_samples")
    ]
    if not shown:
        return []
    header = ["case", "J/sample", "avg W", "USD / 1M samples", "SM MHz mean (min)", "mem MHz", "max °C",
              "power limit W", "throttled"]  # fmt: skip
    body = []
    for r in shown:
        throttled = r.get("throttled")
        flag = (
            "-"
            if throttled is None
            else ("**THROTTLED**: " + ", ".join(r["gpu_throttle_reasons"]) if throttled else "no")
        )
        sm = (
            f"{_fmt(r.get('gpu_sm_mhz_mean'), 0)} ({_fmt(r.get('gpu_sm_mhz_min'), 0)})"
            if r.get("gpu_sm_mhz_mean")
            else "-"
        )
        body.append([case_label(r), _fmt(r.get("joules_per_sample"), 4), _fmt(r.get("avg_watts"), 1),
                     _fmt(r.get("usd_per_million_samples"), 4), sm, _fmt(r.get("gpu_mem_mhz_mean"), 0),
                     _fmt(r.get("gpu_temp_c_max"), 0), _fmt(r.get("gpu_power_limit_w"), 0), flag])  # fmt: skip
    sources = sorted({r["energy_source"] for r in shown if r.get("energy_source")})
    note = f"\nEnergy over the timed rounds from {', '.join(sources) or 'no counter'}.\n"
    return [("Energy, clocks and cost", table(header, body) + note)]


def roofline_table(rows: list[dict]) -> list[tuple[str, str]]:
    shown = [r for r in rows if r.get("achieved_gflops_per_s") is not None]
    if not shown:
        return []
    header = ["case", "GFLOP/s", "GB/s (trace bytes)", "FLOP/byte", "bound", "% of attainable", "peak GFLOP/s",
              "peak GB/s"]  # fmt: skip
    body = [[case_label(r), _fmt(r["achieved_gflops_per_s"], 1), _fmt(r["achieved_gbytes_per_s"], 1),
             _fmt(r["arithmetic_intensity"], 1), r["roofline_bound"], _fmt(r["roofline_pct_of_attainable"], 0) + "%",
             _fmt(r["peak_gflops_per_s"], 0), _fmt(r["peak_gbytes_per_s"], 0)] for r in shown]  # fmt: skip
    peaks = sorted({r["roofline_peaks"] for r in shown})
    note = (
        "\nAchieved rates at the timed median; bytes are the operands the traced step's operators read (outputs are "
        "not recorded: a lower bound; ONNX Runtime rows count node inputs and outputs). Above 100% of the attainable "
        "rate, part of the bytes came from cache, or the peaks were measured low on a busy machine. Peaks "
        + "; ".join(peaks)
        + ".\n"
    )
    return [("Roofline position (model-level rows with trace bytes)", table(header, body) + note)]


def sections(rows: list[dict], link_base: Path | None = None) -> list[tuple[str, str]]:
    return (
        where_the_time_goes(rows, link_base) + activation_kernels(rows) + energy_and_cost(rows) + roofline_table(rows)
    )


def _key(r: dict) -> tuple:
    return (r.get("family"), r.get("model"), r.get("activation"), r.get("variant"), r.get("dtype"), r.get("batch_size"),
            r.get("mode"), r.get("elements"))  # fmt: skip


def grown_operators(run_rows: list[dict], base_rows: list[dict], top: int = GROWN_OPS) -> str:
    """For every case slower than the baseline by more than SLOWER with traces in both runs: the operators whose
    time per (profiled) step grew most."""
    base = {_key(r): r for r in base_rows}
    parts = []
    for r in run_rows:
        b = base.get(_key(r))
        if not b or not r.get("median_ms") or not b.get("median_ms") or r["median_ms"] <= SLOWER * b["median_ms"]:
            continue
        if not r.get("op_ms_per_step") or not b.get("op_ms_per_step"):
            continue
        names = set(r["op_ms_per_step"]) | set(b["op_ms_per_step"])
        growth = sorted(
            ((n, b["op_ms_per_step"].get(n, 0.0), r["op_ms_per_step"].get(n, 0.0)) for n in names),
            key=lambda t: t[1] - t[2],
        )[:top]
        body = [
            [_name(n).replace("|", "/"), _fmt(old, 3), _fmt(new, 3), f"{new - old:+.3f}"]
            for n, old, new in growth
            if new > old
        ]
        if not body:
            continue
        title = (
            f"{case_label(r)}: {b['median_ms']:.2f} -> {r['median_ms']:.2f} ms ({r['median_ms'] / b['median_ms']:.2f}x)"
        )
        parts.append(f"\n#### {title}\n\n" + table(["operator", "baseline ms/step", "run ms/step", "change"], body))
    if not parts:
        return ""
    return (
        "\n### What got slower: operators whose time grew most\n\nCases slower than the baseline by more than "
        f"{SLOWER - 1:.0%} with traces in both runs; times per profiled step (profiler overhead included in both).\n"
        + "".join(parts)
    )
