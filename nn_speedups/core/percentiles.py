"""How many rounds a percentile needs before it is shown, shared by the timing (nn_speedups.measure.timing, which
records None below it) and the report (which prints the round count instead, also for runs saved before the rule).

MLPerf LoadGen's early-stopping rule of thumb: about 64 samples bound a p90, 662 a p99, at its confidence.
"""

MIN_ROUNDS_FOR = {"p90": 64, "p99": 662}
