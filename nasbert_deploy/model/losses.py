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


def cross_similarity_kl(
    s_query: torch.Tensor, s_doc: torch.Tensor, t_query: torch.Tensor, t_doc: torch.Tensor, tau: float = 0.05
) -> torch.Tensor:
    """Query-to-document relational distillation: for each query row, KL between the teacher's and the student's
    softmax over cosine similarities to every document row of the batch (its own document included), temperature
    `tau`; (b, d) x 4 -> scalar. Retrieval ranks documents for a short query by exactly these similarities."""
    if s_query.shape[0] < 2:
        return s_query.sum() * 0.0
    norm = torch.nn.functional.normalize
    s_sim = norm(s_query, dim=-1) @ norm(s_doc, dim=-1).T  # (b, b)
    t_sim = norm(t_query, dim=-1) @ norm(t_doc, dim=-1).T
    return soft_kl(s_sim / tau, t_sim / tau, 1.0).mean()


def query_views(ids: torch.Tensor, mask: torch.Tensor, length: int, sep_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's first `length` tokens as a short text of its own (a query for its paragraph): (b, t) ids and mask ->
    (b, min(t, length)); a row cut short ends in `sep_id` as a tokenized text does."""
    q_ids, q_mask = ids[:, :length].clone(), mask[:, :length].clone()
    cut = mask[:, length:].sum(1) > 0  # rows with real tokens beyond the view (none when t <= length)
    q_ids[cut, -1] = sep_id
    return q_ids, q_mask
