"""Roofline position of a model-level row: achieved FLOP/s and bytes/s against the machine's peaks.

Peaks are *measured* here, once per session, device and dtype (no vendor datasheet): the FLOP/s of a square
matmul in the row's dtype, and the bandwidth of a copy whose buffers are four times the last-level cache (so it
streams from memory), each the best of a few rounds. On a busy machine they come out low; a row above 100% of the
attainable rate reads part of its bytes from cache, or met peaks measured low.

FLOPs per step come from torch's FlopCounterMode (the row's `gflops`); bytes per step from the trace: the tensor
operands of the step's compute calls (torch.profiler's recorded input shapes; outputs are not recorded, so this is a
lower bound of the traffic, and caches may serve part of it) or, for ONNX Runtime, each node's inputs and outputs.
A compiled graph's generated kernels record no shapes: no roofline for them.
"""

from __future__ import annotations

import functools

from nn_speedups.measure import timing

MATMUL_N = {"cpu": 1024, "cuda": 8192}
PEAK_ROUNDS = 5
MIN_COPY_BYTES = 64 * 1024 * 1024


@functools.cache
def measured_peaks(device: str, dtype_name: str) -> dict:
    import torch

    from nn_speedups.core.env import last_level_cache_bytes
    from nn_speedups.matrix.axes import DTYPES

    kind = torch.device(device).type
    dtype = DTYPES[dtype_name]
    n = MATMUL_N.get(kind, 1024)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    mm_s = _best_s(lambda: torch.mm(a, b), device)
    llc = last_level_cache_bytes(device) or 0
    copy_bytes = max(4 * llc, MIN_COPY_BYTES)
    src = torch.empty(copy_bytes // 4, device=device)
    dst = torch.empty_like(src)
    copy_s = _best_s(lambda: dst.copy_(src), device)
    return {
        "peak_gflops_per_s": 2 * n**3 / mm_s / 1e9,
        "peak_gbytes_per_s": 2 * src.nbytes / copy_s / 1e9,
        "roofline_peaks": f"measured: {dtype_name} matmul {n}x{n}x{n}, copy of {src.nbytes >> 20} MB "
        f"(4x the {llc >> 20} MB last-level cache), best of {PEAK_ROUNDS}",
    }


def _best_s(fn, device: str) -> float:
    timer = timing.RoundTimer(fn, timing.synchronizer(device))
    for _ in range(1 + PEAK_ROUNDS):
        timer()
    return min(timer.times[1:])


def position(gflops_per_step: float, median_ms: float, bytes_per_step: float, peaks: dict) -> dict:
    """Where a row sits on the roofline: achieved rates, arithmetic intensity, the bound its intensity puts it
    under, and its share of the attainable FLOP/s at that intensity."""
    seconds = median_ms / 1e3
    flops = gflops_per_step * 1e9
    intensity = flops / bytes_per_step
    peak_flops = peaks["peak_gflops_per_s"] * 1e9
    peak_bw = peaks["peak_gbytes_per_s"] * 1e9
    attainable = min(peak_flops, intensity * peak_bw)
    return {
        "achieved_gflops_per_s": flops / seconds / 1e9,
        "achieved_gbytes_per_s": bytes_per_step / seconds / 1e9,
        "trace_bytes_per_step": bytes_per_step,
        "arithmetic_intensity": intensity,
        "roofline_bound": "memory" if intensity < peak_flops / peak_bw else "compute",
        "roofline_pct_of_attainable": 100 * (flops / seconds) / attainable,
        **peaks,
    }
