"""Two runs side by side: each case's median in the baseline run and in this one, and their ratio."""

from __future__ import annotations

from nn_speedups.core import markdown
from nn_speedups.report.cells import _fmt
from nn_speedups.report.records import _label, _world


def comparison_table(run_rows: list[dict], base_rows: list[dict]) -> str:
    key = lambda r: (r.get("family"), r["model"], r.get("activation"), _label(r), r["batch_size"], _world(r))  # noqa: E731
    base = {key(r): r for r in base_rows}
    header = ["model", "variant", "batch", "baseline ms", "run ms", "run / baseline"]
    body = []
    for r in run_rows:
        b = base.get(key(r))
        ratio = r["median_ms"] / b["median_ms"] if b else None
        model = r["model"] + (f" ({r['activation']})" if r.get("activation") else "")
        body.append(
            [
                model,
                "-".join(filter(None, (_label(r), _world(r)))),
                str(r["batch_size"]),
                _fmt(b and b["median_ms"]),
                _fmt(r["median_ms"]),
                _fmt(ratio, 3),
            ]
        )
    return markdown.table(header, body)
