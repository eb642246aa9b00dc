"""nn_speedups.optimizations.amp_step: the one training step (autocast, scaled backward, step, update) gives, bit for
bit, what the loops it replaced gave; the GradScaler only for fp16 on CUDA, at the scale each caller asks for."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nn_speedups.optimizations import amp_step, training
from nn_speedups.optimizations.amp_step import AmpStep, default_amp_dtype, grad_scaler


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 8, 8, generator=gen), torch.randint(0, 5, (4,), generator=gen)


def _loss(net):
    return lambda images, labels: F.cross_entropy(net(images).float(), labels)


def _same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def _manual_step(net, optimizer, images, labels, scaler=None, unscale=False, zero_first=True, amp_dtype=None):
    """The step as the callers wrote it before AmpStep."""
    if zero_first:
        optimizer.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=amp_dtype) if amp_dtype else contextlib.nullcontext():
        loss = F.cross_entropy(net(images).float(), labels)
    if not zero_first:
        optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        if unscale:
            scaler.unscale_(optimizer)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss.detach()


@pytest.mark.parametrize("zero_grad", ["before_forward", "before_backward"])
@pytest.mark.parametrize("amp_dtype", [None, torch.bfloat16])
def test_the_step_equals_the_loop_it_replaced(zero_grad, amp_dtype):
    images, labels = _batch()
    ours, theirs = _net(), _net()
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-2)
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=1e-2)
    step = AmpStep(opt_ours, "cpu", amp_dtype, zero_grad=zero_grad)
    assert step.scaler is None  # no scaler on a CPU, nor for bf16
    for _ in range(3):
        loss = step(_loss(ours), images, labels)
        ref = _manual_step(
            theirs, opt_theirs, images, labels, zero_first=zero_grad == "before_forward", amp_dtype=amp_dtype
        )
        assert torch.equal(loss, ref) and not loss.requires_grad
    assert _same(ours, theirs)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("unscale", [False, True])
def test_the_scaled_path_equals_the_loop_it_replaced(unscale, fused):
    """GradScaler's sequence (scale, backward, unscale_ where asked, step, update), run here with a CPU GradScaler:
    the one AmpStep builds is CUDA's, for fp16 only."""
    images, labels = _batch()
    ours, theirs = _net(), _net()
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-2, fused=fused)
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=1e-2, fused=fused)
    step = AmpStep(opt_ours, "cpu", None, unscale=unscale)
    step.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for _ in range(3):
        loss = step(_loss(ours), images, labels)
        ref = _manual_step(theirs, opt_theirs, images, labels, scaler=scaler, unscale=unscale)
        assert torch.equal(loss, ref)
    assert _same(ours, theirs) and step.scaler.get_scale() == scaler.get_scale()
    for got, want in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(got.grad, want.grad)  # the gradients left after the step, too


def test_zero_grad_runs_before_the_forward_or_before_the_backward():
    images, labels = _batch()
    for zero_grad, grads_during_forward in (("before_forward", False), ("before_backward", True)):
        net = _net()
        step = AmpStep(torch.optim.SGD(net.parameters(), lr=0.1), zero_grad=zero_grad)
        seen = []

        def loss_of(images, labels, net=net, seen=seen):
            seen.append(all(p.grad is not None for p in net.parameters()))
            return F.cross_entropy(net(images), labels)

        step(loss_of, images, labels)
        step(loss_of, images, labels)  # the first step's gradients are there, or were set to None
        assert seen == [False, grads_during_forward]
        assert all(p.grad is not None for p in net.parameters())  # set_to_none, then the backward filled them
    with pytest.raises(ValueError, match="zero_grad 'after'"):
        AmpStep(torch.optim.SGD(_net().parameters(), lr=0.1), zero_grad="after")


def test_a_grad_scaler_for_fp16_on_cuda_only_at_the_scale_asked(monkeypatch):
    made = []

    class Recorder:
        def __init__(self, device, init_scale):
            made.append((device, init_scale))

    monkeypatch.setattr(torch.amp, "GradScaler", Recorder)
    for device, dtype in (("cpu", torch.float16), ("cpu", torch.bfloat16), ("cuda", torch.bfloat16), ("cuda", None)):
        assert grad_scaler(device, dtype) is None
    assert isinstance(grad_scaler("cuda", torch.float16), Recorder) and made == [("cuda", 2.0**16)]
    assert isinstance(grad_scaler("cuda", torch.float16, init_scale=2.0**10), Recorder) and made[-1] == ("cuda", 2**10)
    assert default_amp_dtype("cuda") == torch.float16 and default_amp_dtype("cpu") == torch.bfloat16
    # the training benches' step: torch's default scale (2**16), for fp16 on CUDA only
    made.clear()
    images, labels = _batch()
    runner = training.apply(_net(), (images, labels), training.TrainStepConfig(device="cuda", amp_dtype=torch.float16))
    assert runner.info["grad_scaler"] is True and made == [("cuda", amp_step.DEFAULT_INIT_SCALE)]
    runner = training.apply(_net(), (images, labels), training.TrainStepConfig(amp_dtype=torch.bfloat16))
    assert runner.info["grad_scaler"] is False and len(made) == 1


def test_the_training_bench_step_and_the_fine_tune_match_their_old_loops():
    from nn_speedups.optimizations.finetune import FineTuneConfig, fine_tune

    images, labels = _batch()
    runner = training.apply(_net(), (images, labels), training.TrainStepConfig(lr=1e-2))
    theirs = _net()
    opt = torch.optim.AdamW(theirs.parameters(), lr=1e-2, weight_decay=0.01)
    for _ in range(2):
        assert torch.equal(runner.fn(images, labels), _manual_step(theirs, opt, images, labels))
    assert _same(runner.model, theirs)

    tuned, theirs = _net(), _net()
    result = fine_tune(tuned, [(images, labels)], FineTuneConfig(steps=2, lr=1e-2))
    opt = torch.optim.AdamW(theirs.parameters(), lr=1e-2, weight_decay=0.01)
    losses = []
    for _ in range(2):  # the fine-tune's order: forward, zero_grad, backward, step (no .float(), no autocast)
        loss = F.cross_entropy(theirs(images), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert [result["finetune_loss_first"], result["finetune_loss_last"]] == losses and _same(tuned, theirs)
    assert not torch.cuda.is_initialized()
