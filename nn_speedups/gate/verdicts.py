"""The comparison: a baseline run against a head run into one Verdict per case, under the gate's policy and Options.

The policy (minimum effects, significance, tolerances) is explained in nn_speedups.gate's docstring, the formulas in
nn_speedups.gate.stats; --confirm re-runs (nn_speedups.gate.confirm) revise these verdicts afterwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nn_speedups.gate import stats as gs
from nn_speedups.gate.runs import CaseRun, Run

if TYPE_CHECKING:
    from nn_speedups.gate.thresholds import Thresholds

# ------------------------------------------------------------------------------------------------ policy

# The smallest slowdown worth failing a pull request for, per device kind and bench family ("*": the others), as a
# fraction. A policy, not a noise estimate: calibration can raise a case's threshold above it, never lower it.
# CUDA runners are steady enough for 5%; the FastSwish kernel benches time microsecond launches (10%); a shared
# 2-core CPU moves more (10%), and its training steps get the fewest rounds (15%).
MIN_EFFECT = {
    "cuda": {"*": 0.05, "fastswish": 0.10},
    "cpu": {"*": 0.10, "training": 0.15, "fastswish": 0.15},
}
ALPHA = 0.01  # one-sided Mann-Whitney U significance over the rounds (5 against 5 rounds can reach it: p = 1/252)
SIGMAS = 3.5  # threshold = SIGMAS x the comparison's between-run noise (about 2 in 10,000 per case if normal)
CONFIRM_RUNS = 6  # --confirm: the most pairs of fresh processes per case (decisions need confirm.MIN_PAIRS)
ACCURACY_TOLERANCE = {"*": 0.01}  # per family: how far top1 / top5 / top1_agreement may drop (absolute)
ACCURACY_KEYS = ("top1", "top5", "top1_agreement")
SIZE_GROWTH = 0.10  # model_size_mb
MEMORY_GROWTH = 0.10  # peak_host_mb, peak_device_mb ...
MEMORY_FLOOR_MB = {"peak_host_mb": 64.0, "peak_device_mb": 16.0}  # ... and at least this many MB (RSS is coarse)
BLIND = 0.50  # a case whose threshold is above +50% is "noisy", not "unchanged": the noise hides real slowdowns
ENGAGEMENT_KEYS = ("info_provider", "info_backend", "info_compile_mode")  # must not change
FAILING = ("failed", "gone", "regressed", "slower")
ORDER = ("failed", "gone", "regressed", "slower", "noisy", "faster", "new", "unchanged")


def min_effect(device: str, family: str, override: float | None = None) -> float:
    if override is not None:
        return override
    table = MIN_EFFECT["cuda" if str(device).startswith("cuda") else "cpu"]
    return table.get(family, table["*"])


@dataclass
class Options:
    alpha: float = ALPHA
    sigmas: float = SIGMAS
    confirm: bool = False
    repeats: int = CONFIRM_RUNS
    rerun_baseline: bool = False  # --confirm-baseline: re-runs on both sides
    allow_gone: bool = False
    min_effect: float | None = None  # one minimum effect for every case instead of MIN_EFFECT
    confirm_all: bool = False  # re-run every timed case, not only those one run says are slower
    seed: int | None = None  # --confirm-seed: the order of the sides in the re-run pairs (None: drawn, recorded)

    @property
    def confirm_mode(self) -> str:
        return "confirm-baseline" if self.rerun_baseline else "confirm"


@dataclass
class Verdict:
    case: str
    verdict: str
    why: str
    family: str = ""
    device: str = ""
    change: float | None = None  # head / baseline - 1 (timing)
    ci: tuple[float, float] | None = None  # 95% interval of `change`
    ci_kind: str = ""
    threshold: float | None = None  # the slowdown (fraction) above which this case is slower
    p: float | None = None
    baseline_ms: float | None = None
    head_ms: float | None = None
    rounds: tuple[int, int] | None = None
    noise: str = "uncalibrated"  # where the threshold's noise came from
    medians_only: bool = False
    problems: list[str] = field(default_factory=list)  # non-timing regressions
    timing: str | None = None  # the timing verdict alone
    confirm: dict | None = None

    @property
    def failing(self) -> bool:
        return self.verdict in FAILING


# ------------------------------------------------------------------------------------------------ verdicts


def _num(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _device(case: CaseRun, run: Run) -> str:
    device = str(case.info.get("device") or run.device)
    return "cuda" if device.startswith("cuda") else "cpu"


def _pct(x: float | None, sign: bool = True) -> str:
    """A fraction as a percentage, the way every verdict's why (and the rendered tables) write it."""
    if x is None:
        return "-"
    digits = 0 if abs(x) >= 1 else 1
    return f"{100 * x:+.{digits}f}%" if sign else f"{100 * x:.{digits}f}%"


