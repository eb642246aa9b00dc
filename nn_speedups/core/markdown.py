"""Markdown tables, the one helper every report (run, gate, trace, study) renders its tables with."""

from __future__ import annotations


def cell(value) -> str:
    """A table cell: `|` escaped and newlines folded, so that no value can break the table's columns."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(header: list[str], body: list[list]) -> str:
    """A GitHub-flavoured markdown table, with a trailing newline."""
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in body]
    return "\n".join(lines) + "\n"
