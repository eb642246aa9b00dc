"""README.md and docs/: the README stays short, every relative link resolves, and every measured figure is copied
from a committed file under results/ (a figure no committed run produced is not quoted).

A figure is a number with a unit (`12.5 ms`, `3 min`, `85.2%`, `1.96x`, `31.5 GB/s`, ...) in the prose of a page.
Not figures: command lines and option values (inline code and fenced code blocks, except the comments in those
blocks, which are prose), link targets, HTML comments, thresholds (a number right after >=, <=, <, >, ±, "at most",
"at least", "more than", "less than", "above" or "below"), and the configuration constants in ALLOWED. A figure is
found in results/ when its number appears there as a whole number token (not as part of a longer number), and for
% and x with that unit beside it, as the reports print them.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]
RESULTS = ROOT / "results"
README_LIMIT = 20_000  # bytes: the README is a newcomer's first screen and quick start; reference goes to docs/

# Configuration constants and requirements that carry a unit but are not measurements, each with why. Each phrase is
# taken out of the text before figures are looked for; keep it exact and short, and keep the list small.
ALLOWED = {
    "about 5 GB of disk": "what the environment needs: a requirement stated to the user, not a benchmark result",
    "about 40 GB of disk": "what the GPU runner needs: a requirement, not a benchmark result",
    "quick: 1 s": "the quick profile's time budget per test (nn_speedups/matrix/axes.py timing_budget_s)",
    "full: 3 s": "the full profile's time budget per test (timing_budget_s)",
    "0.3 s at the case's median": "how many steps --traces profiles (TRACE_BUDGET_S in nn_speedups/trace)",
    "25 MB buckets": "DDP's default bucket_cap_mb (optimizations/distributed.py), the ddp variant's setting",
    "CPU 10%, CPU training and FastSwish 15%; CUDA 5%, FastSwish kernels 10%": "MIN_EFFECT in gate/verdicts.py",
    "(2% for fp32, 10% for 16-bit": "the training check's loss tolerances (TRAINING_LOSS_RTOL, measure/correctness.py)",
    "25% slow": "the A/A study's injected slowdown (make gate-aa's --inject factor 1.25)",
}

UNIT = (
    r"GB/s|MB/s|samples/s|images/s|img/s|tokens/s|it/s|seconds|second|sec|minutes|min|hours|ms|us|ns|s|h|"
    r"%|x|pts|points|dB|KB|kB|MB|GB|TB|MiB|GiB|W|J"
)
NUMBER = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
FIGURE = re.compile(rf"(?<![\w.,^/])(?P<number>{NUMBER})\s?(?P<unit>{UNIT})(?![\w/])")
THRESHOLD = re.compile(r"(?:>=|<=|<|>|±|\bat\s+most|\bat\s+least|\bmore\s+than|\bless\s+than|\babove|\bbelow)\s*$")
TOKEN = re.compile(rf"(?<![\d.,])(?:{NUMBER})(?!\d|[.,]\d)")
WITH_UNIT = re.compile(rf"(?<![\d.,])(?P<number>{NUMBER})\s?(?P<unit>%|x)(?![\w])")
CODE_SPAN = re.compile(r"`[^`]+`")
LINK = re.compile(r"!?\[[^\]]*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)|<img\s[^>]*src=\"(?P<src>[^\"]+)\"")
COMMENT = re.compile(r"<!--.*?-->", re.S)


def _blank(match: re.Match) -> str:
    """The match as spaces of the same length (newlines kept), so offsets and line numbers stay those of the file."""
    return re.sub(r"[^\n]", " ", match.group(0))


def _label_only(match: re.Match) -> str:
    """A markdown link with its target blanked (the label is prose); an <img> tag blanked whole."""
    if match.group("target") is None:
        return _blank(match)
    whole = match.group(0)
    cut = whole.index("](") + 1
    return whole[:cut] + " " * (len(whole) - cut)


def _comment_only(line: str) -> str:
    """A line of a fenced code block with all but its comment blanked: commands and options are not figures."""
    if line.lstrip().startswith("#"):
        return line
    cut = line.find(" #") + 1 if " #" in line else len(line)
    return " " * cut + line[cut:]


def prose(path: Path, links: bool = False) -> str:
    """A page's text with what is not prose blanked out: fenced code blocks but their comments, inline code, HTML
    comments and (unless `links`) link targets. Lines stay where they are, so a phrase, a threshold or a figure that
    wraps onto the next line still reads as one, and offsets give the file's line numbers."""
    lines, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced, line = not fenced, ""
        elif fenced:
            line = _comment_only(line) if not links else ""
        lines.append(line)
    text = CODE_SPAN.sub(_blank, COMMENT.sub(_blank, "\n".join(lines)))
    return text if links else LINK.sub(_label_only, text)


