"""The gate's --confirm: fresh-process re-runs in randomized, counterbalanced pairs, added until the pairs decide.

- The unit of replication is the pair: one fresh head process against one fresh baseline process run beside it
  (--confirm-baseline), or one fresh head process against the saved baseline run's median (plain --confirm). Each
  pair gives one log ratio of the processes' medians; a process's rounds only give its own median and spread.
- Order: within each block of two pairs the sides run head-baseline then baseline-head, or the reverse (ABBA), the
  block's start drawn from a seeded RNG (--confirm-seed); the order and the seed are in the verdict.
- Stopping: from MIN_PAIRS pairs on, after each pair, the pairs' interval (nn_speedups.gate.stats.pair_shift) decides:
  wholly above the threshold: slower; wholly below it: unchanged (faster when below minus the threshold); otherwise
  one more pair, up to --confirm-runs pairs (the cap), after which the case is noisy, with its figures. The interval
  checked is wider than 95% (decision_level: Pocock's level for the cap - MIN_PAIRS + 1 looks, 98.2% for the
  default cap of 6), since looking at a 95% one after every pair would err more than 2.5% a side; the verdict shows
  both.
- Noise guard: a re-run process whose rounds are WIDE times wider than the same case's rounds in the saved runs, or a
  1-minute load average above BUSY_LOAD x the CPU count before a re-run (other work on the machine), is said in the
  verdict and raises the pairs a slower or faster verdict needs to GUARD_MIN_PAIRS.
"""

from __future__ import annotations

import math
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from nn_speedups import gate as g  # the package; its names are read at call time (it imports this module)
from nn_speedups.gate import stats as gs
from nn_speedups.gate.runs import CaseRun, GateError, Run, launcher

MIN_PAIRS = 3  # pairs before any decision: fewer cannot give an honest interval (3 pairs: one-sided p >= 1/8)
GUARD_MIN_PAIRS = 6  # pairs a slower or faster verdict needs when the noise guard trips
WIDE = 3.0  # a re-run's rounds IQR / median more than WIDE x the saved runs' (and more than WIDE_FLOOR): too wide
WIDE_FLOOR = 0.02
BUSY_LOAD = 1.5  # load average above BUSY_LOAD x CPUs: other work (one re-run of ours accounts for about 1 x)
SIDES = ("head", "baseline")

Launch = Callable[[list[str], str, int], Run]  # (node ids, "head" | "baseline", pair index) -> that process's run


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


# ------------------------------------------------------------------------------------------------ suspects


def suspects(verdicts: list, base: Run, head: Run, options, thresholds) -> list:
    """Cases whose one-run shift exceeds the (lower) threshold of a confirmed comparison; with confirm_all every
    timed case (on a runner whose speed drifts between runs, one pair can hide a slowdown behind a faster run)."""
    out = []
    for v in verdicts:
        if v.timing is None or v.change is None or v.verdict in ("failed", "gone", "new"):
            continue
        if options.confirm_all or math.log1p(v.change) > confirm_threshold(v, head.cases[v.case], options, thresholds):
            out.append(v)
    return out


def confirm_threshold(v, case: CaseRun, options, thresholds) -> float:
    """The one-run shift (log) that makes a case a suspect worth re-running."""
    noise = thresholds.noise(case, v.device)[0] if thresholds else None
    floor = g.min_effect(v.device, v.family, options.min_effect)
    return gs.threshold(floor, noise, options.sigmas, options.confirm_mode, options.repeats)


# ------------------------------------------------------------------------------------------------ one case


def spread(case: CaseRun) -> float:
    """A process's own spread: the IQR of its rounds over their median."""
    if case.times and len(case.times) >= 4:
        q1, q3 = np.percentile(case.times, [25, 75])
        return float((q3 - q1) / case.median_s)
    return case.iqr_s / case.median_s if case.median_s > 0 else 0.0


def round_se(case: CaseRun) -> float:
    """Standard error of a process's log median from its own rounds (its precision, not the between-run noise)."""
    if case.times and len(case.times) >= 4:
        return 1.2533 * gs.within_spread(case.times) / math.sqrt(len(case.times))
    se = gs._median_se(case.median_s, case.iqr_s, case.rounds)
    return se if math.isfinite(se) else 0.0


