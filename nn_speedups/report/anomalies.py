"""Anomaly flags: rows a reader should look at twice before believing them, each with what to look at.

A flag is a short code and a few words: a variant much slower than its baseline; a smaller batch whose call takes
longer than a larger batch's (per-sample cost growing faster than the batch shrinks); rounds that drift between
the first and second half, or split into two modes; a spread that makes the median uncertain; an eager model that
gives different outputs on the same inputs twice (nn_speedups.measure.baselines.repeat_fields). The shape figures
(iqr_rel, drift, slow_mode_*) are what nn_speedups.measure.timing.summarize recorded of the case's own rounds; runs
saved before it recorded them get only the flags that need no rounds. Where the suite knows why a case is slow
(`explain`), the flag says so.

records.rows() calls annotate(), so every table, the terminal report and the CSV read the same `flags` field.
"""

from __future__ import annotations

import math
from collections import defaultdict

SLOWER = 2.0  # a variant more than this many times slower than its baseline (eager, same model and batch)
DRIFT = 1.2  # the second half's median this much above (or below) the first half's
SPREAD = 0.25  # interquartile range above this share of the median
FLAG_NAMES = {
    "slower": "much slower than eager",
    "batch": "smaller batch, longer call",
    "drift": "rounds drift",
    "modes": "two modes",
    "spread": "wide spread",
    "repeat": "eager not repeatable",
}


# oneDNN's ISA caps (ONEDNN_MAX_CPU_ISA) below AVX512_CORE_BF16: under them oneDNN uses no bf16 instruction
ONEDNN_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}
BF16_FEATURES = {"avx512_bf16", "amx_bf16"}


def effective_isa(machine_info: dict) -> set[str]:
    """The CPU features a run could use: machine_info's cpu_isa, less the bf16 ones when the run record's environment
    capped oneDNN below them (ONEDNN_MAX_CPU_ISA, or its old name DNNL_MAX_CPU_ISA)."""
    isa = set(machine_info.get("cpu_isa") or [])
    env = ((machine_info.get("record") or {}).get("env")) or {}
    cap = (env.get("ONEDNN_MAX_CPU_ISA") or env.get("DNNL_MAX_CPU_ISA") or "").upper()
    return isa - BF16_FEATURES if cap in ONEDNN_WITHOUT_BF16 else isa


def explain(row: dict, isa: set[str]) -> str:
    """What the suite knows of why such a case is slow on a machine with CPU features `isa`, or ""."""
    dtype, device = row.get("dtype") or "", row.get("device") or ""
    native_bf16 = bool(BF16_FEATURES & set(isa))
    if device == "cpu" and dtype == "bf16" and not native_bf16:
        return (
            "this CPU has no native bf16 instructions (neither AVX512-BF16 nor AMX-BF16, or oneDNN was capped below "
            "them), so oneDNN runs every "
            "bf16 matmul on a slow emulated path that costs more than the fp32 one; on a CPU with them the same "
            "case runs faster than eager (docs/reports.md); see the op breakdown with --traces"
        )
    return ""


def _function(row: dict) -> str:
    return (row.get("name") or "").split("[")[0]


def _label(row: dict) -> str:
    dtype = row.get("dtype") or ""
    variant = row.get("variant") or ""
    return variant if variant.endswith(dtype) else f"{variant}-{dtype}"


def row_flags(row: dict, isa: set[str] = frozenset()) -> list[str]:
    """The flags of one row that need only the row itself: slower than its baseline, drift, modes, spread."""
    flags = []
    speedup = row.get("speedup_vs_eager")
    if speedup and row.get("variant") != "eager" and speedup < 1 / SLOWER:
        why = explain(row, isa)
        text = f"{1 / speedup:.1f}x slower than eager ({row.get('eager_median_ms', 0):.3g} ms)"
        flags.append(f"slower: {text}: " + (why or "see where the time goes with --traces"))
    drift = row.get("drift")
    if drift and abs(math.log(drift)) > math.log(DRIFT):
        flags.append(
            f"drift: the second half of the rounds ran at {drift:.2f}x the first half's median (caches or clocks "
            "warming, other load on the machine): re-run on an idle machine"
        )
    if row.get("slow_mode_share") and row.get("slow_mode_ratio"):
        flags.append(
            f"modes: {row['slow_mode_share']:.0%} of the rounds are {row['slow_mode_ratio']:.2f}x slower than the "
            "rest (a second code path, a background process, frequency steps): the median is one mode's"
        )
    if row.get("variant") == "eager" and row.get("eager_deterministic") is False:
        flags.append(
            f"repeat: eager gave different outputs on the same inputs twice (max |diff| "
            f"{row.get('eager_repeat_max_abs', 0):.3g}): nondeterministic kernels; every check compares with one run"
        )
    iqr = row.get("iqr_rel")
    if iqr is not None and iqr > SPREAD:
        flags.append(f"spread: the rounds' interquartile range is {iqr:.0%} of the median: compare medians with care")
    return flags


def annotate(run_rows: list[dict], isa: set[str] = frozenset()) -> list[dict]:
    """Set every row's `flags` (a list of "code: text", empty when nothing is odd) and return the rows; `isa`: the
    run's CPU features (machine_info cpu_isa), for explain()."""
    for row in run_rows:
        row["flags"] = row_flags(row, isa)
    series = defaultdict(list)  # the same variant of the same model at each batch
    for row in run_rows:
        if row.get("batch_size") and row.get("median_ms") and "world_size" not in row:
            key = (row.get("family"), _function(row), row.get("model"), row.get("activation"), _label(row))
            series[key].append(row)
    for mine in series.values():
        mine.sort(key=lambda r: r["batch_size"])
        for i, small in enumerate(mine):
            larger = [r for r in mine[i + 1 :] if r["median_ms"] < small["median_ms"]]
            if larger:
                big = max(larger, key=lambda r: r["batch_size"])
                small["flags"].append(
                    f"batch: a batch-{small['batch_size']} call takes longer than a batch-{big['batch_size']} one "
                    f"({small['median_ms']:.3g} ms against {big['median_ms']:.3g} ms): the per-sample cost grows "
                    "faster than the batch shrinks, a shape-specific slow path"
                )
    return run_rows


def codes(row: dict) -> list[str]:
    return [flag.split(":", 1)[0] for flag in row.get("flags") or []]