def non_timing(base: CaseRun, head: CaseRun, thresholds: Thresholds | None) -> list[str]:
    """What regressed besides time, each with its numbers."""
    b, h, problems = base.info, head.info, []
    breaks_b, breaks_h = b.get("info_graph_breaks"), h.get("info_graph_breaks")
    if _num(breaks_h) and breaks_h > (breaks_b if _num(breaks_b) else 0):
        problems.append(f"graph breaks {breaks_b if _num(breaks_b) else 0} -> {breaks_h}")
    for key, what in (("info_graphs", "graphs (a recompile or a split)"), ("info_recompiles", "recompiles")):
        if _num(b.get(key)) and _num(h.get(key)) and h[key] > b[key]:
            problems.append(f"{what} {b[key]} -> {h[key]}")
    for key in ENGAGEMENT_KEYS:
        if b.get(key) is not None and h.get(key) != b.get(key):
            problems.append(f"{key.removeprefix('info_')} {b[key]} -> {h.get(key)}: did not engage as before")
    if _num(b.get("info_quantized_ops")) and (h.get("info_quantized_ops") or 0) < b["info_quantized_ops"]:
        problems.append(f"quantized ops {b['info_quantized_ops']} -> {h.get('info_quantized_ops') or 0}")
    if b.get("info_io_binding") is True and h.get("info_io_binding") is not True:
        problems.append("I/O binding no longer used")
    tolerance = ACCURACY_TOLERANCE.get(head.family, ACCURACY_TOLERANCE["*"])
    for key in ACCURACY_KEYS:
        if _num(b.get(key)) and _num(h.get(key)):
            allowed = max(tolerance, thresholds.spread(head, key) if thresholds else 0.0)
            if b[key] - h[key] > allowed:
                problems.append(
                    f"{key} {100 * b[key]:.1f}% -> {100 * h[key]:.1f}% "
                    f"({100 * (h[key] - b[key]):+.1f} points, tolerance {100 * allowed:.1f})"
                )
    if _num(b.get("model_size_mb")) and _num(h.get("model_size_mb")) and b["model_size_mb"] > 0:
        growth = h["model_size_mb"] / b["model_size_mb"] - 1
        if growth > SIZE_GROWTH:
            problems.append(f"model_size_mb {b['model_size_mb']:.1f} -> {h['model_size_mb']:.1f} ({growth:+.0%})")
    for key, floor in MEMORY_FLOOR_MB.items():
        if _num(b.get(key)) and _num(h.get(key)) and b[key] > 0:
            growth = h[key] / b[key] - 1
            allowed = max(MEMORY_GROWTH, 1.5 * thresholds.spread(head, key) if thresholds else 0.0)
            if growth > allowed and h[key] - b[key] > floor:
                problems.append(f"{key} {b[key]:.0f} -> {h[key]:.0f} MB ({growth:+.0%}, allowed {allowed:.0%})")
    return problems


