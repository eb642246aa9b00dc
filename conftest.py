# The suite's pytest glue lives in harness/plugin.py; pytester lets the self-tests run real pytest sessions.
pytest_plugins = ["harness.plugin", "pytester"]
