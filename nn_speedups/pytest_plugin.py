"""The pytest11 entry point of an installed nn-speedups: loads the suite's plugin, harness.plugin, into any pytest
session of the environment, so that `pytest --pyargs benches --model my_model:make` runs from a project's own folder.

harness.plugin is imported once pytest has read the project's configuration and loaded its initial conftests: its
`pythonpath` setting is in force by then (a checkout of this repository runs its own harness, not an installed
copy), and a plugin that is already registered (`-p harness.plugin`, or this repository's conftest.py) is not loaded
a second time. `-p no:nn_speedups` keeps it out of a session.
"""

from __future__ import annotations

import pytest

PLUGIN = "harness.plugin"


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]):
    result = yield
    manager = early_config.pluginmanager
    if not manager.has_plugin(PLUGIN) and not manager.is_blocked(PLUGIN):
        manager.import_plugin(PLUGIN)
    return result
