"""FastSwish's Triton kernels (marked `triton`): on a CUDA device, or on CPU tensors under TRITON_INTERPRET=1.

tests/conftest.py sets TRITON_INTERPRET=1 on a machine without CUDA, so `pytest tests/` runs these everywhere: in
triton's interpreter on a CPU, compiled on a GPU (the `gpu` tests at the end then run too). Criteria: as
tests/test_fastswish.py (float64 reference, dtype tolerance table).

Sample: pytest tests/test_fastswish_triton.py -q                      # interpreted on a CPU, compiled on a GPU
        TRITON_INTERPRET=1 pytest tests/test_fastswish_triton.py -q   # interpreted on a GPU machine too
"""

from __future__ import annotations

import os
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nn_speedups.kernels.fastswish import fastswish_reference
from nn_speedups.kernels.fastswish_triton import backend_for, fastswish_triton
from tests.test_fastswish import (
    ATOL,
    DTYPES,
    EXAMPLES,
    RTOL,
    assert_matches,
    grad_of,
    middle_branch_scale,
    reference_grad,
    value_lists,
    wide,
)

pytestmark = pytest.mark.triton
dtypes = pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_device() -> str:
    """CPU tensors under the interpreter, else the CUDA device (the `triton` marker has checked there is one)."""
    return "cpu" if interpreted() else "cuda"


def test_the_op_runs_the_triton_kernels():
    device = triton_device()
    assert backend_for(device) == ("triton-interpreter" if interpreted() else "triton")
    x = wide(100).to(device)
    assert_matches(fastswish_triton(x).cpu(), fastswish_reference(x.double()).cpu(), x.cpu(), 2e-6, 1e-37)
    kernels = sys.modules.get("nn_speedups.kernels.fastswish_triton_kernels")
    assert kernels is not None, "the op did not load its Triton kernels"
    if interpreted():
        from triton.runtime.interpreter import InterpretedFunction

        assert isinstance(kernels.fastswish_forward_kernel, InterpretedFunction)
        assert isinstance(kernels.fastswish_backward_kernel, InterpretedFunction)


@dtypes
@pytest.mark.parametrize("n", [1, 1023, 1024, 1025, 2 * 1024 + 3])
def test_the_kernels_write_every_element_and_nothing_beyond(dtype, n):
    """Launch directly into the head of a NaN-filled buffer: every one of the n outputs is written, the tail is not."""
    from nn_speedups.kernels import fastswish_triton_kernels as kernels

    assert kernels.BLOCK == 1024, "the sizes above straddle one and two blocks"
    device, tail = triton_device(), 37
    x, dy = wide(n).to(dtype).to(device), wide(n, seed=1).to(dtype).to(device)
    y_buffer = torch.full((n + tail,), float("nan"), dtype=dtype, device=device)
    dx_buffer = torch.full((n + tail,), float("nan"), dtype=dtype, device=device)
    kernels.launch_forward(x, y_buffer[:n])
    kernels.launch_backward(x, dy, dx_buffer[:n])
    assert y_buffer[n:].isnan().all() and dx_buffer[n:].isnan().all(), "a kernel wrote past the end"
    x, dy = x.cpu(), dy.cpu()
    y, dx = y_buffer[:n].cpu(), dx_buffer[:n].cpu()
    assert_matches(y, fastswish_reference(x.double()), x, RTOL[dtype], ATOL[dtype], what=f"forward n={n}")
    scale = middle_branch_scale(x, dy)
    want = reference_grad(x, dy)
    assert_matches(dx, want, x, RTOL[dtype], ATOL[dtype], scale=scale, what=f"backward n={n}")


@dtypes
@EXAMPLES
@given(st.data())
def test_the_op_on_the_triton_device_matches_the_reference(dtype, data):
    values = data.draw(value_lists)
    dy_values = data.draw(st.lists(st.floats(-8, 8), min_size=len(values), max_size=len(values)))
    x = torch.tensor(values, dtype=torch.float64).to(dtype)
    dy = torch.tensor(dy_values, dtype=torch.float64).to(dtype)
    device = triton_device()
    y = fastswish_triton(x.to(device)).cpu()
    dx = grad_of(fastswish_triton, x.to(device), dy.to(device)).cpu()
    assert (y.dtype, dx.dtype) == (dtype, dtype)
    assert_matches(y, fastswish_reference(x.double()), x, RTOL[dtype], ATOL[dtype], what=f"forward {dtype}")
    scale = middle_branch_scale(x, dy)
    assert_matches(dx, reference_grad(x, dy), x, RTOL[dtype], ATOL[dtype], scale=scale, what=f"backward {dtype}")


@pytest.mark.gpu
@pytest.mark.skipif(
    interpreted() and torch.cuda.is_available(), reason="TRITON_INTERPRET=1 runs the kernels in the interpreter"
)
@dtypes
def test_the_kernels_on_cuda_match_the_reference(dtype):
    assert backend_for("cuda") == "triton"
    n = (1 << 20) + 3  # many blocks, the last one partial
    x = (torch.randn(n, device="cuda", dtype=torch.float64) * 4).to(dtype)
    x[:6] = torch.tensor([3.0, -3.0, -21 / 13, float("inf"), -float("inf"), float("nan")], dtype=dtype)
    dy = torch.randn(n, device="cuda", dtype=torch.float64).to(dtype)
    y = fastswish_triton(x)
    dx = grad_of(fastswish_triton, x, dy)
    x_cpu, dy_cpu = x.cpu(), dy.cpu()
    assert_matches(y.cpu(), fastswish_reference(x_cpu.double()), x_cpu, RTOL[dtype], ATOL[dtype], what="cuda forward")
    scale = middle_branch_scale(x_cpu, dy_cpu)
    want = reference_grad(x_cpu, dy_cpu)
    assert_matches(dx.cpu(), want, x_cpu, RTOL[dtype], ATOL[dtype], scale=scale, what="cuda backward")

    channels_last = (torch.randn(4, 6, 9, 11, device="cuda") * 4).to(dtype).to(memory_format=torch.channels_last)
    y = fastswish_triton(channels_last)
    assert y.is_contiguous(memory_format=torch.channels_last)
    x_cpu = channels_last.cpu()
    assert_matches(y.cpu(), fastswish_reference(x_cpu.double()), x_cpu, RTOL[dtype], ATOL[dtype], what="channels-last")

    torch._dynamo.reset()
    compiled = torch.compile(lambda t: fastswish_triton(t) * 2, fullgraph=True)
    leaf = x.detach().clone().requires_grad_(True)
    out = compiled(leaf)
    out.backward(dy)
    torch.testing.assert_close(out, 2 * fastswish_triton(x), rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(leaf.grad, 2 * dx, rtol=RTOL[dtype], atol=ATOL[dtype], equal_nan=True)
