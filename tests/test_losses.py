"""The distillation losses in model.losses: each defined once, with the values they must take."""

from __future__ import annotations

import pytest
import torch

from nasbert_deploy.model.losses import (
    embedding_cosine_loss,
    kd_loss,
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


def test_kd_loss_is_temperature_scaled_kl():
    s, t = torch.randn(4, 3), torch.randn(4, 3)
    assert kd_loss(t, t, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(s, t, 2.0).item() == pytest.approx(soft_kl(s, t, 2.0).mean().item())
    assert kd_loss(s, t, 2.0).item() > 0
