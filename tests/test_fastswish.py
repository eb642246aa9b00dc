"""FastSwish proofs: the float64 reference, the custom autograd Function and the Triton op `nn_speedups::fastswish`.

Implementations are compared with the float64 reference (forward) and with autograd through it (backward), over
hypothesis-drawn inputs that include the joints at -3 and 3, the minimum at -21/13, large magnitudes, subnormals,
infinities and NaN, in fp32, fp16, bf16 (computed in fp32, returned in the input dtype) and fp64.

How the Triton kernels get tested without a GPU: tests/conftest.py sets TRITON_INTERPRET=1 on a machine without
CUDA before any kernel is imported (triton decides when it decorates a kernel whether it compiles it or interprets
it), so in `pytest tests/` the `triton-op` cases here and tests/test_fastswish_triton.py run the real kernels in
triton's interpreter on CPU tensors; on a GPU machine they run compiled on CUDA. The benches on a CPU run the op's
fallback instead (the custom Function's math behind the same op): test_the_op_fallback_in_a_fresh_process starts
`python -m pytest` with TRITON_INTERPRET=0 on the `triton-op` cases to prove that path too.

Sample: pytest tests/test_fastswish.py -q
"""

from __future__ import annotations

import copy
import importlib.util
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from nn_speedups.kernels.fastswish import (
    MINIMUM_AT,
    A,
    B,
    FastSwishCustom,
    FastSwishLayer,
    fastswish_custom,
    fastswish_reference,
)
from nn_speedups.kernels.fastswish_triton import (
    FastSwishTriton,
    backend_for,
    export_onnx,
    fastswish_triton,
    onnx_translation_table,
)

ROOT = Path(__file__).resolve().parent.parent

IMPLEMENTATIONS = {"custom-function": fastswish_custom, "triton-op": fastswish_triton}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}
# Relative tolerance against float64: a few roundings in the compute dtype (fp32 for fp16/bf16), then one
# rounding to the output dtype (half an eps).
RTOL = {torch.float64: 1e-13, torch.float32: 2e-6, torch.float16: 2**-10, torch.bfloat16: 2**-7}
# Absolute floor: outputs below fp32's (fp64's) normal range may be flushed to zero on a GPU; fp16 outputs are
# rounded from fp32 and keep their subnormals, up to half the smallest one.
ATOL = {
    torch.float64: torch.finfo(torch.float64).tiny,
    torch.float32: torch.finfo(torch.float32).tiny,
    torch.float16: 2**-25,
    torch.bfloat16: torch.finfo(torch.float32).tiny,
}
SPECIAL = [0.0, -0.0, 3.0, -3.0, 3.0000001, 2.9999999, -3.0000001, -2.9999999, MINIMUM_AT, -A, 1e-45, -1e-45]
SPECIAL += [5e-324, -5e-324, 1e-310, -1e-310, 1e-5, -1e-5, 65504.0, -65504.0, 3e38, -3e38, 1e300, -1e300]
values = st.one_of(
    st.floats(-8, 8),
    st.floats(-3.01, -2.99),
    st.floats(2.99, 3.01),
    st.floats(MINIMUM_AT - 0.01, MINIMUM_AT + 0.01),
    st.floats(allow_nan=False, allow_infinity=False),  # magnitudes up to 1.8e308 (inf in the narrower dtypes)
    st.floats(-1e-4, 1e-4),  # fp16 subnormals
    st.floats(-1e-37, 1e-37),  # fp32 subnormals
    st.floats(-1e-300, 1e-300),  # fp64 subnormals
    st.sampled_from(SPECIAL),
)
value_lists = st.lists(values, max_size=48)
EXAMPLES = settings(max_examples=40, deadline=None)


