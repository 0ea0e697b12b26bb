"""The candidate operations as plain torch modules (post-LN residual layers, as BERT).

Every operation takes `x` of shape (batch, seq, hidden) -- or the same tokens flattened to
(batch * seq, hidden) -- and `mask` of shape (batch, seq) with 1 for real tokens and 0 for padding,
and returns a tensor of the shape of `x`. Padding never leaks into real positions: attention masks
keys, convolutions zero padded positions before mixing.

The standalone model keeps its tokens flattened from the embedding to the head: every Linear is then
a 2-D matrix product that ONNX Runtime fuses with its bias into one Gemm (a 3-D MatMul keeps a
separate bias Add), and only attention and convolution reshape to (batch, seq, ...). While exporting
(`torch.compiler.is_exporting()`), attention is written out as BERT's matmul / softmax / matmul with K
permuted once to (batch, heads, head_dim, seq), instead of `scaled_dot_product_attention`, whose ONNX
decomposition adds shape arithmetic and two reshapes and a transpose of K per layer. Eager torch keeps
SDPA (fused kernels); the two agree to ~1e-6. `benchmarks/bench_export.py` measures the result
against a stock BertModel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nasbert_deploy.space import Op, SearchSpace

LN_EPS = 1e-12


def _tokens(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """`x` as (batch * seq, hidden) tokens, with batch and seq (from the mask)."""
    b, t = mask.shape[0], mask.shape[1]
    return (x.reshape(b * t, x.shape[-1]) if x.dim() == 3 else x), b, t


def _like(y: torch.Tensor, x: torch.Tensor, b: int, t: int) -> torch.Tensor:
    """Tokens `y` back in the layout of the input `x`."""
    return y.view(b, t, y.shape[-1]) if x.dim() == 3 else y


def key_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive key mask (batch, 1, 1, seq): 0 for tokens, the dtype's most negative value for padding."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


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
        # optional fake quantizers of the score product's inputs (`lowbit.attention`): "q", "k"; None: float
        self.attn_quant: nn.ModuleDict | None = None

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x2, b, t = _tokens(x, mask)
        h = x2.shape[-1]
        d = h // self.heads
        q = self.query(x2).view(b, t, self.heads, d).transpose(1, 2)  # (b, heads, t, d)
        v = self.value(x2).view(b, t, self.heads, d).transpose(1, 2)
        bias = key_bias(mask, x2.dtype)
        p = self.dropout if self.training else 0.0
        aq = self.attn_quant
        if aq is not None or torch.compiler.is_exporting():
            k = self.key(x2).view(b, t, self.heads, d).permute(0, 2, 3, 1)  # (b, heads, d, t)
            if aq is not None:  # per tensor: the same as quantizing the projections' outputs (the export does)
                q, k = aq["q"](q), aq["k"](k)
            probs = torch.softmax(torch.matmul(q, k) * (d**-0.5) + bias, dim=-1)
            ctx = torch.matmul(F.dropout(probs, p, self.training), v)
        else:
            k = self.key(x2).view(b, t, self.heads, d).transpose(1, 2)
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)
        ctx = ctx.transpose(1, 2).reshape(b * t, h)  # (b * t, heads * d)
        return _like(self.norm(x2 + F.dropout(self.out(ctx), p, self.training)), x, b, t)


class FeedForward(nn.Module):
    def __init__(self, hidden: int, inner: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden, inner)
        self.fc2 = nn.Linear(inner, hidden)
        self.norm = nn.LayerNorm(hidden, eps=LN_EPS)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x2, b, t = _tokens(x, mask)
        y = self.fc2(F.gelu(self.fc1(x2)))
        return _like(self.norm(x2 + F.dropout(y, self.dropout, self.training)), x, b, t)


class SepConv(nn.Module):
    """Depthwise-separable 1-D convolution over the sequence: depthwise(k) -> pointwise -> GELU."""

    def __init__(self, hidden: int, kernel: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.depthwise = nn.Conv1d(hidden, hidden, kernel, padding=kernel // 2, groups=hidden)
        self.pointwise = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden, eps=LN_EPS)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x2, b, t = _tokens(x, mask)
        h = x2.shape[-1]
        # zero padded positions so they do not leak into real ones through the kernel
        y = x2.view(b, t, h).masked_fill(mask[:, :, None] == 0, 0.0).transpose(1, 2)  # (b, h, t)
        y = self.depthwise(y).transpose(1, 2).reshape(b * t, h)
        y = F.gelu(self.pointwise(y))
        return _like(self.norm(x2 + F.dropout(y, self.dropout, self.training)), x, b, t)


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
        x = self.word(input_ids) + self.position(pos) + self.token_type(types)
        # normalised as (batch * seq, dim) tokens: ONNX Runtime's default sessions fuse a 3-D Add + LayerNormalization
        # into SkipLayerNormalization, whose CPU kernel (1.31) took 0.30 ms at 128 x 384 against 0.04 ms unfused
        # (docs/export.md; our own sessions disable that fusion, a user's `InferenceSession(path)` does not)
        return self.norm(x.reshape(-1, x.shape[-1])).view(x.shape)
