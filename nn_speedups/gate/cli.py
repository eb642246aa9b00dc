"""The command line, python -m nn_speedups.gate: the arguments, then gate two runs, --calibrate or --aa-study."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nn_speedups.gate.confirm import MIN_PAIRS, run_confirm
from nn_speedups.gate.render import failing, markdown, render_calibration, terminal, to_json
from nn_speedups.gate.runs import GateError, Run, check_same_machine, load_run
from nn_speedups.gate.thresholds import Thresholds, calibrate
from nn_speedups.gate.verdicts import ALPHA, CONFIRM_RUNS, SIGMAS, Options, compare
from nn_speedups.report import run_record


def gate(args: argparse.Namespace, log) -> int:
    if len(args.runs) != 2:
        raise GateError("give two runs: python -m nn_speedups.gate BASELINE.json HEAD.json (or --calibrate RUN ...)")
    base, head = load_run(args.runs[0]), load_run(args.runs[1])
    notes = check_same_machine([base, head], args.allow_machine_change)
    thresholds = Thresholds.load(args.thresholds) if args.thresholds else None
    if thresholds:
        notes += check_same_machine([base, _as_run(thresholds)], args.allow_machine_change)
    else:
        notes.append(
            "uncalibrated: thresholds are the minimum effects alone and between-run noise is unknown; calibrate with "
            "python -m nn_speedups.gate --calibrate on repeated unchanged runs, and/or use --confirm"
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
    records = run_record.differences_line(
        run_record.diff(_as_recorded(base), _as_recorded(head), ignore=run_record.GATE_IGNORED)
    )
    print(terminal(verdicts, options, title, notes, args.verbose, records), end="")
    text = markdown(verdicts, options, title, notes, records)
    _write(args.markdown, text)
    _write(args.json, json.dumps(to_json(verdicts, options, base, head, thresholds, notes), indent=1) + "\n")
    if args.summary:
        with open(args.summary, "a") as f:
            f.write(text)
    return 1 if failing(verdicts, options) else 0


def _as_recorded(run: Run) -> dict:
    """A gated run as nn_speedups.report.run_record reads it: its machine_info and the saved commit_info."""
    try:
        saved = json.loads(Path(run.path).read_text())
    except (OSError, ValueError):
        saved = {}
    commit = saved.get("commit_info") if isinstance(saved, dict) else None
    return {"machine_info": run.machine_info, "commit_info": commit if isinstance(commit, dict) else {}}


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
        prog="python -m nn_speedups.gate",
        description="A regression gate for pytest-benchmark runs of this suite: one verdict per case, with why.",
        epilog="Exit codes: 0 pass, 1 a regression, 2 bad input. See docs/gate.md.",
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
    study = p.add_argument_group("A/A study (python -m nn_speedups.gate --aa-study DIR [options] -- PYTEST ARGS)")
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
            from nn_speedups.gate import study as gate_study

            return gate_study.study(args, pytest_args, log)
        if args.calibrate:
            return calibrate_cli(args, log)
        return gate(args, log)
    except GateError as error:
        print(f"nn_speedups.gate: error: {error}", file=sys.stderr)
        return 2
