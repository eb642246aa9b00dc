"""The pytest11 entry point of an installed nn-speedups: a stub that stays out of every other project's sessions.

pytest loads this module in every session of an environment where the suite is installed. It adds no option, no
marker and no skip, and imports nothing beyond the standard library and pytest, unless the session's arguments run
the suite's own benches:

    pytest --pyargs nn_speedups.benches --model my_model:make_model           # every family
    pytest --pyargs nn_speedups.benches.test_inference --model my_model:make_model

Then (and only then) it registers the suite's plugin, nn_speedups.plugin, before pytest parses the command line, so
the suite's options exist for that session. Anywhere else the plugin is asked for explicitly with
`-p nn_speedups.plugin` (this repository's conftest.py does it for its own sessions). The old form,
`pytest --pyargs benches ...`, gets a one-line error naming the new one. `-p no:nn_speedups` keeps even the stub out.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

PLUGIN = "nn_speedups.plugin"
BENCHES = "nn_speedups.benches"
OLD_BENCHES = "benches"


def _names(args: list[str]) -> list[str]:
    """The collection arguments without pytest's node-id suffixes (`pkg.mod::test[id]` -> `pkg.mod`)."""
    return [a.split("::", 1)[0] for a in args if a and not a.startswith("-")]


def _benches_folder() -> Path | None:
    spec = importlib.util.find_spec(BENCHES)
    locations = spec.submodule_search_locations if spec else None
    return Path(next(iter(locations))).resolve() if locations else None


def runs_suite_benches(args: list[str], pyargs: bool) -> bool:
    names = _names(args)
    if pyargs and any(n == BENCHES or n.startswith(BENCHES + ".") for n in names):
        return True
    paths = [Path(n) for n in names if not pyargs or "/" in n or n.endswith(".py")]
    if not paths:
        return False
    folder = _benches_folder()
    return folder is not None and any(folder == p.resolve() or folder in p.resolve().parents for p in paths)


def old_form(args: list[str], pyargs: bool) -> str | None:
    """`--pyargs benches[.test_x]` where no `benches` package is importable: the form before the suite had one name."""
    old = [n for n in _names(args) if n == OLD_BENCHES or n.startswith(OLD_BENCHES + ".")]
    if not pyargs or not old or importlib.util.find_spec(OLD_BENCHES) is not None:
        return None
    new = BENCHES + old[0][len(OLD_BENCHES) :]
    return f"nn-speedups: the installed benches are now {BENCHES}: run pytest --pyargs {new} (docs/own-model.md)"


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> None:
    manager = early_config.pluginmanager
    if manager.has_plugin(PLUGIN) or manager.is_blocked(PLUGIN):
        return
    pyargs = "--pyargs" in args or bool(getattr(early_config.known_args_namespace, "pyargs", False))
    message = old_form(args, pyargs)
    if message:
        raise pytest.UsageError(message)
    if runs_suite_benches(args, pyargs):
        manager.import_plugin(PLUGIN)
