"""One-line error messages: what a failed case, a refused option or a failed export says of an exception."""

from __future__ import annotations

import re

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def first_line(text: str) -> str:
    """The first non-empty line of a message, stripped (terminal colour codes removed)."""
    return next((line.strip() for line in _ANSI.sub("", text).splitlines() if line.strip()), "")


def one_line(error: BaseException, limit: int = 300, chain: int = 1) -> str:
    """An exception as one line: `Type: first line of its message`; with chain > 1, up to that many exceptions of its
    cause chain, innermost first, joined by ` <- ` (an exporter's own words under the suite's). Cut at `limit`."""
    parts = []
    while error is not None and len(parts) < chain:
        first = first_line(str(error))
        parts.append(f"{type(error).__name__}: {first}" if first else type(error).__name__)
        error = error.__cause__ or error.__context__
    text = " <- ".join(reversed(parts))
    return text if len(text) <= limit else text[:limit] + " ..."
