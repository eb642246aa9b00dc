"""The measuring instrument: the per-case protocol (protocol), timing, metrics, energy and NVML sampling,
correctness and accuracy, the compression glue and weight coding."""
