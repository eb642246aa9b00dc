import math

import pytest
import torch

from harness.correctness import (
    LOSSY_MIN_SQNR_DB,
    LOWP_MIN_COSINE,
    CorrectnessError,
    check_exact,
    check_lossy,
    check_lowp,
    measure_error,
    top1_agreement,
)


def test_exact_passes_rounding_noise_and_fails_a_real_difference():
    ref = torch.randn(16, 200)
    check_exact(ref + 1e-6 * torch.randn_like(ref), ref, torch.float32)
    wrong = ref.clone()
    wrong[3, 7] += 1.0
    with pytest.raises(CorrectnessError, match=r"max abs err 1"):
        check_exact(wrong, ref, torch.float32, label="m-bs16-compile-fp32")


def test_exact_rejects_nan():
    ref = torch.randn(10)
    out = ref.clone()
    out[0] = float("nan")
    with pytest.raises(CorrectnessError):
        check_exact(out, ref, torch.float32)


def test_lowp_uses_cosine_and_reports_it():
    ref = torch.randn(4, 1000)
    result = check_lowp(ref.bfloat16(), ref)
    assert result.cosine > 0.999 and result.criterion == "lowp"
    with pytest.raises(CorrectnessError, match=str(LOWP_MIN_COSINE)):
        check_lowp(ref + 0.5 * ref.std() * torch.randn_like(ref) * 0.6, ref)


def test_sqnr_in_decibels():
    ref = torch.ones(1000)
    noise = torch.full((1000,), 0.01)
    result = measure_error(ref + noise, ref, "lossy")
    assert result.sqnr_db == pytest.approx(40.0)
    assert measure_error(ref, ref, "lossy").sqnr_db == math.inf
    check_lossy(ref + noise, ref)
    with pytest.raises(CorrectnessError, match=f"{LOSSY_MIN_SQNR_DB}"):
        check_lossy(ref + 0.2, ref)


def test_tuple_outputs_and_shape_mismatch():
    a = (torch.randn(3), torch.randn(2, 2))
    check_exact(a, a, torch.float32)
    with pytest.raises(CorrectnessError, match="shape"):
        check_exact(torch.randn(3), torch.randn(4), torch.float32)


def test_top1_agreement():
    ref = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.2, 0.1], [0.0, 3.0]])
    out = torch.tensor([[0.0, 2.0], [1.0, 0.0], [0.1, 0.2], [1.0, 3.0]])
    assert top1_agreement(out, ref) == 0.75


def test_cosine_of_tiny_outputs_is_not_clamped():
    ref = torch.randn(1000, dtype=torch.float64) * 1e-10
    result = check_lowp(ref * (1 + 1e-3 * torch.randn_like(ref)), ref)
    assert result.cosine > 0.9999