@dataclass
class Track:
    """One case's confirmation so far."""

    v: object  # its Verdict
    base: CaseRun  # the saved runs' case
    head: CaseRun
    limit: float  # log threshold
    shared_sd: float | None  # plain --confirm: the saved baseline's calibrated noise (0.0 if unknown)
    heads: list[CaseRun] = field(default_factory=list)
    bases: list[CaseRun] = field(default_factory=list)
    orders: list[str] = field(default_factory=list)
    seconds: float = 0.0
    processes: int = 0
    loads: list[float] = field(default_factory=list)
    busy: bool = False
    wide: list[str] = field(default_factory=list)
    shift: gs.PairShift | None = None  # the 95% interval, the one shown
    decision: gs.PairShift | None = None  # the same at the sequential level: the one the stopping rule checks

    @property
    def name(self) -> str:
        return self.v.case

    def ratios(self) -> list[float]:
        if self.shared_sd is None:
            return [math.log(h.median_s / b.median_s) for h, b in zip(self.heads, self.bases)]
        return [math.log(h.median_s / self.base.median_s) for h in self.heads]

    def check_width(self, case: CaseRun, side: str, index: int) -> None:
        reference = max(spread(self.base), spread(self.head))
        own = spread(case)
        if own > max(WIDE * reference, WIDE_FLOOR):
            self.wide.append(
                f"{side} re-run {index + 1}'s rounds spread {100 * own:.0f}% (IQR/median) against "
                f"{100 * reference:.1f}% in the saved runs"
            )


def _pct(x: float) -> str:
    return g._pct(x) if math.isfinite(x) else ("+inf" if x > 0 else "-inf")


def decision_level(cap: int) -> float:
    """The level of the interval checked after each pair from MIN_PAIRS to the cap (nn_speedups.gate.stats.POCOCK)."""
    return gs.sequential_level(cap - MIN_PAIRS + 1)


def _finish(t: Track, outcome: str, options, cap: int, seed: int, stopped: str) -> None:
    v, s, sd = t.v, t.shift, t.decision
    level = decision_level(cap)
    paired = t.shared_sd is None
    ratios = t.ratios()
    n = len(ratios)
    first = g._pct(v.change)
    v.change, v.threshold = gs.pct(s.effect), gs.pct(t.limit)
    v.ci = (gs.pct(s.low), gs.pct(s.high)) if math.isfinite(s.low) and math.isfinite(s.high) else None
    v.ci_kind = f"{n} pair(s) of fresh processes: {s.interval}"
    v.p = s.p_slower if s.effect >= 0 else s.p_faster
    guard = t.wide + ([f"machine busy: load average up to {max(t.loads):.1f} on {_cpus()} CPUs"] if t.busy else [])
    v.confirm = {
        "mode": "pairs" if paired else "against the saved baseline",
        "pairs": n,
        "reruns": n,
        "cap": cap,
        "min_pairs": MIN_PAIRS,
        "against": f"{n} baseline re-runs" if paired else "the saved baseline's median",
        "each": [gs.pct(d) for d in ratios],
        "median": gs.pct(s.effect),
        "ci": [gs.pct(s.low), gs.pct(s.high)],
        "decision_level": level,
        "decision_ci": [gs.pct(sd.low), gs.pct(sd.high)],
        "interval": s.interval,
        "test": s.test,
        "p": v.p,
        "p_min": s.p_min,
        "threshold": gs.pct(t.limit),
        "order": t.orders,
        "seed": seed,
        "stopped": stopped,
        "seconds": t.seconds,
        "processes": t.processes,
        "head_medians_ms": [c.median_ms for c in t.heads],
        "baseline_medians_ms": [c.median_ms for c in t.bases] if paired else [t.base.median_ms],
        "head_spreads": [spread(c) for c in t.heads],
        "baseline_spreads": [spread(c) for c in t.bases],
        "loads": t.loads,
        "guard": guard,
    }
    what = "pair(s) of fresh processes (head vs baseline)" if paired else "fresh head re-run(s) vs the saved baseline"
    order = f", order {' '.join(t.orders)} (seed {seed})" if paired else ""
    ci = f"{_pct(gs.pct(s.low))}..{_pct(gs.pct(s.high))}"
    looks = cap - MIN_PAIRS + 1
    decided = (
        f", {100 * level:.1f}% CI {_pct(gs.pct(sd.low))}..{_pct(gs.pct(sd.high))} (the one checked after each pair: "
        f"{looks} looks in all keep 95%)"
        if looks > 1
        else ""
    )
    p_min = f"; {n} pairs cannot give less than {s.p_min:.3g}" if s.p_min > 0 else ""
    detail = (
        f"{n} {what}{order}: {', '.join(g._pct(gs.pct(d)) for d in ratios)}; estimate {g._pct(v.change)}, 95% CI "
        f"{ci}{decided}; {s.test}, p={v.p:.2g}{p_min}; {t.seconds:.0f} s of re-runs"
    )
    threshold = g._pct(v.threshold, sign=False)
    guarded = f"; noise guard: {'; '.join(guard)}" if guard else ""
    if outcome == "slower":
        v.why = f"confirmed on {n} pairs: {detail}; the interval lies above the {threshold} threshold{guarded}"
    elif outcome == "faster":
        v.why = f"{detail}; the interval lies below -{threshold}{guarded}"
    elif outcome == "unchanged":
        v.why = f"not confirmed: one run said {first}; {detail}; the interval lies below the {threshold} threshold"
    else:
        v.why = (
            f"not resolved after {n} pairs ({stopped}): {detail}; no decision against the {threshold} threshold"
            f"{guarded}"
        )
    v.timing = outcome
    v.verdict = "regressed" if v.problems else outcome
    if v.problems:
        v.why = "; ".join(v.problems) + f" (timing: {v.timing}, {v.why})"


