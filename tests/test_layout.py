"""The house plan of CONTRIBUTING.md, checked on the real files: which room may import which, no pytest outside the
glue, an opening docstring on every module, and no module far above 400 lines unless its docstring says why."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

# room -> the folder its modules live in (the top-level folders are subpackages of nn_speedups)
ROOMS = {
    "kernels": "kernels",
    "models": "models",
    "optimizations": "optimizations",
    "benches": "benches",
    **{room: f"nn_speedups/{room}" for room in ("core", "matrix", "measure", "data", "report", "gate", "trace")},
    **{room: f"nn_speedups/{room}" for room in ("train", "distributed", "plugin")},
}
# room -> the rooms it may import (besides itself); CONTRIBUTING.md's table says the same in words
MAY_IMPORT = {
    "core": set(),
    "kernels": set(),
    "models": {"core", "kernels"},
    "optimizations": {"core", "kernels", "models"},
    "data": {"core"},
    "matrix": {"core", "models", "optimizations"},
    "measure": {"core", "data", "matrix", "models", "optimizations", "train", "kernels"},
    "trace": {"core", "matrix", "measure"},
    "report": {"core", "trace", "models", "matrix"},
    "gate": {"core", "report"},
    "train": {"core", "data", "models", "optimizations", "distributed"},
    "distributed": {"core", "matrix", "measure", "models", "optimizations", "train"},
    "plugin": set(ROOMS) - {"plugin", "benches"},
    "benches": set(ROOMS) - {"benches"},
}
PYTEST_FREE = {"core", "kernels", "models", "optimizations", "data", "matrix", "measure", "trace", "report", "gate"}
PYTEST_FREE |= {"train", "distributed"}
LONG = 450  # "about 400 lines": a module above this says in its opening docstring why it is one piece


def modules() -> list[tuple[str, Path]]:
    found = [(room, path) for room, folder in ROOMS.items() for path in sorted((ROOT / folder).rglob("*.py"))]
    found += [("top", ROOT / "nn_speedups" / name) for name in ("__init__.py", "cli.py", "pytest_plugin.py")]
    return found


def room_of(module: str) -> str | None:
    """nn_speedups.measure.timing -> measure; nn_speedups.models -> models; nn_speedups -> the package itself."""
    parts = module.split(".")
    if parts[0] != "nn_speedups" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in ROOMS else None


def imports(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            if node.module == "nn_speedups":
                names |= {f"nn_speedups.{alias.name}" for alias in node.names}
    return names


MODULES = modules()


def test_the_rooms_exist_and_hold_modules():
    assert {room for room, _ in MODULES} >= set(ROOMS)


@pytest.mark.parametrize("room, path", MODULES, ids=[str(p.relative_to(ROOT)) for _, p in MODULES])
def test_a_module_follows_the_house_plan(room, path):
    text = path.read_text()
    tree = ast.parse(text)
    doc = ast.get_docstring(tree)
    empty_init = path.name == "__init__.py" and not text.strip()
    assert doc or empty_init or path.name == "__main__.py", f"{path.relative_to(ROOT)}: no opening docstring"
    if room == "top":
        return
    used = imports(tree)
    # a room's command line (`python -m nn_speedups.<room>`) is an entry point: it may use any room but the glue
    allowed = set(ROOMS) - {"plugin", "benches"} if path.name == "__main__.py" else MAY_IMPORT[room]
    wrong = sorted(
        f"{name} ({room_of(name)})"
        for name in used
        if room_of(name) not in (None, room) and room_of(name) not in allowed
    )
    assert not wrong, f"{path.relative_to(ROOT)}: room {room!r} may not import {wrong}"
    if room in PYTEST_FREE:
        assert not any(n == "pytest" or n.startswith("pytest.") for n in used), f"{path}: imports pytest"
    lines = len(text.splitlines())
    if lines > LONG:
        assert doc and "one piece" in doc, f"{path.relative_to(ROOT)}: {lines} lines; split it or say why not"


def test_nothing_imports_the_old_top_level_names():
    old = {"harness", "models", "optimizations", "benches", "kernels"}
    for _, path in MODULES:
        used = {name.split(".")[0] for name in imports(ast.parse(path.read_text()))}
        assert not used & old, f"{path.relative_to(ROOT)} imports {sorted(used & old)}"
