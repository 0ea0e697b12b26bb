"""The candidate operations as plain torch modules (post-LN residual layers, as BERT).

Every operation takes `x` of shape (batch, seq, hidden) and `mask` of shape (batch, seq) with 1 for
real tokens and 0 for padding, and returns a tensor of the same shape as `x`. Padding never leaks
into real positions: attention masks keys, convolutions zero padded positions before mixing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .space import Op, SearchSpace

LN_EPS = 1e-12


class MultiHeadAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden, eps=LN_EPS)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, h = x.shape
        d = h // self.heads

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.heads, d).transpose(1, 2)  # (b, heads, t, d)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        # additive key mask, (b, 1, 1, t): 0 for tokens, large negative for padding
        bias = (1.0 - mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        p = self.dropout if self.training else 0.0
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)
        ctx = ctx.transpose(1, 2).reshape(b, t, h)  # (b, t, heads*d)
        return self.norm(x + F.dropout(self.out(ctx), p, self.training))


class FeedForward(nn.Module):
    def __init__(self, hidden: int, inner: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden, inner)
        self.fc2 = nn.Linear(inner, hidden)
        self.norm = nn.LayerNorm(hidden, eps=LN_EPS)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = self.fc2(F.gelu(self.fc1(x)))
        return self.norm(x + F.dropout(y, self.dropout, self.training))


class SepConv(nn.Module):
    """Depthwise-separable 1-D convolution over the sequence: depthwise(k) -> pointwise -> GELU."""

    def __init__(self, hidden: int, kernel: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.depthwise = nn.Conv1d(hidden, hidden, kernel, padding=kernel // 2, groups=hidden)
        self.pointwise = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden, eps=LN_EPS)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # zero padded positions so they do not leak into real ones through the kernel
        y = x.masked_fill(mask[:, :, None] == 0, 0.0).transpose(1, 2)  # (b, h, t)
        y = self.depthwise(y).transpose(1, 2)  # (b, t, h)
        y = F.gelu(self.pointwise(y))
        return self.norm(x + F.dropout(y, self.dropout, self.training))


class Identity(nn.Module):
    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return x


def build_op(op: Op, hidden: int, space: SearchSpace, dropout: float = 0.0) -> nn.Module:
    """Instantiate the torch module for `op` at `hidden` in `space`."""
    if op.kind == "mha":
        return MultiHeadAttention(hidden, space.heads(hidden), dropout)
    if op.kind == "ffn":
        return FeedForward(hidden, space.ffn_ratio * hidden, dropout)
    if op.kind == "sep":
        return SepConv(hidden, op.kernel, dropout)
    return Identity()


class Embeddings(nn.Module):
    """Factorized embeddings: token/position/type tables of width `embed_dim`, then LayerNorm."""

    def __init__(self, vocab_size: int, max_positions: int, type_vocab_size: int, embed_dim: int) -> None:
        super().__init__()
        self.word = nn.Embedding(vocab_size, embed_dim)
        self.position = nn.Embedding(max_positions, embed_dim)
        self.token_type = nn.Embedding(type_vocab_size, embed_dim)
        self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        t = input_ids.shape[1]
        pos = torch.arange(t, device=input_ids.device)[None, :]  # (1, t)
        types = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        return self.norm(self.word(input_ids) + self.position(pos) + self.token_type(types))
