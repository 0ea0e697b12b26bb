"""Hard-concrete (L0) gates on attention heads and FFN neurons of a BERT-family classifier.

Louizos et al. (2018): a gate z in [0, 1] per unit, z = clamp(sigmoid((log u - log(1-u) + log_alpha) / beta)
* (r - l) + l, 0, 1) with u ~ U(0, 1) while training; P(z != 0) = sigmoid(log_alpha - beta * log(-l / r)).
As in McCarley et al. (2019) the gates multiply each head's attention output (transformers' `head_mask`,
which scales that head's attention probabilities, i.e. its context vectors) and each FFN intermediate
activation (a forward hook on the layer's `intermediate` module).

At the end (`Selection`) every layer keeps its units with the largest log_alpha: round(sum P(z != 0))
of them, at least one head and one neuron per layer, and the deterministic gate value of each kept unit
is folded into the weights by `apply.prune_model`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

LIMIT_L, LIMIT_R, BETA = -0.1, 1.1, 2.0 / 3.0
EPS = 1e-6


def encoder_of(model: Any) -> Any:
    """The BERT-family encoder (`model.bert`, `model.roberta`, ...) of a transformers classifier."""
    return getattr(model, model.base_model_prefix)


def head_counts(model: Any) -> list[int]:
    """Heads per layer (after any earlier pruning)."""
    return [int(layer.attention.self.num_attention_heads) for layer in encoder_of(model).encoder.layer]


def ffn_widths(model: Any) -> list[int]:
    """FFN intermediate width per layer."""
    return [int(layer.intermediate.dense.out_features) for layer in encoder_of(model).encoder.layer]


class HardConcrete(nn.Module):
    """`n` groups x `size` hard-concrete gates (log_alpha initialised at `init`: P(z != 0) ~ 0.97 for 2.0)."""

    def __init__(self, n: int, size: int, init: float = 2.0) -> None:
        super().__init__()
        self.log_alpha = nn.Parameter(torch.full((n, size), float(init)))

    def sample(self) -> torch.Tensor:
        """A stochastic gate draw (n, size) in [0, 1] (training)."""
        u = torch.rand_like(self.log_alpha).clamp(EPS, 1 - EPS)
        s = torch.sigmoid((torch.log(u) - torch.log(1 - u) + self.log_alpha) / BETA)
        return (s * (LIMIT_R - LIMIT_L) + LIMIT_L).clamp(0.0, 1.0)

    def deterministic(self) -> torch.Tensor:
        """The gate value without noise (n, size) in [0, 1] (evaluation)."""
        return (torch.sigmoid(self.log_alpha) * (LIMIT_R - LIMIT_L) + LIMIT_L).clamp(0.0, 1.0)

    def prob_open(self) -> torch.Tensor:
        """P(z != 0) per gate (n, size): differentiable in log_alpha."""
        return torch.sigmoid(self.log_alpha - BETA * math.log(-LIMIT_L / LIMIT_R))


class GatedModel(nn.Module):
    """A transformers BERT-family classifier with one gate per head and per FFN neuron of every layer.

    Every layer must have the same number of heads and FFN width (a model not pruned before).
    `forward(**batch)` draws gates while training and uses the deterministic ones in eval mode.
    """

    def __init__(self, model: Any, init: float = 2.0) -> None:
        super().__init__()
        heads, widths = head_counts(model), ffn_widths(model)
        if len(set(heads)) != 1 or len(set(widths)) != 1:
            raise ValueError(f"gates need a uniform model; heads per layer {heads}, FFN widths {widths}")
        self.model = model
        self.layers = len(heads)
        self.heads = HardConcrete(self.layers, heads[0], init)
        self.neurons = HardConcrete(self.layers, widths[0], init)
        self._ffn_gate: torch.Tensor | None = None
        self._hooks = [
            layer.intermediate.register_forward_hook(self._hook(i)) for i, layer in enumerate(encoder_of(model).encoder.layer)
        ]

    def _hook(self, i: int) -> Any:
        def gate(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
            if self._ffn_gate is None:
                return output
            return output * self._ffn_gate[i]  # (b, t, W) * (W,)

        return gate

    def remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def gate_values(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(head gates (L, H), neuron gates (L, W)): sampled in training mode, deterministic in eval mode."""
        if self.training:
            return self.heads.sample(), self.neurons.sample()
        return self.heads.deterministic(), self.neurons.deterministic()

    def forward(self, output_hidden_states: bool = False, **batch: Any) -> Any:
        zh, zn = self.gate_values()
        self._ffn_gate = zn
        try:
            return self.model(**batch, head_mask=zh, output_hidden_states=output_hidden_states)
        finally:
            self._ffn_gate = None

    def expected_counts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Expected open heads (L,) and neurons (L,) per layer: sums of P(z != 0), differentiable."""
        return self.heads.prob_open().sum(1), self.neurons.prob_open().sum(1)

    def gate_parameters(self) -> list[nn.Parameter]:
        return [self.heads.log_alpha, self.neurons.log_alpha]

    def model_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]


@dataclass(frozen=True)
class Selection:
    """Which units each layer keeps: `heads[l]` / `neurons[l]` sorted indices, and the gate value of each
    kept unit (`head_scale[l]`, `neuron_scale[l]`, same order) to fold into the weights."""

    heads: list[list[int]]
    neurons: list[list[int]]
    head_scale: list[list[float]]
    neuron_scale: list[list[float]]

    @property
    def head_counts(self) -> list[int]:
        return [len(h) for h in self.heads]

    @property
    def widths(self) -> list[int]:
        return [len(n) for n in self.neurons]

    def to_dict(self) -> dict[str, Any]:
        return {"heads": self.heads, "neurons": self.neurons, "head_scale": self.head_scale, "neuron_scale": self.neuron_scale}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Selection:
        return cls(d["heads"], d["neurons"], d["head_scale"], d["neuron_scale"])


def top_units(scores: torch.Tensor, counts: list[int]) -> list[list[int]]:
    """Per row of `scores` (L, N), the sorted indices of its counts[l] largest entries."""
    return [sorted(torch.topk(row, k).indices.tolist()) for row, k in zip(scores, counts)]


@torch.no_grad()
def select(gated: GatedModel, head_counts_: list[int] | None = None, widths: list[int] | None = None) -> Selection:
    """Kept units by log_alpha: `head_counts_` / `widths` per layer, or by default round(sum P(z != 0)), at least 1."""
    eh, en = gated.expected_counts()
    hc = head_counts_ or [max(1, round(float(x))) for x in eh]
    wc = widths or [max(1, round(float(x))) for x in en]
    heads = top_units(gated.heads.log_alpha, hc)
    neurons = top_units(gated.neurons.log_alpha, wc)
    zh, zn = gated.heads.deterministic(), gated.neurons.deterministic()

    def scale(z: torch.Tensor, keep: list[list[int]]) -> list[list[float]]:
        # a kept unit whose deterministic gate is 0 (kept only by the at-least-one rule) is not scaled to 0
        return [[float(z[i, j]) if float(z[i, j]) > 0 else 1.0 for j in row] for i, row in enumerate(keep)]

    return Selection(heads, neurons, scale(zh, heads), scale(zn, neurons))