def _cpus() -> int:
    return os.cpu_count() or 1


def _stop(t: Track, message: str, verdict: str = "noisy") -> None:
    v = t.v
    v.timing = verdict
    v.why = f"{message} ({v.why})" if verdict == "noisy" else message
    v.verdict = "regressed" if v.problems and verdict != "failed" else verdict
    v.confirm = {"pairs": len(t.heads), "order": t.orders, "seconds": t.seconds, "stopped": message}


def add_pair(t: Track, runs: dict[str, Run], index: int, order: str, options, cap: int, seed: int) -> bool:
    """Take one pair's processes for this case and decide if it can; True when the case is finished."""
    head = runs["head"]
    if t.name in head.failed:
        _stop(t, f"a --confirm re-run failed: {head.failed[t.name]}", "failed")
        return True
    baseline = runs.get("baseline")
    if baseline is not None and t.name in baseline.failed:
        _stop(t, f"not confirmed: the baseline checkout's re-run failed ({baseline.failed[t.name]})")
        return True
    if t.name not in head.cases or (baseline is not None and t.name not in baseline.cases):
        _stop(t, "not confirmed: the case did not run in every re-run")
        return True
    t.heads.append(head.cases[t.name])
    t.check_width(t.heads[-1], "head", index)
    if baseline is not None:
        t.bases.append(baseline.cases[t.name])
        t.check_width(t.bases[-1], "baseline", index)
    t.orders.append(order)
    if baseline is not None:  # a pair's ratio carries both processes' round noise
        floor = math.sqrt(statistics.fmean(round_se(h) ** 2 + round_se(b) ** 2 for h, b in zip(t.heads, t.bases)))
    else:  # the saved baseline's share is in `shared`
        floor = math.sqrt(statistics.fmean(round_se(h) ** 2 for h in t.heads))
    shared = None if t.shared_sd is None else max(t.shared_sd, round_se(t.base))
    t.shift = gs.pair_shift(t.ratios(), floor, shared)
    t.decision = s = gs.pair_shift(t.ratios(), floor, shared, decision_level(cap))
    n, last = len(t.heads), index + 1 >= cap
    if n < min(MIN_PAIRS, cap):
        return False
    guarded = bool(t.wide or t.busy)
    directional = GUARD_MIN_PAIRS if guarded else MIN_PAIRS
    if s.low > t.limit and n >= directional:
        _finish(t, "slower", options, cap, seed, "the interval lies above the threshold")
    elif s.high < -t.limit and n >= directional:
        _finish(t, "faster", options, cap, seed, "the interval lies below minus the threshold")
    elif s.high < t.limit and (s.low >= -t.limit or not guarded):
        _finish(t, "unchanged", options, cap, seed, "the interval lies below the threshold")
    elif last:
        why = f"the cap, --confirm-runs {cap}, reached"
        if (s.low > t.limit or s.high < -t.limit) and n < directional:
            why += f"; the noise guard needs {directional} pairs"
        _finish(t, "noisy", options, cap, seed, why)
    else:
        return False
    return True


