"""`nn-speedups COMMAND ...`: one entry point for what users run outside pytest; each command is the `python -m` form.

    nn-speedups gate BASELINE HEAD.json ...      python -m nn_speedups.gate      the regression gate
    nn-speedups report RUN.json --out DIR       python -m nn_speedups.report    the report of a saved run
    nn-speedups report --diff A.json B.json     python -m nn_speedups.report    two runs' records diffed, then medians
    nn-speedups trace summarize|show|flame ...  python -m nn_speedups.trace     profiler traces of a run
    nn-speedups train --data ... --model ...    python -m nn_speedups.train     the training program
    nn-speedups distributed ...                 python -m nn_speedups.distributed  a torchrun job of the suite
    nn-speedups weights MODEL ...               python -m nn_speedups.measure.weight_coding  weight coding sizes
    nn-speedups bench [PYTEST ARGS]             pytest --pyargs nn_speedups.benches  the benches, installed

A command's module is imported only when it runs, so `nn-speedups --help` stays quick.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {  # name -> (module with main(argv), one line for --help)
    "gate": ("nn_speedups.gate", "gate a run against a baseline storage (python -m nn_speedups.gate)"),
    "report": ("nn_speedups.report", "the report of a saved run, two runs side by side, or --diff A B: their records"),
    "trace": ("nn_speedups.trace.__main__", "summarize, show or draw the profiler traces of a run"),
    "train": ("nn_speedups.train.cli", "train a model on a data set (single process, or under torchrun)"),
    "distributed": ("nn_speedups.distributed", "run one of the suite's torchrun jobs"),
    "weights": ("nn_speedups.measure.weight_coding", "weight coding sizes of a model's weights"),
    "bench": (None, "run the installed benches: pytest --pyargs nn_speedups.benches [pytest args]"),
}


def usage() -> str:
    lines = ["usage: nn-speedups COMMAND [ARGS]  (nn-speedups COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<12} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def bench(argv: list[str]) -> int:
    import pytest

    args = list(argv)
    if not any(a.startswith("nn_speedups.benches") for a in args):
        args = ["nn_speedups.benches", *args]
    return int(pytest.main(["-p", "nn_speedups.plugin", "--pyargs", *args]))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name in ("-V", "--version"):
        from nn_speedups import __version__

        print(f"nn-speedups {__version__}")
        return 0
    if name not in COMMANDS:
        print(f"nn-speedups: error: unknown command {name!r}; one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = COMMANDS[name][0]
    if module is None:
        return bench(rest)
    sys.argv = [f"nn-speedups {name}", *rest]  # argparse's prog in each command's messages
    return int(importlib.import_module(module).main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