def assert_matches(
    got: torch.Tensor, want: torch.Tensor, x: torch.Tensor, rtol: float, atol: float, scale=0.0, what=""
):
    """NaN exactly where `want` (float64) has NaN, the same infinities, elsewhere
    |got - want| <= rtol * (|want| + scale) + atol. The message names the worst element."""
    got64, want, x = got.detach().double().flatten(), want.detach().double().flatten(), x.detach().flatten()
    scale = torch.as_tensor(scale, dtype=torch.float64).expand_as(want.view_as(got)).flatten()
    assert got64.shape == want.shape, f"{what}: shape {tuple(got.shape)} != reference {tuple(want.shape)}"
    nan_differs = got64.isnan() != want.isnan()
    assert not nan_differs.any(), f"{what}: NaN mismatch at x={x[nan_differs][:5].tolist()}: {got64[nan_differs][:5]}"
    inf = got64.isinf() | want.isinf()
    inf_differs = got64[inf] != want[inf]
    assert not inf_differs.any(), f"{what}: inf mismatch at x={x[inf][inf_differs][:5].tolist()}"
    finite = ~(want.isnan() | inf)
    err = (got64 - want).abs()[finite]
    allowed = rtol * (want.abs() + scale)[finite] + atol
    if err.numel() and (err > allowed).any():
        i = (err / allowed).argmax()
        raise AssertionError(
            f"{what}: max error {err.max().item():.3g}, worst at x={x[finite][i].item()!r}: got "
            f"{got64[finite][i].item()!r}, want {want[finite][i].item()!r}, allowed {allowed[i].item():.3g} "
            f"(rtol {rtol:.3g}, atol {atol:.3g})"
        )


