import math

import pytest
import torch

from nn_speedups.measure.correctness import (
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
    with pytest.raises(CorrectnessError, match=r"1 of 3200 values .* greatest absolute difference 1"):
        check_exact(wrong, ref, torch.float32, label="m-bs16-compile-fp32")


@pytest.mark.parametrize("scale", [1e-3, 1e-4, 1e-9])
def test_exact_holds_float32_rounding_for_outputs_near_zero_and_fails_a_wrong_engine(scale):
    """Outputs whose values are all tiny (a detector's probabilities, a random-weight net's logits): float32 rounding
    noise of an engine that computes the same function with O(1) intermediates (here: the same output computed as a
    difference of two O(1) terms, as a reordered sum would) passes; an engine that is wrong by 10% does not."""
    g = torch.Generator().manual_seed(0)
    ref64 = scale * torch.rand(8, 500, generator=g, dtype=torch.float64)
    ref = ref64.float()
    big = torch.rand(8, 500, generator=g, dtype=torch.float64) + 0.5
    engine = ((big + ref64).float() - big.float()).float()  # the same values through an O(1) intermediate
    assert (engine - ref).abs().max() > 0  # it really carries rounding noise of about one ulp at 1.0
    result = check_exact(engine, ref, torch.float32)
    assert result.max_abs_err < 1e-6
    if scale >= 1e-4:  # well above the float32 floor: a 10% error and a zero output are caught
        with pytest.raises(CorrectnessError, match="differs from eager"):
            check_exact(1.1 * ref, ref, torch.float32)
        with pytest.raises(CorrectnessError, match="differs from eager"):
            check_exact(torch.zeros_like(ref), ref, torch.float32)
    else:  # below what float32 resolves at the scale of its intermediates: the check says nothing, by design
        check_exact(torch.zeros_like(ref), ref, torch.float32)


def test_exact_checks_each_output_at_its_own_scale():
    big, small = 1000 * torch.randn(100), 1e-3 * torch.randn(100)
    check_exact((big, small), (big, small), torch.float32)
    with pytest.raises(CorrectnessError, match="output 1 differs"):  # 1e-3 off is nothing beside 1000, not beside 1e-3
        check_exact((big, small + 1e-3), (big, small), torch.float32)


def test_a_collapsed_output_is_named():
    ref = torch.randn(4, 10)
    with pytest.raises(CorrectnessError, match="the output is all zeros"):
        check_lossy(torch.zeros_like(ref), ref)
    with pytest.raises(CorrectnessError, match=r"the output is constant \(every value 0.5\)"):
        check_lowp(torch.full_like(ref, 0.5), ref)
    with pytest.raises(CorrectnessError) as error:
        check_lossy(ref + ref.std() * torch.randn_like(ref), ref)
    assert "all zeros" not in str(error.value) and "constant" not in str(error.value)


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


def test_eager_run_twice_is_reported_deterministic_only_when_bitwise_equal():
    from nn_speedups.measure.baselines import repeat_fields

    out = (torch.ones(3), torch.arange(4.0))
    assert repeat_fields(out, (torch.ones(3), torch.arange(4.0))) == {"eager_deterministic": True,
                                                                       "eager_repeat_max_abs": 0.0}  # fmt: skip
    nudged = (torch.ones(3), torch.arange(4.0) + torch.tensor([0.0, 0.0, 2.0**-19, 0.0]))  # one ulp of 2.0
    found = repeat_fields(out, nudged)
    assert found["eager_deterministic"] is False and found["eager_repeat_max_abs"] == 2.0**-19
