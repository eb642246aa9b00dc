import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nn_speedups.models.activations import ACTIVATIONS, fastswish_reference, make_activation

A, B = 42 / 13, 81 / 13


def fastswish_formula(x: float) -> float:
    """Seed 001's formula (as kernels/fastswish.py's docstring states it), written independently of the code."""
    if x > 3:
        return x
    if x >= -3:
        return x * (x + A) / B
    return -1 / x**2


@given(st.floats(-1e4, 1e4, allow_nan=False).filter(lambda v: abs(v) > 1e-3))
def test_fastswish_matches_the_formula(x):
    got = fastswish_reference(torch.tensor([x], dtype=torch.float64)).item()
    assert got == pytest.approx(fastswish_formula(x), rel=1e-12, abs=1e-300)


def test_fastswish_joints_and_minimum():
    f = lambda v: fastswish_reference(torch.tensor([v], dtype=torch.float64)).item()  # noqa: E731
    assert f(3.0) == pytest.approx(3.0) and f(3.0 + 1e-9) == pytest.approx(3.0)
    assert f(-3.0) == pytest.approx(-1 / 9) and f(-3.0 - 1e-9) == pytest.approx(-1 / 9)
    xmin = -21 / 13
    assert all(f(xmin) <= f(xmin + d) for d in (-0.1, -1e-3, 1e-3, 0.1))


def test_fastswish_derivative_by_autograd_matches_the_piecewise_formula():
    x = torch.tensor([-5.0, -3.5, -2.0, 0.0, 1.0, 2.9, 3.5, 10.0], dtype=torch.float64, requires_grad=True)
    fastswish_reference(x).sum().backward()
    expected = [2 / v**3 if v < -3 else (2 * v + A) / B if v <= 3 else 1.0 for v in x.detach().tolist()]
    assert x.grad.tolist() == pytest.approx(expected)


@pytest.mark.parametrize(
    "name, formula",
    [
        ("relu", lambda x: max(x, 0.0)),
        ("hardswish", lambda x: x * min(max(x + 3, 0.0), 6.0) / 6),
        ("gelu", lambda x: 0.5 * x * (1 + math.erf(x / math.sqrt(2)))),
        ("gelu-tanh", lambda x: 0.5 * x * (1 + math.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))),
        ("fastswish", fastswish_formula),
    ],
)
def test_registry_activations_against_their_formulas(name, formula):
    xs = [-6.0, -3.0, -1.7, -0.5, 0.0, 0.3, 2.0, 3.0, 4.5]
    layer = make_activation(name)
    got = layer(torch.tensor(xs, dtype=torch.float64)).tolist()
    assert got == pytest.approx([formula(x) for x in xs], rel=1e-9, abs=1e-12)


def test_registry_names_and_unknown_activation():
    assert {"gelu", "gelu-tanh", "hardswish", "relu", "fastswish"} <= set(ACTIVATIONS)
    with pytest.raises(ValueError, match="unknown activation 'swish2'.*gelu-tanh"):
        make_activation("swish2")
