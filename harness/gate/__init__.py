"""The regression gate: one verdict per case between a baseline run and a head run, each with why.

    python -m harness.gate BASELINE.json HEAD.json [--thresholds T.json] [--confirm] [--summary $GITHUB_STEP_SUMMARY]
    python -m harness.gate --calibrate RUN1.json RUN2.json RUN3.json ... [--out reports/gate-thresholds.json]
    python -m harness.gate --aa-study reports/gate-aa --runs 10 -- benches/test_inference.py

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
added until the pairs' interval decides or `--confirm-runs` pairs are spent (harness.gate.confirm; the formulas are
in harness.gate.stats).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness.gate import stats as gs
from harness.gate.confirm import MIN_PAIRS, confirm_threshold, run_confirm, suspects  # noqa: F401 (re-exported)
from harness.gate.runs import CaseRun, GateError, Run, check_same_machine, identity, load_run

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


# ------------------------------------------------------------------------------------------------ thresholds


class Thresholds:
    """A thresholds file written by --calibrate: per case (and pooled per device/family) between-run noise, and the
    spread memory and accuracy showed in the A/A runs."""

    KIND = "nn-speedups gate thresholds"

    def __init__(self, data: dict, path: str = "") -> None:
        self.data, self.path = data, path
        self.cases: dict = data.get("cases") or {}
        self.families: dict = data.get("families") or {}

    @classmethod
    def load(cls, path: str | Path) -> Thresholds:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise GateError(
                f"--thresholds {path}: no such file; write one with python -m harness.gate --calibrate RUN1.json "
                "RUN2.json RUN3.json ... --out PATH"
            ) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise GateError(f"--thresholds {path}: not a JSON thresholds file ({error})") from None
        if not isinstance(data, dict) or data.get("kind") != cls.KIND or not isinstance(data.get("cases"), dict):
            raise GateError(f"--thresholds {path}: not a thresholds file written by python -m harness.gate --calibrate")
        return cls(data, str(path))

    def noise(self, case: CaseRun, device: str) -> tuple[float | None, str]:
        entry = self.cases.get(case.name)
        if entry and isinstance(entry.get("noise"), (int, float)):
            return float(entry["noise"]), f"calibrated on {self.data.get('run_count', '?')} runs"
        pooled = self.families.get(f"{device}/{case.family}")
        if pooled and isinstance(pooled.get("noise"), (int, float)):
            return float(pooled["noise"]), f"{device}/{case.family} calibrated noise (case not calibrated)"
        return None, "uncalibrated"

    def spread(self, case: CaseRun, key: str) -> float:
        value = ((self.cases.get(case.name) or {}).get("spread") or {}).get(key)
        return float(value) if _num(value) else 0.0


# ------------------------------------------------------------------------------------------------ verdicts


def _num(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _device(case: CaseRun, run: Run) -> str:
    device = str(case.info.get("device") or run.device)
    return "cuda" if device.startswith("cuda") else "cpu"


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


# ------------------------------------------------------------------------------------------------ --calibrate

MEMORY_KEYS = tuple(MEMORY_FLOOR_MB) + ("model_size_mb",)


def calibrate(runs: list[Run], options: Options) -> dict:
    """Per case between-run noise from repeated unchanged runs, the smallest slowdown each can detect, and the
    spread of memory and accuracy fields; the thresholds file --thresholds reads."""
    names = [n for n in dict.fromkeys(n for r in runs for n in r.cases) if sum(n in r.cases for r in runs) >= 2]
    raw: dict[str, tuple] = {}
    for name in names:
        cases = [r.cases[name] for r in runs if name in r.cases]
        raw[name] = (cases, *gs.run_noise([math.log(c.median_s) for c in cases]))
    pooled: dict[str, list[float]] = {}
    for cases, s, _ in raw.values():
        pooled.setdefault(f"{_device(cases[0], runs[0])}/{cases[0].family}", []).append(s)
    families = {k: {"noise": statistics.median(v), "cases": len(v)} for k, v in pooled.items()}
    out_cases = {}
    for name, (cases, s, ucb) in raw.items():
        device, family = _device(cases[0], runs[0]), cases[0].family
        # a case's own few runs can look luckily quiet: never below half its family's typical noise
        noise = max(ucb, 0.5 * families[f"{device}/{family}"]["noise"])
        floor = min_effect(device, family, options.min_effect)
        spread = {}
        for key in MEMORY_KEYS:
            values = [c.info[key] for c in cases if _num(c.info.get(key)) and c.info[key] > 0]
            if len(values) >= 2:
                spread[key] = max(values) / min(values) - 1
        for key in ACCURACY_KEYS:
            values = [c.info[key] for c in cases if _num(c.info.get(key))]
            if len(values) >= 2:
                spread[key] = max(values) - min(values)
        within = [gs.within_spread(c.times) for c in cases if c.times]
        out_cases[name] = {
            "family": family,
            "device": device,
            "runs": len(cases),
            "median_ms": statistics.median(c.median_ms for c in cases),
            "rounds": int(statistics.median(c.rounds for c in cases)),
            "within_run_spread": statistics.median(within) if within else None,
            "between_run_sd": s,
            "noise": noise,
            "threshold": gs.pct(gs.threshold(floor, noise, options.sigmas)),
            "confirm_threshold": gs.pct(gs.threshold(floor, noise, options.sigmas, "confirm", options.repeats)),
            "detectable": gs.detectable(floor, noise, options.sigmas),
            "detectable_confirm": gs.detectable(floor, noise, options.sigmas, "confirm", options.repeats),
            "spread": spread,
        }
    return {
        "kind": Thresholds.KIND,
        "version": 1,
        "runs": [r.path for r in runs],
        "run_count": len(runs),
        "machine": identity(runs[0].machine_info),
        "sigmas": options.sigmas,
        "confirm_runs": options.repeats,
        "noise_ucb": gs.NOISE_UCB,
        "families": families,
        "cases": out_cases,
    }


def render_calibration(data: dict) -> str:
    r = data["confirm_runs"]
    header = ["case", "runs", "median ms", "rounds", "within-run spread", "between-run sd", "noise used",
              "threshold", f"threshold --confirm ({r})", "detects", f"detects --confirm ({r})"]  # fmt: skip
    body = []
    for name, c in sorted(data["cases"].items()):
        within = "-" if c["within_run_spread"] is None else f"{100 * c['within_run_spread']:.1f}%"
        body.append([_short(name), str(c["runs"]), f"{c['median_ms']:.3g}", str(c["rounds"]), within,
                     f"{100 * c['between_run_sd']:.1f}%", f"{100 * c['noise']:.1f}%", _pct(c["threshold"], False),
                     _pct(c["confirm_threshold"], False), _pct(c["detectable"], False),
                     _pct(c["detectable_confirm"], False)])  # fmt: skip
    families = ", ".join(f"{k} {100 * v['noise']:.1f}% ({v['cases']} cases)" for k, v in data["families"].items())
    return (
        f"Calibrated on {data['run_count']} unchanged runs; typical between-run sd per family: {families}.\n"
        f"threshold = max(minimum effect, {data['sigmas']} x noise x sqrt(2)); --confirm: x sqrt(1 + 1/{r}); "
        "noise = the case's between-run sd of log medians at its 80% upper confidence bound, at least half its "
        "family's; 'detects': the slowdown caught 95% of the time.\n\n" + _table(header, body)
    )


# ------------------------------------------------------------------------------------------------ rendering


def _pct(x: float | None, sign: bool = True) -> str:
    if x is None:
        return "-"
    digits = 0 if abs(x) >= 1 else 1
    return f"{100 * x:+.{digits}f}%" if sign else f"{100 * x:.{digits}f}%"


def _short(name: str) -> str:
    return name.rsplit("::", 1)[-1]


def _table(header: list[str], body: list[list[str]]) -> str:
    cell = lambda s: str(s).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(cell(c) for c in row) + " |" for row in body]) + "\n"


def counts(verdicts: list[Verdict]) -> dict[str, int]:
    return {k: sum(v.verdict == k for v in verdicts) for k in ORDER}


def failing(verdicts: list[Verdict], options: Options) -> list[Verdict]:
    return [v for v in verdicts if v.failing and not (v.verdict == "gone" and options.allow_gone)]


def headline(verdicts: list[Verdict], options: Options) -> str:
    c = counts(verdicts)
    result = "FAIL" if failing(verdicts, options) else "PASS"
    parts = ", ".join(f"{n} {k}" for k, n in c.items() if n)
    return f"{result}: {parts} ({len(verdicts)} cases)"


def _row(v: Verdict) -> list[str]:
    ci = f"{_pct(v.ci[0])}..{_pct(v.ci[1])}" if v.ci else "-"
    return [v.verdict, f"`{_short(v.case)}`", _pct(v.change), ci, _pct(v.threshold, False), v.why]


def markdown(verdicts: list[Verdict], options: Options, title: str, notes: list[str]) -> str:
    header = ["verdict", "case", "change", "95% CI", "threshold", "why"]
    shown = [v for v in verdicts if v.verdict != "unchanged"]
    quiet = [v for v in verdicts if v.verdict == "unchanged"]
    text = f"### Regression gate: {headline(verdicts, options)}\n\n{title}\n\n"
    text += "".join(f"- {n}\n" for n in notes) + ("\n" if notes else "")
    if shown:
        text += _table(header, [_row(v) for v in shown])
    if quiet:
        text += f"\n<details><summary>{len(quiet)} unchanged</summary>\n\n{_table(header, [_row(v) for v in quiet])}"
        text += "\n</details>\n"
    return text + "\n"


def terminal(verdicts: list[Verdict], options: Options, title: str, notes: list[str], verbose: bool) -> str:
    lines = [f"harness.gate: {headline(verdicts, options)}", title, *[f"  note: {n}" for n in notes], ""]
    for v in verdicts:
        if v.verdict == "unchanged" and not verbose:
            continue
        ci = f" (95% CI {_pct(v.ci[0])}..{_pct(v.ci[1])}, {v.ci_kind})" if v.ci and v.verdict == "slower" else ""
        lines.append(f"{v.verdict.upper():10} {_short(v.case)}{ci}")
        lines.append(f"{'':10} {v.why}")
    quiet = counts(verdicts)["unchanged"]
    if quiet and not verbose:
        lines.append(f"{quiet} unchanged case(s) not listed (--verbose lists them)")
    return "\n".join(lines) + "\n"


def to_json(verdicts, options: Options, base: Run, head: Run, thresholds, notes: list[str]) -> dict:
    return {
        "result": "fail" if failing(verdicts, options) else "pass",
        "baseline": base.path,
        "head": head.path,
        "thresholds": thresholds.path if thresholds else None,
        "options": asdict(options),
        "counts": counts(verdicts),
        "notes": notes,
        "cases": [asdict(v) for v in verdicts],
    }


# ------------------------------------------------------------------------------------------------ the CLI


def gate(args: argparse.Namespace, log) -> int:
    if len(args.runs) != 2:
        raise GateError("give two runs: python -m harness.gate BASELINE.json HEAD.json (or --calibrate RUN ...)")
    base, head = load_run(args.runs[0]), load_run(args.runs[1])
    notes = check_same_machine([base, head], args.allow_machine_change)
    thresholds = Thresholds.load(args.thresholds) if args.thresholds else None
    if thresholds:
        notes += check_same_machine([base, _as_run(thresholds)], args.allow_machine_change)
    else:
        notes.append(
            "uncalibrated: thresholds are the minimum effects alone and between-run noise is unknown; calibrate with "
            "python -m harness.gate --calibrate on repeated unchanged runs, and/or use --confirm"
        )
    for run in (base, head):
        if not run.has_data:
            notes.append(
                f"{Path(run.path).name} was saved without round data: medians-only decisions (marked) from the saved "
                "IQRs; save runs with --benchmark-save-data"
            )
    options = _options(args)
    if args.confirm_baseline and not Path(args.confirm_baseline).is_dir():
        raise GateError(f"--confirm-baseline {args.confirm_baseline}: not a folder (a checkout of the baseline)")
    verdicts = compare(base, head, options, thresholds)
    if options.confirm:
        notes += run_confirm(verdicts, base, head, options, thresholds, args.confirm_baseline, log)
    title = f"Baseline `{base.path}` against head `{head.path}`; " + (
        f"thresholds calibrated in `{thresholds.path}`" if thresholds else "uncalibrated thresholds"
    )
    print(terminal(verdicts, options, title, notes, args.verbose), end="")
    text = markdown(verdicts, options, title, notes)
    _write(args.markdown, text)
    _write(args.json, json.dumps(to_json(verdicts, options, base, head, thresholds, notes), indent=1) + "\n")
    if args.summary:
        with open(args.summary, "a") as f:
            f.write(text)
    return 1 if failing(verdicts, options) else 0


def _as_run(thresholds: Thresholds) -> Run:
    machine = thresholds.data.get("machine") or {}
    setup = {k: machine.get(k) for k in ("profile", "device", "image_size")}
    info = {**machine, "nn_speedups": setup}
    return Run(thresholds.path, info, {})


def _write(path: str | None, text: str) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)


def _options(args) -> Options:
    if args.alpha <= 0 or args.alpha >= 0.5 or args.sigmas <= 0 or args.confirm_runs < MIN_PAIRS:
        raise GateError(f"--alpha must be in (0, 0.5), --sigmas > 0, --confirm-runs >= {MIN_PAIRS} (pairs to decide)")
    if args.min_effect is not None and not 0 <= args.min_effect < 10:
        raise GateError(f"--min-effect {args.min_effect}: a fraction, e.g. 0.1 for 10%")
    return Options(
        alpha=args.alpha,
        sigmas=args.sigmas,
        confirm=args.confirm or bool(args.confirm_baseline) or args.confirm_all,
        repeats=args.confirm_runs,
        rerun_baseline=bool(args.confirm_baseline),
        allow_gone=args.allow_gone,
        min_effect=args.min_effect,
        confirm_all=args.confirm_all,
        seed=getattr(args, "confirm_seed", None),
    )


def calibrate_cli(args, log) -> int:
    if len(args.runs) < 2:
        raise GateError("--calibrate needs at least two unchanged runs of the same code (three or more are better)")
    runs = [load_run(p) for p in args.runs]
    for note in check_same_machine(runs, args.allow_machine_change):
        log(f"note: {note}")
    missing = [Path(r.path).name for r in runs if not r.has_data]
    if missing:
        log(f"note: {', '.join(missing)} saved without round data: within-run spread unknown (--benchmark-save-data)")
    data = calibrate(runs, _options(args))
    if not data["cases"]:
        raise GateError("--calibrate: no case appears in two of these runs")
    print(render_calibration(data), end="")
    out = args.out or "reports/gate-thresholds.json"
    _write(out, json.dumps(data, indent=1) + "\n")
    print(f"written: {out} (use it with --thresholds {out})")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m harness.gate",
        description="A regression gate for pytest-benchmark runs of this suite: one verdict per case, with why.",
        epilog="Exit codes: 0 pass, 1 a regression, 2 bad input. See README.md, 'Catching regressions'.",
    )
    p.add_argument("runs", nargs="*", help="BASELINE HEAD (run files or storage folders); with --calibrate: the runs")
    p.add_argument("--thresholds", help="a thresholds file written by --calibrate")
    p.add_argument("--confirm", action="store_true", help="re-run suspected slowdowns in fresh processes first")
    p.add_argument(
        "--confirm-runs",
        type=int,
        default=CONFIRM_RUNS,
        help=f"the most pairs of fresh processes per case (default {CONFIRM_RUNS}; {MIN_PAIRS} before deciding)",
    )
    p.add_argument("--confirm-seed", type=int, help="seed of the randomized order of the sides in the re-run pairs")
    p.add_argument(
        "--confirm-baseline",
        metavar="DIR",
        help="a checkout of the baseline's commit: re-run the suspects there too, in pairs (implies --confirm)",
    )
    p.add_argument(
        "--confirm-all",
        action="store_true",
        help="re-run every timed case, not only the suspects (a drifting runner; best with --confirm-baseline)",
    )
    p.add_argument("--alpha", type=float, default=ALPHA, help=f"one-sided significance level (default {ALPHA})")
    p.add_argument("--sigmas", type=float, default=SIGMAS, help=f"threshold in noise sigmas (default {SIGMAS})")
    p.add_argument("--min-effect", type=float, help="one minimum effect (fraction) for every case, e.g. 0.05")
    p.add_argument("--allow-machine-change", action="store_true", help="compare runs of different machines anyway")
    p.add_argument("--allow-gone", action="store_true", help="cases missing from the head run do not fail the gate")
    p.add_argument("--json", default="reports/gate.json", help="verdicts as JSON (default reports/gate.json)")
    p.add_argument("--markdown", default="reports/gate.md", help="the verdict table (default reports/gate.md)")
    p.add_argument("--summary", help="append the verdict table here, e.g. $GITHUB_STEP_SUMMARY")
    p.add_argument("--verbose", action="store_true", help="list unchanged cases too")
    p.add_argument("--calibrate", action="store_true", help="calibrate thresholds from repeated unchanged runs")
    p.add_argument("--out", help="--calibrate: the thresholds file (default reports/gate-thresholds.json)")
    study = p.add_argument_group("A/A study (python -m harness.gate --aa-study DIR [options] -- PYTEST ARGS)")
    study.add_argument("--aa-study", metavar="DIR", help="run, calibrate and compare repeated unchanged runs")
    study.add_argument("--runs", dest="aa_runs", type=int, default=10, help="unchanged runs (default 10)")
    study.add_argument("--calibration-runs", type=int, help="of which calibrate (default: half)")
    study.add_argument("--inject-runs", type=int, default=4, help="runs with an injected slowdown (default 4)")
    study.add_argument("--inject", default="channels-last-fp32]:1.25", help="SUBSTRING:FACTOR to slow down")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    pytest_args: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, pytest_args = argv[:at], argv[at + 1 :]
    args = parser().parse_args(argv)
    log = lambda message: print(message, file=sys.stderr, flush=True)
    try:
        if args.aa_study:
            from harness.gate import study as gate_study

            return gate_study.study(args, pytest_args, log)
        if args.calibrate:
            return calibrate_cli(args, log)
        return gate(args, log)
    except GateError as error:
        print(f"harness.gate: error: {error}", file=sys.stderr)
        return 2
