"""What the gate prints and writes: the headline, the run records' differences, the terminal text, the markdown table,
the JSON, the calibration."""

from __future__ import annotations

from dataclasses import asdict

from nn_speedups.core.markdown import cell, table
from nn_speedups.gate.runs import Run
from nn_speedups.gate.verdicts import ORDER, Options, Verdict, _pct


def _short(name: str) -> str:
    return name.rsplit("::", 1)[-1]


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


RECORDS_DIFFER = "Run records differ (baseline -> head)"


def markdown(verdicts: list[Verdict], options: Options, title: str, notes: list[str], records: list[str] = ()) -> str:
    """`records`: the run records' differences, one `key: baseline -> head` each (nn_speedups.report.run_record),
    shown first: they may explain any verdict below."""
    header = ["verdict", "case", "change", "95% CI", "threshold", "why"]
    shown = [v for v in verdicts if v.verdict != "unchanged"]
    quiet = [v for v in verdicts if v.verdict == "unchanged"]
    text = f"### Regression gate: {headline(verdicts, options)}\n\n"
    if records:
        text += f"{RECORDS_DIFFER}:\n\n" + "".join(f"- `{cell(r)}`\n" for r in records) + "\n"
    text += f"{title}\n\n"
    text += "".join(f"- {n}\n" for n in notes) + ("\n" if notes else "")
    if shown:
        text += table(header, [_row(v) for v in shown])
    if quiet:
        text += f"\n<details><summary>{len(quiet)} unchanged</summary>\n\n{table(header, [_row(v) for v in quiet])}"
        text += "\n</details>\n"
    return text + "\n"


def terminal(
    verdicts: list[Verdict], options: Options, title: str, notes: list[str], verbose: bool, records: list[str] = ()
) -> str:
    lines = [f"nn_speedups.gate: {headline(verdicts, options)}"]
    if records:
        lines += [f"{RECORDS_DIFFER}:", *[f"  {r}" for r in records]]
    lines += [title, *[f"  note: {n}" for n in notes], ""]
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
        "family's; 'detects': the slowdown caught 95% of the time.\n\n" + table(header, body)
    )
