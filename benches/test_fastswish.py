"""FastSwish, from the autograd reference to the Triton kernels (nn_speedups/kernels/), at two levels.

Kernel level (`test_kernel`): forward (read x, write y), backward (read x and dy, write dx) and both, over tensor
sizes (quick: 2^16 and 2^20 elements in fp32; full: 2^16..2^28 in fp32 and bf16), for `reference-eager` (plain
torch ops under autograd),
`reference-compile` (the same, torch.compile'd), `custom-function` (saves only x), `triton` (the torch.library op),
and torch's own `gelu`, `hardswish`, `relu` for comparison. extra_info adds `achieved_gbps` (the fewest bytes the
pass must move: 2N elements forward, 3N backward, 5N both, over the median time) and `pct_of_copy_bw`, against a
device-to-device copy of the same size and dtype timed in the same session (`copy_gbps`). A size speaks of memory
bandwidth only when even the copy's working set (2N elements) exceeds the last-level cache (the CPU's LLC, the GPU's
L2: `llc_bytes`): `regime` is `memory` there and `cache` below, and the report keeps the two apart (a cache-resident
relu can beat a "copy bandwidth" measured at another size; against a copy at its own size it cannot). Correctness
first: outputs and gradients against the float64 reference (or torch's op in float64), within the dtype tolerance.

Model level (`test_model_inference`, `test_model_training`): convnext-seed with gelu-tanh (its own), relu, hardswish
and each FastSwish implementation, eager and compiled (seed 001's activation table; a swapped model is checked against
eager of the same swapped model): inference latency, training-step time (forward, backward, AdamW), peak device
memory and, for eager training, the bytes autograd saves for backward (the seed's memory finding: the autograd
reference saves far more than the custom backward).

On a CPU the `triton` op runs the custom Function's math (`backend` in extra_info says so) unless
TRITON_INTERPRET=1, where the kernel-level timing is skipped: timing the interpreter means nothing.

    pytest benches/test_fastswish.py --benchmark-autosave
    pytest benches/test_fastswish.py -k test_kernel --profile full           # on a GPU: 2^16 .. 2^28 elements
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nn_speedups.core.env import last_level_cache_bytes
from nn_speedups.kernels.fastswish import fastswish_custom, fastswish_reference
from nn_speedups.kernels.fastswish_triton import TRITON_INTERPRETER, backend_for, fastswish_triton
from nn_speedups.matrix.axes import DTYPES
from nn_speedups.matrix.declare import matrix
from nn_speedups.matrix.variant import COMPILE, EAGER, Variant
from nn_speedups.measure import timing
from nn_speedups.measure.correctness import check_exact
from nn_speedups.measure.protocol import measure_rounds
from nn_speedups.optimizations import training
from nn_speedups.plugin import SETTINGS, VARIANT_NAMES

IMPLEMENTATIONS = {
    "reference-eager": lambda: fastswish_reference,
    "reference-compile": lambda: torch.compile(fastswish_reference, dynamic=False),
    "custom-function": lambda: fastswish_custom,
    "triton": lambda: fastswish_triton,
    "gelu": lambda: F.gelu,
    "hardswish": lambda: F.hardswish,
    "relu": lambda: F.relu,
}
REFERENCES = {"gelu": F.gelu, "hardswish": F.hardswish, "relu": F.relu}  # the rest: fastswish_reference
BYTES_PER_ELEMENT_MOVED = {"fwd": 2, "bwd": 3, "fwd+bwd": 5}  # tensors read + written, in elements


def _count(n: int) -> str:
    """64K, 1M, 256M: element counts as node ids can hold them (-k expressions reject '^')."""
    return f"{n >> 20}M" if n >= 1 << 20 else f"{n >> 10}K"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.function.__name__ != "test_kernel":
        return
    settings = metafunc.config.stash[SETTINGS]
    metafunc.config.stash[VARIANT_NAMES].update(IMPLEMENTATIONS)  # --variants selects implementations too
    implementations = list(IMPLEMENTATIONS)
    marks = []
    if settings.profile.gpu_paths_only:  # smoke: the compiled Triton kernels are the GPU-only path here
        implementations = ["triton"]
        if backend_for(settings.device) != "triton":
            marks = [
                pytest.mark.skip(reason="the smoke profile times the compiled Triton kernels: needs a CUDA device")
            ]

    def left_out(mode: str) -> list:
        if mode in settings.profile.kernel_modes:
            return []
        reason = f"{mode} alone is left out of the {settings.profile.name} profile to keep it short; --profile full"
        return [pytest.mark.skip(reason=reason + " runs it")]

    params = [
        pytest.param(impl, mode, dtype, n, id=f"{impl}-{mode}-{dtype}-n{_count(n)}", marks=marks or left_out(mode))
        for impl in implementations
        for mode in BYTES_PER_ELEMENT_MOVED
        for dtype in settings.profile.kernel_dtypes
        for n in settings.profile.kernel_sizes
    ]
    metafunc.parametrize("variant, mode, dtype, n", params)


@pytest.fixture(scope="session")
def copy_bandwidth(settings):
    """copy_bandwidth(n, dtype): device-to-device copy bandwidth of n elements (bytes read plus bytes written per
    second), timed once per size and dtype in this session: the reference of the kernels timed at that size."""
    measured: dict[tuple, float] = {}

    def gbps(n: int, dtype: torch.dtype) -> float:
        if (n, dtype) not in measured:
            src = torch.randn(n, device=settings.device).to(dtype)
            dst = torch.empty_like(src)
            summary = measure_rounds(lambda: dst.copy_(src), timing.synchronizer(settings.device), settings.profile)
            measured[(n, dtype)] = 2 * src.nbytes / (summary.median_ms / 1e3) / 1e9
        return measured[(n, dtype)]

    return gbps


@pytest.fixture(scope="session")
def llc_bytes(settings) -> int | None:
    return last_level_cache_bytes(settings.device)


def regime(n: int, element_size: int, llc: int | None) -> str | None:
    """'memory' when even a copy of n elements (read n, write n) cannot stay in the last-level cache, else 'cache'
    (None: cache size unknown)."""
    if not llc:
        return None
    return "memory" if 2 * n * element_size > llc else "cache"


def _reference(impl: str):
    return REFERENCES.get(impl, fastswish_reference)


def _check(impl: str, mode: str, fn, x: torch.Tensor, dy: torch.Tensor, label: str) -> None:
    """Forward values and input gradients against the float64 reference, within the dtype tolerance."""
    x64 = x.detach().double().requires_grad_()
    y64 = _reference(impl)(x64)
    if mode == "fwd":
        with torch.no_grad():
            check_exact(fn(x), y64.detach(), x.dtype, label=label)
        return
    (dx64,) = torch.autograd.grad(y64, x64, dy.double())
    (dx,) = torch.autograd.grad(fn(x), x, dy)
    check_exact(dx, dx64, x.dtype, label=label)


def test_kernel(variant, mode, dtype, n, settings, measure_fn, copy_bandwidth, llc_bytes):
    impl = variant
    backend = backend_for(settings.device) if impl == "triton" else "torch"
    if backend == TRITON_INTERPRETER:
        pytest.skip("TRITON_INTERPRET=1 runs the kernels in an interpreter: timing it means nothing")
    torch_dtype = DTYPES[dtype]
    generator = torch.Generator().manual_seed(n)
    # 4 sigma spans every branch: x > 3, the middle, x < -3
    x = (4 * torch.randn(n, generator=generator)).to(settings.device, torch_dtype).requires_grad_(mode != "fwd")
    dy = torch.randn(n, generator=generator).to(settings.device, torch_dtype)
    torch._dynamo.reset()
    fn = IMPLEMENTATIONS[impl]()
    label = f"{impl}-{mode}-{dtype}-n{n}"
    _check(impl, mode, fn, x, dy, label)
    if mode == "fwd":

        def run():
            with torch.no_grad():
                return fn(x)
    elif mode == "bwd":
        y = fn(x)  # one graph, kept: each round runs only the backward

        def run():
            return torch.autograd.grad(y, x, dy, retain_graph=True)
    else:

        def run():
            return torch.autograd.grad(fn(x), x, dy)

    moved = BYTES_PER_ELEMENT_MOVED[mode] * n * x.element_size()
    copy_gbps = copy_bandwidth(n, torch_dtype)

    def bandwidth(fields: dict) -> dict:
        gbps = moved / (fields["median_ms"] / 1e3) / 1e9
        return {"achieved_gbps": gbps, "pct_of_copy_bw": 100 * gbps / copy_gbps}

    record = {
        "family": "fastswish-kernel",
        "model": "fastswish-kernel",
        "variant": impl,
        "mode": mode,
        "device": settings.device,
        "dtype": dtype,
        "elements": n,
        "batch_size": n,
        "backend": backend,
        "bytes_moved": moved,
        "copy_gbps": copy_gbps,
        "working_set_bytes": 2 * n * x.element_size(),
        "llc_bytes": llc_bytes,
        "regime": regime(n, x.element_size(), llc_bytes),
    }
    measure_fn(f"fastswish-kernel/{mode}-{dtype}-n{_count(n)}", run, settings.device, record, bandwidth)


ACTIVATIONS = ["gelu-tanh", "relu", "hardswish", "fastswish", "fastswish-custom", "fastswish-triton"]
TRAINING_VARIANTS = [
    Variant("vanilla", training.step_apply(), check="exact"),
    Variant("compile", training.step_apply(compile=True), check="exact", compiles=True),
]


@matrix([EAGER, COMPILE], models=["convnext-seed"], activations=ACTIVATIONS)
def test_model_inference(case, measure, benchmark):
    record = measure(case)
    record["backend"] = benchmark.extra_info["backend"] = _backend(case)


@matrix(TRAINING_VARIANTS, models=["convnext-seed"], activations=ACTIVATIONS, training=True)
def test_model_training(case, measure_training, benchmark):
    record = measure_training(case)
    record["backend"] = benchmark.extra_info["backend"] = _backend(case)


def _backend(case) -> str:
    return backend_for(case.device) if case.activation == "fastswish-triton" else "torch"
