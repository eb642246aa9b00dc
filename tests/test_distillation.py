"""Knowledge distillation: Hinton's loss against a hand computation, its T^2 gradient scaling, and the training CLI
with --teacher on a tiny real run."""

import json
import math

import pytest
import torch

from nn_speedups.train import TrainConfig, train
from nn_speedups.train.losses import Distillation, kd_loss
from tests.test_train import QUICK, run_cli


def test_kd_loss_matches_a_hand_computation():
    student = torch.tensor([[1.0, 2.0, 0.5]])
    teacher = torch.tensor([[2.0, 0.0, 1.0]])
    label = torch.tensor([1])
    T, alpha = 2.0, 0.7

    def softmax(z):
        e = [math.exp(v) for v in z]
        return [v / sum(e) for v in e]

    p_t = softmax([v / T for v in teacher[0].tolist()])
    p_s = softmax([v / T for v in student[0].tolist()])
    kl = sum(t * math.log(t / s) for t, s in zip(p_t, p_s))
    ce = -math.log(softmax(student[0].tolist())[1])
    expected = alpha * T * T * kl + (1 - alpha) * ce
    assert kd_loss(student, teacher, label, T, alpha).item() == pytest.approx(expected, rel=1e-6)
    assert kd_loss(student, teacher, label, T, 0.0).item() == pytest.approx(ce, rel=1e-6)  # plain CE
    assert kd_loss(teacher, teacher, label, T, 1.0).item() == pytest.approx(0.0, abs=1e-6)  # matching the teacher


def test_the_t_squared_factor_keeps_the_soft_gradient_scale():
    """d(T^2 KL)/dz_s = T (p_s - p_t), about (z_s - z_t) / N for large T: the same at T=10 and T=20. Without the
    factor it would shrink 4x from T=10 to T=20."""
    torch.manual_seed(0)
    teacher = torch.randn(4, 10)
    labels = torch.zeros(4, dtype=torch.long)

    def grad_norm(T: float) -> float:
        student = torch.randn(4, 10, generator=torch.Generator().manual_seed(1)).requires_grad_()
        kd_loss(student, teacher, labels, T, alpha=1.0).backward()
        return student.grad.norm().item()

    assert grad_norm(20.0) / grad_norm(10.0) == pytest.approx(1.0, abs=0.02)
    student = torch.randn(4, 10, generator=torch.Generator().manual_seed(1))
    expected = (student - teacher - (student - teacher).mean(dim=1, keepdim=True)) / 10 / 4  # (z_s - z_t)/N/B
    s = student.clone().requires_grad_()
    kd_loss(s, teacher, labels, 50.0, alpha=1.0).backward()
    torch.testing.assert_close(s.grad, expected, rtol=0.05, atol=1e-4)
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(student, teacher, labels, 0.0, 0.5)


def test_the_teacher_is_frozen_and_gets_no_gradient():
    teacher = torch.nn.Linear(6, 3)
    criterion = Distillation(teacher.train(), temperature=3.0, alpha=0.5)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    student = torch.nn.Linear(6, 3)
    images = torch.randn(5, 6)
    criterion(student(images), torch.tensor([0, 1, 2, 0, 1]), images).backward()
    assert student.weight.grad is not None and teacher.weight.grad is None


def test_cli_distils_from_a_teacher_checkpoint(tmp_path):
    teacher = train(TrainConfig(**_quick_config(tmp_path / "teacher")))
    assert teacher["totals"]["final_top1"] is not None
    result = run_cli(
        [*QUICK, "--epochs", "1", "--teacher", str(tmp_path / "teacher" / "last.pt"), "--kd-temperature", "3",
         "--kd-alpha", "0.5", "--out-dir", "student", "--quiet"],
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads((tmp_path / "student" / "metrics.json").read_text())
    assert metrics["config"]["teacher"].endswith("last.pt") and metrics["config"]["kd_temperature"] == 3.0
    assert metrics["config"]["kd_alpha"] == 0.5 and metrics["epochs"][0]["top1"] > 0.1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--teacher", "missing.pt"], "--teacher missing.pt: no such checkpoint"),
        (["--teacher", "x.pt", "--kd-alpha", "1.5"], "0 <= --kd-alpha <= 1"),
    ],
)
def test_bad_distillation_options_exit_2(args, message, tmp_path):
    result = run_cli([*QUICK, "--epochs", "1", "--out-dir", "o", *args], cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]


def _quick_config(out_dir) -> dict:
    return dict(model="resnet18", image_size=32, batch_size=32, train_samples=256, eval_samples=128, epochs=1,
                out_dir=str(out_dir), quiet=True)  # fmt: skip
