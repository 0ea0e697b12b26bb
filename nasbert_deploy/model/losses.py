"""Distillation losses, each defined once: used by supernet training, student distillation,
task fine-tuning and re-ranking.

Shapes: `b` batch, `t` tokens, `d` hidden width, `c` classes / vocabulary.
"""

from __future__ import annotations

import torch


def masked_mse(student: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over real tokens: (b, t, d), (b, t, d), (b, t) -> scalar (mean over tokens and d)."""
    m = mask[:, :, None].to(student.dtype)
    return ((student - target) ** 2 * m).sum() / (m.sum() * student.shape[-1]).clamp(min=1.0)


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """Per-row tau^2 * KL(softmax(teacher / tau) || softmax(student / tau)); (..., c) logits -> (...)."""
    log_p = torch.log_softmax(teacher_logits / tau, dim=-1)
    log_q = torch.log_softmax(student_logits / tau, dim=-1)
    return tau * tau * (log_p.exp() * (log_p - log_q)).sum(-1)


def masked_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, tau: float) -> torch.Tensor:
    """`soft_kl` averaged over real tokens; (b, t, c) logits, (b, t) mask -> scalar."""
    kl = soft_kl(student_logits, teacher_logits, tau)  # (b, t)
    m = mask.to(kl.dtype)
    return (kl * m).sum() / m.sum().clamp(min=1.0)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """`soft_kl` averaged over the batch; (b, c) logits -> scalar (task distillation, Hinton et al.)."""
    return soft_kl(student_logits, teacher_logits, tau).mean()
