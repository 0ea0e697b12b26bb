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


def masked_mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens: (b, t, d), (b, t) -> (b, d) (the sentence embedding before normalisation)."""
    m = mask[:, :, None].to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


def embedding_cosine_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """1 - cosine between student and teacher sentence embeddings, mean over the batch; (b, d), (b, d) -> scalar."""
    return (1.0 - torch.nn.functional.cosine_similarity(student, teacher, dim=-1)).mean()


def similarity_kl(student: torch.Tensor, teacher: torch.Tensor, tau: float = 0.05) -> torch.Tensor:
    """Relational distillation of in-batch similarities: for each row, KL between the teacher's and the
    student's softmax over cosine similarities to the other rows (temperature `tau`); (b, d), (b, d) -> scalar.

    This is what retrieval uses: which of the batch's other texts a text is closest to, and by how much.
    """
    b = student.shape[0]
    if b < 3:
        return student.sum() * 0.0
    s = torch.nn.functional.normalize(student, dim=-1)
    t = torch.nn.functional.normalize(teacher, dim=-1)
    off = ~torch.eye(b, dtype=torch.bool, device=s.device)
    s_sim = (s @ s.T)[off].view(b, b - 1)  # (b, b-1): similarities to the other rows
    t_sim = (t @ t.T)[off].view(b, b - 1)
    return soft_kl(s_sim / tau, t_sim / tau, 1.0).mean()
