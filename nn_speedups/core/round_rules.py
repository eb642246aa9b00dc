"""What a case's rounds must show before a figure is printed or a shape is judged, shared by the timing
(nn_speedups.measure.timing, which records None or no shape below them) and the report (its cells and its flags'
legend, also for runs saved before the rules).

- A percentile needs rounds: MLPerf LoadGen's early-stopping rule of thumb, about 64 samples bound a p90 and 662 a
  p99 at its confidence; below that the report prints the round count.
- The shape of the rounds (drift between halves, two modes) is judged from MIN_ROUNDS_FOR_SHAPE rounds.
- Two modes: the widest empty gap in the sorted rounds, with at least MODE_MIN_SHARE of them on each side, where the
  value jumps by at least MODE_GAP (a 25% gap with nothing in it is not a tail, it is a second code path).
"""

MIN_ROUNDS_FOR = {"p90": 64, "p99": 662}
MIN_ROUNDS_FOR_SHAPE = 10
MODE_MIN_SHARE = 0.15
MODE_GAP = 1.25