def line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def results_text() -> str:
    return "\n".join(
        p.read_text(encoding="utf-8", errors="replace")
        for p in sorted(RESULTS.rglob("*"))
        if p.is_file() and p.suffix in {".md", ".csv", ".json", ".log"}
    )


def figures(path: Path):
    """(line number, figure text, number, unit) of every figure in a page's prose."""
    text = prose(path)
    for phrase in ALLOWED:
        text = _phrase(phrase).sub(_blank, text)
    for m in FIGURE.finditer(text):
        if not THRESHOLD.search(text[max(0, m.start() - 20) : m.start()]):
            yield line_of(text, m.start()), " ".join(m.group(0).split()), m.group("number"), m.group("unit")


def test_readme_is_short():
    size = len(README.read_bytes())
    assert size < README_LIMIT, f"README.md is {size:,} bytes, limit {README_LIMIT:,}: move reference material to docs/"


def test_relative_links_point_to_files():
    broken = []
    for path in PAGES:
        text = prose(path, links=True)
        for m in LINK.finditer(text):
            target = (m.group("target") or m.group("src")).split("#", 1)[0]
            if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target):  # an anchor alone, or a URL
                continue
            if not (path.parent / target).exists():
                where = f"{path.relative_to(ROOT)}:{line_of(text, m.start())}"
                broken.append(f"{where}: link '{target}' points to no file")
    assert not broken, "\n".join(broken)


def test_the_site_lists_every_page():
    nav = re.findall(r"^\s*- [^:\n]+:\s*(\S+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(encoding="utf-8"), re.M)
    pages = sorted(p.relative_to(ROOT / "docs").as_posix() for p in PAGES[1:])
    assert sorted(nav) == pages, f"mkdocs.yml's nav lists {sorted(nav)}, docs/ holds {pages}"


def test_every_figure_comes_from_results():
    corpus = results_text()
    tokens = set(TOKEN.findall(corpus))
    with_unit = {m.group("number") + m.group("unit") for m in WITH_UNIT.finditer(corpus)}
    missing = []
    for path in PAGES:
        for number, text, value, unit in figures(path):
            found = value + unit in with_unit if unit in ("%", "x") else value in tokens
            if not found:
                missing.append(
                    f"{path.relative_to(ROOT)}:{number}: figure '{text}' is in no file under results/: "
                    "copy it from one and name the file, or remove it"
                )
    assert not missing, "\n".join(missing)


def _phrase(phrase: str) -> re.Pattern:
    """An ALLOWED phrase as a pattern that also matches it wrapped over lines."""
    return re.compile(r"\s+".join(map(re.escape, phrase.split())))


def test_allowed_constants_are_still_used():
    text = "\n".join(p.read_text(encoding="utf-8") for p in PAGES)
    stale = [phrase for phrase in ALLOWED if not _phrase(phrase).search(text)]
    assert not stale, "ALLOWED phrases no page uses any more (drop them): " + "; ".join(stale)


def test_the_figure_check_catches_a_typed_in_figure(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "It took 422 ms and ran 4.94x faster.\n"
        "`--min-effect 7%` and >= 2x are settings, not figures.\n"
        "```bash\nmake bench   # 21 min 14 s here\n--image-size 128\n```\n"
    )
    found = [(n, t) for n, t, _, _ in figures(page)]
    assert found == [(1, "422 ms"), (1, "4.94x"), (4, "21 min"), (4, "14 s")]
