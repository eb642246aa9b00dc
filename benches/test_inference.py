"""PyTorch inference: eager fp32 against torch.compile, autocast, half precision and channels-last.

Measures: median/p90/p99 latency per batch, samples/s, speedup over eager fp32 of the same model and batch in the
same run, peak device/host memory, compile time (apart), model size, GFLOPs. Seed 001's activation table (convnext-seed
with gelu-tanh, relu, hardswish and each FastSwish implementation, eager and compiled) is the FastSwish family's
model level: benches/test_fastswish.py.

Correctness, before any timing: `exact` variants (fp32 compile, channels-last) match eager fp32 within the dtype
tolerance of nn_speedups/measure/correctness.py; `lowp` variants (AMP, half) keep cosine >= 0.99 with eager fp32;
compiled variants must compile to at least one graph with no graph breaks.

    pytest benches/test_inference.py --benchmark-autosave
    pytest benches/test_inference.py --profile full --models convnext-seed --batch-sizes 1,8,64 --variants eager,compile
"""

from __future__ import annotations

from nn_speedups.matrix.declare import matrix
from nn_speedups.matrix.variant import COMPILE, EAGER, Variant
from nn_speedups.optimizations import compile as compile_
from nn_speedups.optimizations import precision
from nn_speedups.optimizations.base import Runner


def compiled(mode=None, amp=False, channels_last=False):
    def apply(model, inputs, ctx) -> Runner:
        config = compile_.CompileConfig(
            device=ctx.device,
            mode=mode,
            autocast_dtype=ctx.dtype if amp else None,
            channels_last=channels_last,
        )
        return compile_.apply(model, inputs, config)

    return apply


def amp(model, inputs, ctx) -> Runner:
    return precision.apply_amp(model, inputs, precision.AmpConfig(ctx.device, ctx.dtype))


def half(model, inputs, ctx) -> Runner:
    return precision.apply_half(model, inputs, precision.HalfConfig(ctx.dtype))


def channels_last(model, inputs, ctx) -> Runner:
    return precision.apply_channels_last(model, inputs, precision.ChannelsLastConfig())


VARIANTS = [
    EAGER,
    COMPILE,
    Variant("compile-max-autotune", compiled(mode="max-autotune"), check="exact", marks=("slow",), compiles=True),
    Variant("compile-cudagraphs", compiled(mode="reduce-overhead"), check="exact", marks=("gpu",), compiles=True),
    Variant("amp-bf16", amp, check="lowp", dtype="bf16"),
    Variant("amp-fp16", amp, check="lowp", dtype="fp16", marks=("gpu",)),
    Variant("compile-amp", compiled(amp=True), check="lowp", dtype="lowp", compiles=True),
    Variant("channels-last", channels_last, check="exact", only="conv"),
    Variant(
        "channels-last-compile-amp",
        compiled(amp=True, channels_last=True),
        check="lowp",
        dtype="lowp",
        only="conv",
        compiles=True,
    ),
    Variant("half", half, check="lowp", dtype="lowp"),
]


@matrix(VARIANTS)
def test_inference(case, measure):
    measure(case)