def _timing(v: Verdict, base: CaseRun, head: CaseRun, noise: float | None, limit: float, alpha: float) -> None:
    """Fill v's timing fields and v.timing / v.why for one run against one run, with threshold `limit` (log)."""
    if base.times is not None and head.times is not None:
        s = gs.shift(base.times, head.times)
    else:
        s = gs.summary_shift((base.median_s, base.iqr_s, base.rounds), (head.median_s, head.iqr_s, head.rounds))
    low, high = gs.widen(s, noise) if noise is not None else (s.low, s.high)
    v.change, v.ci, v.threshold = gs.pct(s.effect), (gs.pct(low), gs.pct(high)), gs.pct(limit)
    v.ci_kind = "rounds and between-run noise" if noise is not None else "rounds only: between-run noise not calibrated"
    v.baseline_ms, v.head_ms, v.rounds, v.medians_only = base.median_ms, head.median_ms, s.rounds, s.medians_only
    only = " (medians only: saved without --benchmark-save-data)" if s.medians_only else ""
    rounds = f"{s.rounds[0]} vs {s.rounds[1]} rounds"
    size = f"{_pct(v.change)} (medians {base.median_ms:.3g} -> {head.median_ms:.3g} ms)"
    if s.effect > limit or s.effect < -limit:
        direction, p = ("slower", s.p_slower) if s.effect > 0 else ("faster", s.p_faster)
        v.p = p
        if p < alpha:
            v.timing = direction
            v.why = f"{size}, beyond the {_pct(v.threshold, sign=False)} threshold; p={p:.2g} over {rounds}{only}"
        elif not s.decidable(alpha):
            v.timing = "noisy"
            v.why = f"{size} but {rounds} can never reach p < {alpha:g}: give the case more timing budget{only}"
        else:
            v.timing = "noisy"
            v.why = f"{size} but not significant over {rounds} (p={p:.2g} >= {alpha:g}){only}"
        return
    v.p = min(s.p_slower, s.p_faster)
    if limit > math.log1p(BLIND):
        v.timing = "noisy"
        v.why = (
            f"{size}; this case's between-run noise puts its threshold at {_pct(v.threshold, sign=False)}: the gate "
            f"cannot see slowdowns below that here (calibrate on a quieter machine, or use --confirm){only}"
        )
    elif (s.high - s.low) / 2 > limit:
        v.timing = "noisy"
        v.why = (
            f"{size}, but its rounds are too spread to resolve the {_pct(v.threshold, sign=False)} threshold "
            f"(rounds' 95% interval {_pct(gs.pct(s.low))}..{_pct(gs.pct(s.high))}, {rounds}){only}"
        )
    else:
        v.timing = "unchanged"
        v.why = f"{size}, within ±{_pct(v.threshold, sign=False)}{only}"


def compare(base: Run, head: Run, options: Options, thresholds: Thresholds | None = None) -> list[Verdict]:
    """One verdict per case of either run (before any --confirm re-runs)."""
    verdicts = []
    names = list(dict.fromkeys([*base.cases, *head.cases, *head.failed]))
    for name in names:
        b, h = base.cases.get(name), head.cases.get(name)
        case = h or b
        family = case.family if case else ""
        device = _device(case, head if h else base) if case else head.device
        v = Verdict(name, "", "", family=family, device=device)
        if name in head.failed:
            v.verdict = "failed"
            before = "passed in the baseline" if b else ("failed in the baseline too" if name in base.failed else "new")
            v.why = f"fails in this run ({before}): {head.failed[name]}"
        elif h is None:
            v.verdict = "gone"
            reason = head.skipped.get(name)
            if reason:
                v.why = f"in the baseline, skipped in this run: {reason}"
            elif head.meta is None:
                v.why = "in the baseline, not in this run (it does not record failures: failed, skipped or removed?)"
            else:
                v.why = "in the baseline, not in this run: deselected or removed"
            if options.allow_gone:
                v.why += " (accepted: --allow-gone)"
        elif b is None:
            v.verdict, v.head_ms = "new", h.median_ms
            v.why = "not in the baseline" + (f" (it failed there: {base.failed[name]})" if name in base.failed else "")
        else:
            noise, v.noise = thresholds.noise(h, device) if thresholds else (None, "uncalibrated")
            floor = min_effect(device, family, options.min_effect)
            _timing(v, b, h, noise, gs.threshold(floor, noise, options.sigmas), options.alpha)
            v.problems = non_timing(b, h, thresholds)
            v.verdict = "regressed" if v.problems else v.timing
            if v.problems:
                v.why = "; ".join(v.problems) + f" (timing: {v.timing}, {v.why})"
        verdicts.append(v)
    return sorted(verdicts, key=lambda v: (ORDER.index(v.verdict), v.case))
