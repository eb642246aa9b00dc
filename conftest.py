# The suite's pytest plugin (nn_speedups/plugin/) for every session of this checkout; pytester lets the self-tests run
# real pytest sessions. An installed suite loads the plugin only for its benches (nn_speedups/pytest_plugin.py).
pytest_plugins = ["nn_speedups.plugin", "pytester"]
