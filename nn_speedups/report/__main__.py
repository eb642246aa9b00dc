"""`python -m nn_speedups.report RUN.json`: the report of a saved run (also `nn-speedups report`)."""

import sys

from nn_speedups.report import main

sys.exit(main())
