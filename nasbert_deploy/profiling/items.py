"""What the profiler times: the distinct operations of a space, a trivial call, and whole validation models.

Each `Item` knows its canonical table key (see `latency`), how to build its plain torch module, and its
inputs as data (`InputSpec`), so the same description serves the in-process profiler and the on-device
bundle runner (which needs no torch). Inputs are (batch, seq) token ids / masks or (batch, seq, width)
float32 activations; masks are all ones (every position a real token, as in the whole-model timing).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from nasbert_deploy.profiling.table import OVERHEAD_KEY, boundary_key, embedding_key, head_key, op_key
from nasbert_deploy.space import Arch, BlockArch, Op, SearchSpace

EXAMPLE_SHAPE = (2, 37)  # export example: sizes > 1 so that batch and sequence stay dynamic


@dataclass(frozen=True)
class InputSpec:
    """One model input: `kind` 'ids' (b, t) int64 < vocab, 'mask' (b, t) int64 ones, 'float' (b, t, width) float32."""

    name: str
    kind: str
    width: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "width": self.width}


@dataclass(frozen=True)
class Item:
    """One thing to time. `kind` is op | boundary | embedding | head | overhead | model | reference (the fixed
    whole model every pass times, `reference_item`)."""

    key: str
    kind: str
    hidden: int = 0
    hidden_out: int = 0
    op: str = ""
    arch: str = ""

    @property
    def inputs(self) -> tuple[InputSpec, ...]:
        if self.kind == "op":
            return (InputSpec("x", "float", self.hidden), InputSpec("mask", "mask"))
        if self.kind in ("boundary", "head", "overhead"):
            return (InputSpec("x", "float", self.hidden),)
        if self.kind == "embedding":
            return (InputSpec("input_ids", "ids"),)
        return (InputSpec("input_ids", "ids"), InputSpec("attention_mask", "mask"))

    @property
    def output_names(self) -> list[str]:
        return ["last_hidden_state"] if self.is_model else ["y"]

    @property
    def is_model(self) -> bool:
        """A whole model (validation or reference): built from `arch`, inputs input_ids and attention_mask."""
        return self.kind in ("model", "reference")

    def build(self, space: SearchSpace) -> torch.nn.Module:
        """The plain torch module (random weights: latency does not depend on their values)."""
        from nasbert_deploy.model.modeling import NasBertConfig, NasBertModel
        from nasbert_deploy.model.ops import Embeddings, build_op

        torch.manual_seed(0)
        if self.kind == "op":
            return build_op(Op.parse(self.op), self.hidden, space).eval()
        if self.kind == "boundary":
            return _Linear(self.hidden, self.hidden_out).eval()
        if self.kind == "head":
            return _Linear(self.hidden, space.output_dim).eval()
        if self.kind == "embedding":
            emb = Embeddings(space.vocab_size, space.max_positions, space.type_vocab_size, space.embed_dim)
            return _EmbeddingIn(emb, torch.nn.Linear(space.embed_dim, self.hidden)).eval()
        if self.kind == "overhead":
            return _Overhead().eval()
        return _WholeModel(NasBertModel(NasBertConfig.from_arch(self.arch, space))).eval()

    def example_inputs(self, space: SearchSpace) -> dict[str, torch.Tensor]:
        return {n: torch.from_numpy(a) for n, a in make_inputs(self.inputs, *EXAMPLE_SHAPE, space.vocab_size).items()}

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "kind": self.kind, "hidden": self.hidden, "hidden_out": self.hidden_out, "op": self.op,
                "arch": self.arch, "inputs": [i.to_dict() for i in self.inputs], "output_names": self.output_names}


def make_inputs(specs: tuple[InputSpec, ...], batch: int, seq_len: int, vocab_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs of shape (batch, seq_len[, width]) for `specs`."""
    rng = np.random.default_rng(seed)
    out = {}
    for s in specs:
        if s.kind == "ids":
            out[s.name] = rng.integers(0, vocab_size, size=(batch, seq_len), dtype=np.int64)
        elif s.kind == "mask":
            out[s.name] = np.ones((batch, seq_len), dtype=np.int64)
        else:
            out[s.name] = rng.standard_normal((batch, seq_len, s.width)).astype(np.float32)
    return out


def op_items(space: SearchSpace) -> list[Item]:
    """The distinct operations of `space` (61 for the standard space) plus the per-call `overhead` item."""
    hs = space.hidden_sizes
    items = [Item(op_key(op, h), "op", h, op=op.name) for h in hs for op in space.layer_ops]
    items += [Item(boundary_key(a, b), "boundary", a, b) for a in hs for b in hs]
    items += [Item(embedding_key(h), "embedding", h) for h in hs]
    items += [Item(head_key(h), "head", h) for h in hs]
    return items + [Item(OVERHEAD_KEY, "overhead", min(hs))]


def model_item(arch: Arch | str) -> Item:
    return Item(f"model:{arch}", "model", arch=str(arch))


REFERENCE_KEY = "reference"


def reference_arch(space: SearchSpace) -> Arch:
    """The fixed reference model of a space: every block at the middle hidden size, its layers alternating
    mha and ffn (BERT-like). Mid-sized, so that it feels the host's slow minutes as whole models do."""
    h = space.hidden_sizes[len(space.hidden_sizes) // 2]
    ops = tuple(Op.parse("mha" if i % 2 == 0 else "ffn") for i in range(space.layers_per_block))
    return Arch(tuple(BlockArch(h, ops) for _ in range(space.num_blocks)))


def reference_item(space: SearchSpace) -> Item:
    """The reference model, timed in every pass beside the items (drift normalisation, host check)."""
    return Item(REFERENCE_KEY, "reference", arch=str(reference_arch(space)))


def validation_archs(space: SearchSpace, n: int, seed: int = 0) -> list[Arch]:
    """`n` distinct random architectures spread evenly over the parameter range (stratified by params)."""
    if n <= 0:
        return []
    rng = random.Random(seed)
    pool = sorted({str(a): a for a in (space.random_arch(rng) for _ in range(max(400, 50 * n)))}.values(), key=space.params)
    lo, hi = space.params(pool[0]), space.params(pool[-1])
    chosen: list[Arch] = []
    for i in range(min(n, len(pool))):
        target = lo + (hi - lo) * (i / (n - 1) if n > 1 else 0.5)
        best = min((a for a in pool if a not in chosen), key=lambda a: abs(space.params(a) - target))
        chosen.append(best)
    return chosen


class _Linear(nn.Module):
    """A block boundary or the output head: Linear over the last axis, (b, t, h_in) -> (b, t, h_out), on
    flattened (b * t, h_in) tokens as in the model (a Gemm on ONNX)."""

    def __init__(self, h_in: int, h_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(h_in, h_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[0], x.shape[1]
        return self.linear(x.reshape(b * t, x.shape[2])).view(b, t, -1)


class _EmbeddingIn(nn.Module):
    """Embeddings then the map to the first block: (b, t) ids -> (b, t, h1)."""

    def __init__(self, emb: nn.Module, proj: nn.Module) -> None:
        super().__init__()
        self.emb, self.proj = emb, proj

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        b, t = input_ids.shape[0], input_ids.shape[1]
        return self.proj(self.emb(input_ids).reshape(b * t, -1)).view(b, t, -1)


class _Overhead(nn.Module):
    """A trivial model (b, t, h) -> (b, t, h): what one call costs besides the operation itself."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1.0


class _WholeModel(nn.Module):
    """NasBertModel called with positional (input_ids, attention_mask), returning last_hidden_state (b, t, output_dim)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, attention_mask).last_hidden_state
