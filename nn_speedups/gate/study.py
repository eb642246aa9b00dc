"""The A/A study of the regression gate: how often it cries wolf on unchanged code, and whether it catches a real
slowdown, on this machine. A measurement for docs/gate.md, never a test assertion.

    python -m nn_speedups.gate --aa-study reports/gate-aa --runs 10 --inject-runs 4 -- benches/test_inference.py
    make gate-aa                       # the same

1. `--runs` unchanged runs of the pytest arguments after `--` (default: the quick inference family), each in a fresh
   process, saved with round data as DIR/aa-NN.json; `--inject-runs` runs with NN_SPEEDUPS_INJECT_SLOWDOWN=`--inject`
   (default: every `channels-last` fp32 case 25% slower) as DIR/inj-NN.json. Files already there are reused, so an
   interrupted study resumes.
2. The first `--calibration-runs` (default: half) unchanged runs calibrate the thresholds; every pair of the other
   unchanged runs is an A/A comparison (5 + 5 runs: 10 comparisons). With too few runs for that split the study
   calibrates on all of them and says its false-alarm rates are in-sample (optimistic).
3. Each A/A comparison is gated with the calibrated thresholds, without them (minimum effects only), with stock
   pytest-benchmark's `median:10%` rule, and, when there are enough runs, with --confirm simulated by other unchanged
   runs standing in for the fresh-process re-runs. Each evaluation run against each injected run measures detection.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from nn_speedups import gate
from nn_speedups.core.markdown import table
from nn_speedups.gate.runs import INJECT_ENV, GateError, Run, check_same_machine, load_run, run_pytest

DEFAULT_PYTEST_ARGS = ["benches/test_inference.py"]


def _runs(out: Path, prefix: str, count: int, pytest_args: list[str], env: dict, log) -> list[Run]:
    runs = []
    for i in range(1, count + 1):
        path = out / f"{prefix}-{i:02d}.json"
        if path.exists():
            log(f"{path}: reusing it")
        else:
            what = f"with {INJECT_ENV}={env[INJECT_ENV]}" if env else "unchanged"
            log(f"{prefix} run {i}/{count} ({what}), a fresh process:")
            args = [
                *pytest_args,
                "--benchmark-save-data",
                "-p",
                "no:cacheprovider",
                "-q",
                f"--report-dir={out}/reports",
            ]
            run_pytest(args, path, Path.cwd(), env, log)
        runs.append(load_run(path))
    return runs


def _stock_alarms(base: Run, head: Run, limit: float = 0.10) -> set[str]:
    """pytest-benchmark's --benchmark-compare-fail=median:10%: the median more than 10% above the baseline's."""
    return {n for n, h in head.cases.items() if n in base.cases and h.median_s > base.cases[n].median_s * (1 + limit)}


def _confirmed(base: Run, head: Run, reruns: list[Run], options, thresholds) -> list:
    """--confirm against the saved baseline with other unchanged runs replayed as the fresh head processes (as many
    as there are: the cap), no load guard (they are past runs)."""
    options = gate.Options(**{**vars(options), "repeats": len(reruns), "seed": 0})
    verdicts = gate.compare(base, head, options, thresholds)
    replay = lambda node_ids, side, index: reruns[index]
    gate.run_confirm(verdicts, base, head, options, thresholds, None, lambda m: None, replay, None, 1, lambda: 0.0)
    return verdicts


class Tally:
    """Per rule: comparisons, those with any false alarm, false alarms among case comparisons, and detections."""

    def __init__(self) -> None:
        self.pairs = self.pairs_alarmed = self.cases = self.alarms = self.injected = self.caught = 0
        self.alarm_cases: dict[str, int] = {}

    def aa(self, alarmed: set[str], case_count: int) -> None:
        self.pairs += 1
        self.pairs_alarmed += bool(alarmed)
        self.cases += case_count
        self.alarms += len(alarmed)
        for name in alarmed:
            self.alarm_cases[name] = self.alarm_cases.get(name, 0) + 1

    def detect(self, flagged: set[str], targets: set[str]) -> None:
        self.injected += len(targets)
        self.caught += len(flagged & targets)

    def row(self, rule: str) -> list[str]:
        aa = f"{self.pairs_alarmed} of {self.pairs}" if self.pairs else "-"
        cases = f"{self.alarms} of {self.cases}" + (f" ({self.alarms / self.cases:.2%})" if self.cases else "")
        caught = f"{self.caught} of {self.injected}" if self.injected else "-"
        return [rule, aa, cases if self.pairs else "-", caught]


def study(args, pytest_args: list[str], log) -> int:
    out = Path(args.aa_study)
    out.mkdir(parents=True, exist_ok=True)
    pattern, _, factor = args.inject.rpartition(":")
    try:
        ok = bool(pattern) and float(factor) > 1.0
    except ValueError:
        ok = False
    if not ok:
        raise GateError(f"--inject {args.inject!r}: give SUBSTRING:FACTOR with FACTOR > 1, e.g. eager-fp32]:1.25")
    if args.aa_runs < 3 or args.inject_runs < 0:
        raise GateError("--aa-study needs --runs >= 3 (two to calibrate on, more to compare) and --inject-runs >= 0")
    pytest_args = pytest_args or DEFAULT_PYTEST_ARGS
    options = gate._options(args)
    runs = _runs(out, "aa", args.aa_runs, pytest_args, {}, log)
    injected = _runs(out, "inj", args.inject_runs, pytest_args, {INJECT_ENV: args.inject}, log)
    notes = check_same_machine(runs + injected, args.allow_machine_change)
    c = args.calibration_runs if args.calibration_runs is not None else args.aa_runs // 2
    in_sample = c < 2 or args.aa_runs - c < 2
    calibration, evaluation = (runs, runs) if in_sample else (runs[:c], runs[c:])
    thresholds = gate.Thresholds(gate.calibrate(calibration, options), str(out / "gate-thresholds.json"))
    Path(thresholds.path).write_text(json.dumps(thresholds.data, indent=1) + "\n")
    r = options.repeats
    confirm = gate.Options(**{**vars(options), "confirm": True})
    rules = {"calibrated": Tally(), "uncalibrated (minimum effects)": Tally(), "stock median:10%": Tally()}
    confirm_rule = f"calibrated + --confirm (up to {r} other runs as re-runs)"
    if len(evaluation) >= gate.MIN_PAIRS + 2 or len(injected) >= gate.MIN_PAIRS + 1:
        rules[confirm_rule] = Tally()

    def slower(verdicts) -> set[str]:
        return {v.case for v in verdicts if v.verdict in gate.FAILING}

    for a, b in itertools.combinations(evaluation, 2):
        n = len(set(a.cases) & set(b.cases))
        rules["calibrated"].aa(slower(gate.compare(a, b, options, thresholds)), n)
        rules["uncalibrated (minimum effects)"].aa(slower(gate.compare(a, b, options, None)), n)
        rules["stock median:10%"].aa(_stock_alarms(a, b), n)
        others = [x for x in evaluation if x is not a and x is not b][:r]
        if confirm_rule in rules and len(others) >= gate.MIN_PAIRS:
            rules[confirm_rule].aa(slower(_confirmed(a, b, others, confirm, thresholds)), n)
    for e, j in itertools.product(evaluation, injected):
        targets = {name for name in j.cases if pattern in name and name in e.cases}
        rules["calibrated"].detect(slower(gate.compare(e, j, options, thresholds)), targets)
        rules["uncalibrated (minimum effects)"].detect(slower(gate.compare(e, j, options, None)), targets)
        rules["stock median:10%"].detect(_stock_alarms(e, j), targets)
        others = [x for x in injected if x is not j][:r]
        if confirm_rule in rules and len(others) >= gate.MIN_PAIRS:
            rules[confirm_rule].detect(slower(_confirmed(e, j, others, confirm, thresholds)), targets)
    header = ["rule", "A/A comparisons with a false alarm", "false alarms / case comparisons",
              f"injected {args.inject} caught"]  # fmt: skip
    split = (
        f"calibrated on all {len(runs)} runs and compared in-sample (too few runs to split: optimistic)"
        if in_sample
        else f"calibrated on runs 1-{c}, A/A comparisons between runs {c + 1}-{args.aa_runs}"
    )
    text = (
        f"## Gate A/A study: {len(runs)} unchanged runs, {len(injected)} with {INJECT_ENV}={args.inject}\n\n"
        f"`pytest {' '.join(pytest_args)}`; {split}; sigmas {options.sigmas}, alpha {options.alpha}. False alarms "
        "count every failing verdict (slower, regressed, failed, gone) in A/A comparisons; an injected case is "
        "caught when its verdict fails.\n\n"
        + "".join(f"- {n}\n" for n in notes)
        + table(header, [t.row(rule) for rule, t in rules.items()])
    )
    worst = sorted(rules["stock median:10%"].alarm_cases.items(), key=lambda kv: -kv[1])[:5]
    if worst:
        text += "\nStock rule's most frequent false alarms: " + ", ".join(f"`{n}` ({k}x)" for n, k in worst) + "\n"
    text += "\nCalibration:\n\n" + gate.render_calibration(thresholds.data)
    print(text)
    (out / "study.md").write_text(text)
    summary = {rule: vars(t) for rule, t in rules.items()}
    (out / "study.json").write_text(json.dumps({"in_sample": in_sample, "rules": summary}, indent=1) + "\n")
    log(f"written: {out / 'study.md'}, {out / 'study.json'}, {thresholds.path}")
    return 0