def middle_branch_scale(x: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """(2x + a) cancels near the minimum, so there dx's error is relative to |dy| (2|x| + a) / b, not to |dx|."""
    x, dy = x.detach().double(), dy.detach().double()
    return dy.abs() * torch.where(x.abs() <= 3, (2 * x.abs() + A) / B, 0.0)


def grad_of(function, x: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    leaf = x.detach().clone().requires_grad_(True)
    function(leaf).backward(dy)
    return leaf.grad


def reference_grad(x: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    return grad_of(fastswish_reference, x.double(), dy.double())


def wide(*shape: int, seed: int = 0) -> torch.Tensor:
    """Normal samples times 4: about 45% of them land outside [-3, 3]."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 4


implementations = pytest.mark.parametrize("impl", IMPLEMENTATIONS.values(), ids=IMPLEMENTATIONS.keys())
dtypes = pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16], ids=["fp64", "fp32", "fp16"])
def test_autograd_through_the_reference_gives_the_piecewise_derivative_everywhere(dtype):
    """Also at 0 and where x * x underflows: the unused -1/x^2 branch must not turn the gradient into NaN."""
    points = [0.0, -0.0, 1e-30, -1e-30, 1e-5, -3.0, 3.0, -3.5, 4.0, MINIMUM_AT, -1e4, 1e4, float("inf"), -float("inf")]
    x = torch.tensor(points, dtype=dtype)
    leaf = x.clone().requires_grad_(True)
    fastswish_reference(leaf).sum().backward()
    xs = x.double().tolist()
    want = torch.tensor([1.0 if v > 3 else (2 * v + A) / B if v >= -3 else 2 / v**3 for v in xs], dtype=torch.float64)
    assert_matches(leaf.grad, want, x, RTOL[dtype], ATOL[dtype], scale=middle_branch_scale(x, torch.ones_like(x)))
    nan_leaf = torch.tensor([float("nan")], dtype=dtype, requires_grad=True)
    fastswish_reference(nan_leaf).sum().backward()
    assert nan_leaf.grad.isnan().all(), f"f'(nan) should be nan, got {nan_leaf.grad}"


@implementations
@dtypes
@EXAMPLES
@given(value_lists)
def test_forward_matches_the_float64_reference(impl, dtype, values):
    x = torch.tensor(values, dtype=torch.float64).to(dtype)
    y = impl(x)
    assert y.dtype == dtype, f"output dtype {y.dtype}, input {dtype}"
    assert_matches(y, fastswish_reference(x.double()), x, RTOL[dtype], ATOL[dtype], what=f"forward {dtype}")


@implementations
@dtypes
@EXAMPLES
@given(st.data())
def test_backward_matches_autograd_through_the_reference(impl, dtype, data):
    values = data.draw(value_lists)
    dy_values = data.draw(st.lists(st.floats(-8, 8), min_size=len(values), max_size=len(values)))
    x = torch.tensor(values, dtype=torch.float64).to(dtype)
    dy = torch.tensor(dy_values, dtype=torch.float64).to(dtype)
    dx = grad_of(impl, x, dy)
    assert dx.dtype == dtype, f"grad dtype {dx.dtype}, input {dtype}"
    scale = middle_branch_scale(x, dy)
    assert_matches(dx, reference_grad(x, dy), x, RTOL[dtype], ATOL[dtype], scale=scale, what=f"backward {dtype}")


away_from_the_joints = st.one_of(st.floats(-40, -3.001), st.floats(-2.999, 2.999), st.floats(3.001, 40))


@implementations
@settings(max_examples=15, deadline=None)
@given(st.lists(away_from_the_joints, min_size=1, max_size=16))
def test_gradcheck_in_float64(impl, values):
    x = torch.tensor(values, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(impl, (x,), eps=1e-6, atol=1e-8, rtol=1e-6)


LAYOUTS = {  # name: (base tensor, the view of it that the activation sees)
    "empty": (lambda: torch.empty(0), lambda b: b),
    "empty-3x0x5": (lambda: torch.empty(3, 0, 5), lambda b: b),
    "one-element": (lambda: torch.tensor([MINIMUM_AT]), lambda b: b),
    "odd-1025": (lambda: wide(1025), lambda b: b),
    "odd-3x7x11": (lambda: wide(3, 7, 11), lambda b: b),
    "transposed": (lambda: wide(13, 9), lambda b: b.t()),
    "strided": (lambda: wide(6, 20), lambda b: b[:, ::3]),
    "channels-last": (lambda: wide(2, 5, 7, 3).to(memory_format=torch.channels_last), lambda b: b),
    "expanded": (lambda: wide(1, 7), lambda b: b.expand(5, 7)),
}


@implementations
@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_shapes_and_memory_layouts(impl, layout):
    make_base, view = layout
    base = make_base()
    x = view(base)
    y = impl(x)
    assert y.shape == x.shape
    assert y.numel() == 0 or y.data_ptr() != x.data_ptr(), "the output must not alias the input"
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        assert y.is_contiguous(memory_format=torch.channels_last), f"channels-last lost: strides {y.stride()}"
    rtol, atol = RTOL[torch.float32], ATOL[torch.float32]
    assert_matches(y, fastswish_reference(x.double()), x, rtol, atol, what="forward")

    dy = wide(*x.shape, seed=1)  # contiguous, whatever x's layout
    got_base = base.clone().requires_grad_(True)
    impl(view(got_base)).backward(dy)
    want_base = base.double().requires_grad_(True)
    fastswish_reference(view(want_base)).backward(dy.double())
    assert got_base.grad.shape == base.shape
    # Where the view repeats an element (expanded), its gradient is a sum: the error is relative to the sum of
    # the terms' magnitudes, pulled back through the view the same way.
    terms = reference_grad(x, dy).abs() + middle_branch_scale(x, dy)
    scale = torch.zeros(base.shape, dtype=torch.float64, requires_grad=True)
    view(scale).backward(terms)
    assert_matches(got_base.grad, want_base.grad, base, rtol, atol, scale=scale.grad, what="backward")


@implementations
@dtypes
def test_inf_and_nan_propagate_as_the_reference_does(impl, dtype):
    inf, nan = float("inf"), float("nan")
    x = torch.tensor([inf, -inf, nan, 0.0, -0.0, 3.0, -3.0, 4.0, -4.0, MINIMUM_AT], dtype=dtype)
    y = impl(x)
    assert y[0].item() == inf and y[1].item() == 0.0 and y[2].isnan(), f"f(inf, -inf, nan) = {y[:3].tolist()}"
    assert_matches(y, fastswish_reference(x.double()), x, RTOL[dtype], ATOL[dtype], what="forward")
    dy = torch.ones_like(x)
    dx = grad_of(impl, x, dy)
    assert dx[0].item() == 1.0 and dx[1].item() == 0.0 and dx[2].isnan(), f"f'(inf, -inf, nan) = {dx[:3].tolist()}"
    scale = middle_branch_scale(x, dy)
    assert_matches(dx, reference_grad(x, dy), x, RTOL[dtype], ATOL[dtype], scale=scale, what="backward")


@implementations
def test_integer_input_is_refused(impl):
    with pytest.raises(TypeError, match="floating-point"):
        impl(torch.arange(5))


@implementations
def test_saves_only_its_input_for_backward(impl):
    def saved_by(function):
        saved = []
        x = wide(64).requires_grad_(True)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            y = function(x)
        y.sum().backward()
        return x, saved

    _, by_reference = saved_by(fastswish_reference)
    assert len(by_reference) > 1, f"the hook should see the reference's intermediates, saw {len(by_reference)}"
    x, saved = saved_by(impl)
    assert len(saved) == 1 and saved[0].data_ptr() == x.data_ptr(), f"saved {[tuple(t.shape) for t in saved]}"


@implementations
def test_under_cpu_autocast_it_keeps_the_dtype_it_is_given(impl):
    torch.manual_seed(0)
    linear = nn.Linear(16, 16)
    x = wide(8, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = linear(x)
        y = impl(h)
        y_fp32 = impl(x)
    assert (h.dtype, y.dtype, y_fp32.dtype) == (torch.bfloat16, torch.bfloat16, torch.float32)
    assert ((h < -3).any() and (h > 3).any()).item(), "the test should reach both outer branches"
    bf16 = torch.bfloat16
    assert_matches(y, fastswish_reference(h.double()), h, RTOL[bf16], ATOL[bf16], what="autocast forward")

    y.float().sum().backward()
    dh = reference_grad(h.detach(), torch.ones_like(h))
    want = dh.t() @ x.to(torch.bfloat16).double()  # dW of y = f(x W^T + b), summed
    err = (linear.weight.grad.double() - want).norm() / want.norm()
    assert err < 2e-2, f"autocast backward: relative error of dW {err:.3g} > 2e-2"


def record_graphs(graphs: list):
    def backend(gm: torch.fx.GraphModule, example_inputs):
        graphs.append(gm)
        return gm.forward

    return backend


@implementations
def test_torch_compile_sees_no_graph_break_forward_and_backward(impl):
    torch._dynamo.reset()
    linear = nn.Linear(8, 8)
    model = lambda x: impl(linear(x))
    x = wide(4, 8)
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, f"{explanation.graph_break_count} graph breaks: {explanation}"
    assert explanation.graph_count == 1

    graphs = []
    torch.compile(model, backend=record_graphs(graphs), fullgraph=True)(x)
    targets = [node.target for gm in graphs for node in gm.graph.nodes if node.op == "call_function"]
    if impl is fastswish_triton:
        assert targets.count(torch.ops.nn_speedups.fastswish.default) == 1, f"graph calls {targets}"

    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x_eager, x_compiled = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    dy = wide(4, 8, seed=2)
    model(x_eager).backward(dy)
    y = compiled(x_compiled)
    y.backward(dy)
    torch.testing.assert_close(y, model(x), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(x_compiled.grad, x_eager.grad, rtol=1e-6, atol=1e-6)


@implementations
def test_inductor_compiled_forward_matches_eager(impl):
    torch._dynamo.reset()
    linear = nn.Linear(8, 8)
    model = lambda x: impl(linear(x)) * 2
    x = wide(4, 8)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), model(x), rtol=1e-6, atol=1e-6)


def test_registry_entries_compute_fastswish():
    from nn_speedups.models.activations import ACTIVATIONS, make_activation

    xs = torch.tensor([-6.0, -3.0, -1.7, -0.5, 0.0, 0.3, 2.0, 3.0, 4.5], dtype=torch.float64)
    formula = [-1 / v**2 if v < -3 else v * (v + A) / B if v <= 3 else v for v in xs.tolist()]
    want = torch.tensor(formula, dtype=torch.float64)
    for name, kind in (("fastswish-custom", FastSwishCustom), ("fastswish-triton", FastSwishTriton)):
        assert name in ACTIVATIONS
        layer = make_activation(name)
        assert type(layer) is kind
        assert_matches(layer(xs), want, xs, 1e-13, ATOL[torch.float64], what=name)


def test_models_with_an_activation_slot_take_the_fastswish_variants():
    from nn_speedups.models import REGISTRY, build_model
    from nn_speedups.models.activations import swap_activations
    from nn_speedups.models.registry import image_inputs

    specs = [spec for spec in REGISTRY.values() if "activation-slot" in spec.tags]
    assert specs, "no model has an activation slot"
    for spec in specs:
        for name, kind in (("fastswish-custom", FastSwishCustom), ("fastswish-triton", FastSwishTriton)):
            model = build_model(spec, image_size=32, activation=name)
            layers = [m for m in model.modules() if isinstance(m, FastSwishLayer)]
            assert layers and all(type(m) is kind for m in layers), f"{spec.name}: {name} layers {layers[:2]}"
            reference = copy.deepcopy(model)
            assert swap_activations(reference, "fastswish") == len(layers)
            (x,) = image_inputs(2, 32)
            with torch.no_grad():
                got, want = model(x), reference(x)
            err = ((got - want).abs().max() / want.abs().max()).item()
            assert err < 1e-5, f"{spec.name} with {name}: max error {err:.3g} (relative to max |output|) vs reference"


def test_backend_for_names_what_runs_and_importing_needs_no_triton():
    if importlib.util.find_spec("triton") is None:
        expected = ("custom-function-fallback", "custom-function-fallback")
    elif os.environ.get("TRITON_INTERPRET") == "1":
        expected = ("triton-interpreter", "triton-interpreter")
    else:
        expected = ("custom-function-fallback", "triton")
    assert (backend_for("cpu"), backend_for(torch.device("cuda", 0))) == expected
    # torch itself imports triton when it first dispatches a custom op (torch._dynamo does), so what is checked is
    # that importing kernels imports no triton and that the CPU fallback never loads the Triton kernels module.
    code = (
        "import sys, torch, nn_speedups.kernels.fastswish_triton as k; print('triton' in sys.modules); "
        "assert k.backend_for('cpu') == 'custom-function-fallback'; "
        "k.fastswish_triton(torch.ones(3)); print('nn_speedups.kernels.fastswish_triton_kernels' in sys.modules)"
    )
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    imported_triton, loaded_kernels = result.stdout.split()
    assert imported_triton == "False", "importing nn_speedups.kernels.fastswish_triton imported triton"
    assert loaded_kernels == "False", "the CPU fallback loaded the Triton kernels"


@pytest.mark.ort
def test_a_model_with_the_op_exports_to_onnx_and_runs_in_onnx_runtime(tmp_path):
    import onnxruntime as ort

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), FastSwishTriton(), nn.Conv2d(8, 4, 1)).eval()
    x = wide(2, 3, 12, 12)
    with torch.no_grad():
        hidden, want = model[0](x), model(x)
    assert ((hidden < -3).any() and (hidden > 3).any()).item(), "the activation should see all three branches"

    program = torch.onnx.export(model, (x,), dynamo=True, custom_translation_table=onnx_translation_table())
    nodes = [(node.domain, node.op_type) for node in program.model_proto.graph.node]
    assert ("", "Where") in nodes and all(domain in ("", "ai.onnx") for domain, _ in nodes), nodes
    path = tmp_path / "fastswish.onnx"
    program.save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_providers() == ["CPUExecutionProvider"]
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    err = (got - want).abs().max().item()
    assert err <= 1e-5 * want.abs().max().item(), f"ONNX Runtime vs torch: max error {err:.3g}"

    x16 = wide(5, 9).to(torch.float16)
    program16 = export_onnx(FastSwishTriton().eval(), (x16,))
    session16 = ort.InferenceSession(program16.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got16 = torch.from_numpy(session16.run(None, {session16.get_inputs()[0].name: x16.numpy()})[0])
    assert got16.dtype == torch.float16
    f16 = torch.float16
    assert_matches(got16, fastswish_reference(x16.double()), x16, RTOL[f16], ATOL[f16], what="ONNX Runtime fp16")


@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1",
    reason="the op's CPU fallback runs in this process (no interpreter): the triton-op cases above test it",
)
def test_the_op_fallback_in_a_fresh_process(tmp_path):
    """The `triton-op` cases of this file once more, in a process where the op runs its CPU fallback (what the
    benches run on a CPU), since this process runs the kernels in triton's interpreter."""
    report = tmp_path / "fallback.xml"
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", f"--junitxml={report}"]
    command += ["-k", "triton-op or backend_for", "tests/test_fastswish.py"]  # backend_for: it is the fallback
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    output = result.stdout[-6000:] + result.stderr[-3000:]
    assert result.returncode == 0, output
    cases = ET.parse(report).getroot().iter("testcase")
    outcomes = {case.get("name"): [child.tag for child in case] for case in cases}
    passed = [name for name, tags in outcomes.items() if not tags]
    assert "test_backend_for_names_what_runs_and_importing_needs_no_triton" in passed, output
    assert len(passed) >= 10, f"only {len(passed)} fallback tests passed:\n{output}"
