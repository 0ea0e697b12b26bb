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


def logit_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Per-row mean squared difference of the logits; (..., c) -> (...). Matching the logits themselves rather than
    their softmax (Kim et al. 2021, "Comparing Kullback-Leibler Divergence and Mean Squared Error Loss in Knowledge
    Distillation": the tau -> infinity limit of tau^2 KL, which they found makes students agree with the teacher more)."""
    return (student_logits - teacher_logits).pow(2).mean(-1)


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
    `tau`; queries (b_query, d), documents (b_doc, d) -> scalar. Retrieval ranks documents for a short query by
    exactly these similarities."""
    if s_doc.shape[0] < 2:  # a softmax over one document: nothing to distil
        return s_query.sum() * 0.0
    norm = torch.nn.functional.normalize
    s_sim = norm(s_query, dim=-1) @ norm(s_doc, dim=-1).T  # (b_query, b_doc)
    t_sim = norm(t_query, dim=-1) @ norm(t_doc, dim=-1).T
    return soft_kl(s_sim / tau, t_sim / tau, 1.0).mean()


def head_tail_views(
    ids: torch.Tensor, mask: torch.Tensor, length: int, cls_id: int, sep_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each tokenized paragraph (b, t) cut into a short head (its first `length` tokens, closed by `sep_id`: a query)
    and the rest (opened by `cls_id`: the document the query belongs to, as a one-line summary belongs to the text it
    sums up). A paragraph of fewer than `length` + 4 tokens is not cut: its head is its first tokens and its
    document the whole of it. Returns head ids, head mask (b, min(t, length)), tail ids, tail mask (b, w)."""
    real = mask.sum(1)
    cut = real >= length + 4
    head_ids, head_mask = ids[:, :length].clone(), mask[:, :length].clone()
    head_ids[cut, -1] = sep_id
    if not bool(cut.any()):
        return head_ids, head_mask, ids, mask
    rest = length - 1  # the head's [CLS] + `length - 2` tokens; the tail takes [CLS] + everything from there on
    tail_ids = torch.cat([torch.full_like(ids[:, :1], cls_id), ids[:, rest:]], 1)
    tail_mask = torch.cat([mask[:, :1], mask[:, rest:]], 1)
    w = tail_ids.shape[1]  # an uncut row (< length + 4 tokens) fits in w = t - length + 2 when t >= 2 length + 2
    keep_ids, keep_mask = ids[:, :w], mask[:, :w]
    if ids.shape[1] > w and bool((mask[~cut, w:] > 0).any()):
        return head_ids, head_mask, ids, mask  # a short batch (t < 2 length + 2): no cut at all
    tail_ids = torch.where(cut[:, None], tail_ids, keep_ids)
    tail_mask = torch.where(cut[:, None], tail_mask, keep_mask)
    return head_ids, head_mask, tail_ids, tail_mask
