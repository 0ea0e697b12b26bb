"""The distillation losses in model.losses: each defined once, with the values they must take."""

from __future__ import annotations

import pytest
import torch

from nasbert_deploy.model.losses import (
    cross_similarity_kl,
    embedding_cosine_loss,
    head_tail_views,
    kd_loss,
    logit_mse,
    masked_mean_pool,
    similarity_kl,
    soft_kl,
)


def test_masked_mean_pool_ignores_padding():
    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [50.0, 50.0]]])
    assert torch.allclose(masked_mean_pool(h, torch.tensor([[1, 1, 0]])), torch.tensor([[2.0, 3.0]]))


def test_embedding_cosine_loss():
    a = torch.randn(5, 8)
    assert embedding_cosine_loss(a, 3 * a).item() == pytest.approx(0.0, abs=1e-6)  # scale-free
    assert embedding_cosine_loss(a, -a).item() == pytest.approx(2.0, abs=1e-6)


def test_similarity_kl_matches_relations_not_coordinates():
    torch.manual_seed(0)
    t = torch.randn(8, 16)
    q, _ = torch.linalg.qr(torch.randn(16, 16))
    assert similarity_kl(t @ q, t).item() == pytest.approx(0.0, abs=1e-5)  # a rotation keeps every similarity
    assert similarity_kl(torch.randn(8, 16), t).item() > 0.1
    assert similarity_kl(t[:2], t[:2]).item() == 0.0  # too few rows for relations


def test_cross_similarity_kl_ranks_documents_for_each_query():
    torch.manual_seed(0)
    tq, td = torch.randn(6, 16), torch.randn(6, 16)
    q, _ = torch.linalg.qr(torch.randn(16, 16))
    assert cross_similarity_kl(tq @ q, td @ q, tq, td).item() == pytest.approx(0.0, abs=1e-5)  # same relations
    swapped = cross_similarity_kl(tq, td.flip(0), tq, td).item()  # each query now prefers another document
    assert swapped > 0.1 and cross_similarity_kl(torch.randn(6, 16), td, tq, td).item() > 0.1
    sq = tq.clone().requires_grad_()
    cross_similarity_kl(sq, td, torch.randn(6, 16), td).backward()
    assert sq.grad is not None and sq.grad.abs().sum() > 0  # the student's query side learns


def test_head_tail_views_cut_a_paragraph_into_query_and_document():
    cls, sep = 101, 102
    long = [cls, *range(10, 25), sep]  # 17 tokens: cut after 5 (cls + 3 + sep) into a head and a tail
    short = [cls, 40, 41, 42, sep]  # under length + 4 = 9 tokens: not cut
    ids = torch.tensor([long, short + [0] * 12])
    mask = (ids != 0).long()
    h_ids, h_mask, t_ids, t_mask = head_tail_views(ids, mask, 5, cls, sep)
    assert h_ids.tolist() == [[cls, 10, 11, 12, sep], short]
    assert h_mask.tolist() == [[1] * 5, [1] * 5]
    assert t_ids[0].tolist() == [cls, *range(13, 25), sep] and t_mask[0].tolist() == [1] * 14  # the rest, opened by cls
    assert t_ids[1].tolist() == short + [0] * 9 and t_mask[1].sum() == 5  # the whole short paragraph is its document
    assert ids[0, 4] == 13  # the input is not changed
    short_only = torch.tensor([short])
    h, _, t, _ = head_tail_views(short_only, torch.ones_like(short_only), 5, cls, sep)
    assert torch.equal(h, short_only) and torch.equal(t, short_only)  # nothing to cut


def test_kd_loss_is_temperature_scaled_kl():
    s, t = torch.randn(4, 3), torch.randn(4, 3)
    assert kd_loss(t, t, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(s, t, 2.0).item() == pytest.approx(soft_kl(s, t, 2.0).mean().item())
    assert kd_loss(s, t, 2.0).item() > 0


def test_logit_mse_and_the_task_loss_choice():
    from nasbert_deploy.student.task_training import mixed_loss

    s, t = torch.randn(4, 3), torch.randn(4, 3)
    assert torch.allclose(logit_mse(s, t), ((s - t) ** 2).mean(-1))
    assert logit_mse(t + 1.0, t).tolist() == pytest.approx([1.0] * 4)  # a shift the softmax would not see
    assert kd_loss(t + 1.0, t, 1.0).item() == pytest.approx(0.0, abs=1e-6)
    y = torch.tensor([0, 2, -1, -1])  # two labelled rows, two transfer rows
    ce = torch.nn.functional.cross_entropy(s[:2], y[:2], reduction="none")
    mse = logit_mse(s, t)
    want = (torch.cat([0.5 * ce + 0.5 * mse[:2], mse[2:]])).mean()
    assert mixed_loss(s, y, t, 0.5, 4.0, "mse").item() == pytest.approx(want.item())  # tau plays no part
    kl = soft_kl(s, t, 2.0)
    assert mixed_loss(s, y, t, 0.5, 2.0).item() == pytest.approx(torch.cat([0.5 * ce + 0.5 * kl[:2], kl[2:]]).mean().item())
    with pytest.raises(ValueError, match="valid: kl, mse"):
        mixed_loss(s, y, t, 0.5, 1.0, "l1")
