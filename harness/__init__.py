"""The suite's code moved into one package, nn_speedups (issue 18); this name only says where to, in one line.

Not installed (pyproject.toml lists nn_speedups only): a checkout keeps it so that an old command such as
`python -m harness.gate` fails with the new name instead of "No module named harness".
"""

NEW = {
    "harness.gate": "nn_speedups.gate (or: nn-speedups gate)",
    "harness.trace": "nn_speedups.trace (or: nn-speedups trace)",
    "harness.train": "nn_speedups.train (or: nn-speedups train)",
    "harness.report": "nn_speedups.report (or: nn-speedups report)",
    "harness.distributed": "nn_speedups.distributed (or: nn-speedups distributed)",
    "harness.plugin": "nn_speedups.plugin (pytest -p nn_speedups.plugin)",
}
# name="harness": `python -m harness.gate` then reports it in one line ("Error while finding module specification")
raise ImportError(
    "nn-speedups: 'harness' is now the package nn_speedups: " + "; ".join(f"{o} -> {n}" for o, n in NEW.items()),
    name="harness",
)
