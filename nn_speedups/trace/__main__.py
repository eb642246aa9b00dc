"""python -m nn_speedups.trace: look at traces after the run.

    python -m nn_speedups.trace show RUN.json                      # where the time goes, from a saved run
    python -m nn_speedups.trace summarize TRACE.json.gz [--top 15] # top operators and kernel counts of a trace file
    python -m nn_speedups.trace flame TRACE.json.gz --out step.png # a flame chart of one step

RUN.json is a file pytest-benchmark saved from a run with --traces; TRACE.json.gz a trace it wrote under
reports/<run>/traces/ (torch.profiler's, or ONNX Runtime's `.ort.json.gz`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _show(args) -> int:
    from nn_speedups import report
    from nn_speedups.trace import report as trace_report

    run_rows = report.rows(report.load_run(args.run))
    found = trace_report.sections(run_rows)
    if not found:
        print(f"{args.run}: no traced cases in it (run pytest with --traces all)", file=sys.stderr)
        return 1
    for title, table in found:
        print(f"\n### {title}\n\n{table}")
    return 0


def _summarize(args) -> int:
    from nn_speedups.trace import chrome

    summary = chrome.summarize(args.trace, top=args.top)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{summary['file']}: {summary['steps']} steps of {summary['step_ms']:.3f} ms (profiled), {summary['source']}")
    cpp_calls = summary["inductor_cpp_kernel_calls_per_step"]
    print(f"CUDA kernel events per step: {summary['kernels_per_step']:g}; Inductor C++ kernel calls: {cpp_calls:g}")
    shares = ", ".join(f"{c} {summary[f'{c}_share'] or 0:.0%}" for c in ("matmul", "elementwise", "memcpy", "fused"))
    print(f"shares of op time: {shares}, other {summary['other_share'] or 0:.0%}")
    print(f"\n{'operator':60s} {'ms/step':>10s} {'share':>7s} {'calls/step':>10s}")
    for op in summary["top_ops"]:
        print(f"{op['op'][:60]:60s} {op['ms_per_step']:10.3f} {op['share']:7.1%} {op['calls_per_step']:10g}")
    return 0


def _flame(args) -> int:
    from nn_speedups.trace import flame

    out = flame.draw(args.trace, args.out, title=args.title or Path(args.trace).name, step=args.step)
    print(f"written: {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nn_speedups.trace", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("show", help="the trace tables of a saved run (pytest-benchmark JSON)")
    show.add_argument("run")
    summarize = sub.add_parser("summarize", help="top operators and kernel counts of a trace file")
    summarize.add_argument("trace")
    summarize.add_argument("--top", type=int, default=15)
    summarize.add_argument("--json", action="store_true", help="print the summary as JSON")
    draw = sub.add_parser("flame", help="a PNG flame chart of one step of a trace file")
    draw.add_argument("trace")
    draw.add_argument("--out", required=True)
    draw.add_argument("--step", type=int, default=None, help="which profiled step, from 0 (default: the median one)")
    draw.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    handlers = {"show": _show, "summarize": _summarize, "flame": _flame}
    try:
        return handlers[args.command](args)
    except (OSError, ValueError, IndexError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
