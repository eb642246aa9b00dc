"""Training losses: plain cross-entropy, and Hinton's knowledge-distillation loss with a frozen teacher.

Knowledge distillation (Hinton, Vinyals, Dean 2015, "Distilling the Knowledge in a Neural Network"):

    L = alpha * T^2 * KL( softmax(z_t / T) || softmax(z_s / T) ) + (1 - alpha) * CE(z_s, y)

z_s, z_t: student and teacher logits; T: the temperature that softens both distributions; alpha: the weight of the
soft targets. The T^2 factor keeps the soft term's gradient on the same scale whatever T: the gradient of
KL(p_t || p_s) with respect to z_s is (p_s - p_t) / T, and for large T that is about (z_s - z_t) / (N T^2)
(N classes), so without T^2 raising T would shrink the soft targets' weight against the hard labels'.
KL is averaged over the batch ("batchmean"), as cross-entropy is.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """Hinton's distillation loss (module docstring); the teacher's logits carry no gradient."""
    if temperature <= 0 or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"need temperature > 0 and 0 <= alpha <= 1, got T={temperature}, alpha={alpha}")
    student = student_logits.float()
    soft_teacher = F.softmax(teacher_logits.detach().float() / temperature, dim=-1)
    log_student = F.log_softmax(student / temperature, dim=-1)
    soft = F.kl_div(log_student, soft_teacher, reduction="batchmean") * temperature**2
    hard = F.cross_entropy(student, labels)
    return alpha * soft + (1.0 - alpha) * hard


class CrossEntropy:
    """The default criterion: criterion(logits, labels, images) -> loss."""

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels)


class Distillation:
    """criterion(logits, labels, images): KD loss against a frozen teacher run on the same images (eval mode, no
    grad, under the same autocast as the student)."""

    def __init__(self, teacher: nn.Module, temperature: float, alpha: float) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.temperature, self.alpha = temperature, alpha

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        return kd_loss(logits, teacher_logits, labels, self.temperature, self.alpha)


def load_teacher(path: str | Path, num_classes: int, image_size: int, device: torch.device) -> nn.Module:
    """The model of a nn_speedups.train checkpoint (its architecture from the checkpoint's config), in eval mode."""
    from nn_speedups.models import build_model, get_spec
    from nn_speedups.train.config import ConfigError

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--teacher {path}: no such checkpoint (python -m nn_speedups.train writes OUT_DIR/last.pt)")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    name = (saved.get("config") or {}).get("model") if isinstance(saved, dict) else None
    if name is None or not isinstance(saved.get("model"), dict):
        raise ConfigError(f"--teacher {path}: not a nn_speedups.train checkpoint (no model name and state dict in it)")
    teacher = build_model(get_spec(name), image_size, weights=str(path))
    head = [m for m in teacher.modules() if isinstance(m, nn.Linear)][-1]
    if head.out_features != num_classes:
        raise ConfigError(
            f"--teacher {path}: its {name} predicts {head.out_features} classes, the data has {num_classes}: train "
            "the teacher on the same data"
        )
    return teacher.to(device).eval()


def build_criterion(config, num_classes: int, device: torch.device):
    """The run's criterion: CrossEntropy, or Distillation when config.teacher names a checkpoint."""
    if not config.teacher:
        return CrossEntropy()
    teacher = load_teacher(config.teacher, num_classes, config.image_size, device)
    return Distillation(teacher, config.kd_temperature, config.kd_alpha)