# ------------------------------------------------------------------------------------------------ the driver


def run_confirm(
    verdicts: list,
    base: Run,
    head: Run,
    options,
    thresholds,
    baseline_dir,
    log,
    launch: Launch | None = None,
    loadavg: Callable[[], float | None] | None = _loadavg,
    cpu_count: int | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> list[str]:
    """Re-run the suspects pair by pair and decide them; returns notes. `launch` runs one fresh process (default:
    nn_speedups.gate.runs.launcher); `loadavg` (None: no load guard), `cpu_count` and `clock` are seams for tests."""
    todo = suspects(verdicts, base, head, options, thresholds)
    if not todo:
        return ["--confirm: no suspect to re-run"]
    paired = bool(options.rerun_baseline)
    cap, cpus = options.repeats, cpu_count or _cpus()
    seed = options.seed if options.seed is not None else random.SystemRandom().randrange(2**31)
    options.seed = seed  # recorded with the options in the JSON, so the order can be repeated
    rng = random.Random(seed)
    tracks = []
    for v in todo:
        noise = thresholds.noise(base.cases[v.case], v.device)[0] if thresholds else None
        limit = math.log1p(g.min_effect(v.device, v.family, options.min_effect))
        shared = None if paired else (noise or 0.0)
        tracks.append(Track(v, base.cases[v.case], head.cases[v.case], limit, shared))
    what = f"every timed case ({len(todo)})" if options.confirm_all else f"{len(todo)} suspect(s)"
    kind = "pairs of fresh processes (head and baseline checkout)" if paired else "fresh head processes"
    log(f"--confirm: {what}, {MIN_PAIRS} to {cap} {kind} each, order seed {seed}")
    total, processes, busy, order = 0.0, 0, [], ("head", "baseline")
    with tempfile.TemporaryDirectory(prefix="nn-gate-") as tmp:
        try:
            launch = launch or launcher(head, baseline_dir, tmp, log=log)
            open_ = list(tracks)
            for i in range(cap):
                if not open_:
                    break
                if i % 2 == 0:  # ABBA: a block of two pairs, its first side drawn at random
                    first = rng.choice(SIDES)
                    order = (first, SIDES[1 - SIDES.index(first)])
                else:
                    order = order[::-1]
                sides = order if paired else ("head",)
                ids = [t.name for t in open_]
                runs = {}
                for side in sides:
                    load = loadavg() if loadavg else None
                    if load is not None and load > BUSY_LOAD * cpus:
                        busy.append(load)
                    log(f"pair {i + 1}/{cap}: {side} ({len(ids)} case(s), a fresh process)")
                    start = clock()
                    runs[side] = launch(ids, side, i)
                    spent = clock() - start
                    total, processes = total + spent, processes + 1
                    for t in open_:
                        t.seconds, t.processes = t.seconds + spent, t.processes + 1
                        if load is not None:
                            t.loads.append(load)
                            t.busy = t.busy or load > BUSY_LOAD * cpus
                label = "-".join(s[0].upper() for s in sides)
                open_ = [t for t in open_ if not add_pair(t, runs, i, label, options, cap, seed)]
        except GateError as error:
            for t in tracks:
                if t.v.confirm is None:
                    t.v.why += " (NOT confirmed: the re-runs failed)"
            return [f"--confirm could not re-run the suspects, their verdicts stand unconfirmed: {error}"]
    verdicts.sort(key=lambda v: (g.ORDER.index(v.verdict), v.case))
    pairs = max(len(t.heads) for t in tracks)
    notes = [
        f"--confirm: {what}; {pairs} pair(s) at most of {cap} allowed ({MIN_PAIRS} before deciding), "
        f"{processes} fresh processes, {total:.0f} s of re-runs; order seed {seed} (--confirm-seed {seed} repeats it)"
    ]
    if busy:
        notes.append(
            f"the machine was busy during the re-runs: load average up to {max(busy):.1f} on {cpus} CPUs; "
            f"cases re-run then need {GUARD_MIN_PAIRS} pairs for a slower or faster verdict"
        )
    return notes
