"""Which of a teacher's heads, FFN neurons and hidden dimensions matter (Extract Then Distill, ETD-Impt).

ETD (Chen et al. 2021) initialises a student from the teacher's most important parameters. Importance
here is first-order (Michel et al. 2019, "Are Sixteen Heads Really Better than One?"): the gradient of
a loss with respect to a gate on each unit, taken at gate = 1 and accumulated in absolute value over a
sample of text:

- heads: a gate multiplies each head's context vector before the attention output projection;
- FFN neurons: a gate multiplies each intermediate activation before the output projection;
- hidden dimensions: |sum over tokens and layers of h * dL/dh| on the residual stream (the embedding
  output and every layer output), so a dimension counts by how much the loss moves when it is removed.

The loss has to be one the teacher is not already at a minimum of (a self-distillation loss has zero
gradient at gate = 1). Sentence encoders such as MiniLM-L6 carry no masked-LM head, so the loss is the
in-batch contrastive loss of sentence embeddings (mean pooled, L2 normalised, temperature 0.05) between
each text and a view of it with 15% of its tokens dropped, the objective such encoders are trained on.

`importance_scores(..., method="rand")` gives seeded random scores instead (ETD-Rand).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from nasbert_deploy.errors import TeacherError

METHODS = ("impt", "rand")


@dataclass(frozen=True)
class Importance:
    """Scores per unit: heads (layers, heads), neurons (layers, intermediate), hidden (hidden,); higher = keep."""

    heads: torch.Tensor
    neurons: torch.Tensor
    hidden: torch.Tensor
    method: str
    texts: int

    def top(self, scores: torch.Tensor, k: int) -> list[int]:
        """Indices of the k highest scores, in ascending index order (stable: ties keep the lower index)."""
        order = torch.argsort(-scores, stable=True)[:k]
        return sorted(int(i) for i in order)

    def hidden_order(self) -> list[int]:
        """Hidden dimensions from the most to the least important (a student of width h keeps the first h)."""
        return [int(i) for i in torch.argsort(-self.hidden, stable=True)]


def teacher_shape(model: Any) -> tuple[int, int, int, int]:
    """(layers, heads, intermediate size, hidden size) of a BERT-class encoder; TeacherError otherwise."""
    cfg = model.config
    need = ("num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_size")
    missing = [n for n in need if not hasattr(cfg, n)]
    if missing or not hasattr(model, "encoder") or not hasattr(model, "embeddings"):
        raise TeacherError(f"cannot extract from a {type(model).__name__}: a BERT-class encoder is needed (missing {missing})")
    return int(cfg.num_hidden_layers), int(cfg.num_attention_heads), int(cfg.intermediate_size), int(cfg.hidden_size)


def _gate_hooks(model: Any, head_gates: torch.Tensor, neuron_gates: torch.Tensor) -> list[Any]:
    """Pre-hooks scaling each head's context (before attention.output.dense) and each FFN activation."""
    L, H, _, D = teacher_shape(model)
    d = D // H
    handles = []
    for i, layer in enumerate(model.encoder.layer):

        def heads(_m: Any, args: tuple[Any, ...], i: int = i) -> tuple[Any, ...]:
            x = args[0]  # (b, t, H * d)
            g = head_gates[i].repeat_interleave(d)  # (H * d,)
            return (x * g, *args[1:])

        def neurons(_m: Any, args: tuple[Any, ...], i: int = i) -> tuple[Any, ...]:
            return (args[0] * neuron_gates[i], *args[1:])  # (b, t, intermediate)

        handles.append(layer.attention.output.dense.register_forward_pre_hook(heads))
        handles.append(layer.output.dense.register_forward_pre_hook(neurons))
    # the embedding output is a leaf of this graph: make it one autograd can differentiate with respect to
    handles.append(model.embeddings.register_forward_hook(lambda _m, _a, out: out.detach().requires_grad_(True)))
    return handles


def _drop_tokens(ids: torch.Tensor, mask: torch.Tensor, rate: float, gen: torch.Generator) -> torch.Tensor:
    """A view of the batch with `rate` of the real tokens (not the first or last) masked out of attention."""
    keep = torch.rand(ids.shape, generator=gen) >= rate
    keep[:, 0] = True
    lengths = mask.sum(1)
    keep[torch.arange(ids.shape[0]), lengths - 1] = True  # the [SEP]
    return mask * keep.to(mask.dtype)


def contrastive_loss(model: Any, ids: torch.Tensor, mask: torch.Tensor, view: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """In-batch InfoNCE between the text and its token-dropped view; returns (loss, outputs of the full text)."""
    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    other = model(input_ids=ids, attention_mask=view)

    def pool(h: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        w = m[:, :, None].to(h.dtype)
        return F.normalize((h * w).sum(1) / w.sum(1).clamp(min=1.0), dim=-1)

    a, b = pool(out.last_hidden_state, mask), pool(other.last_hidden_state, view)
    logits = a @ b.T / 0.05  # (b, b)
    target = torch.arange(a.shape[0])
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2, out


def importance_scores(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    method: str = "impt",
    batch_size: int = 16,
    seq_len: int = 64,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> Importance:
    """Score the teacher's heads, FFN neurons and hidden dimensions on `texts` (see the module doc)."""
    if method not in METHODS:
        raise TeacherError(f"unknown importance method {method!r}; valid: {', '.join(METHODS)}")
    L, H, inner, D = teacher_shape(model)
    if method == "rand":
        gen = torch.Generator().manual_seed(seed)
        return Importance(torch.rand(L, H, generator=gen), torch.rand(L, inner, generator=gen),
                          torch.rand(D, generator=gen), "rand", 0)
    texts = [t for t in texts if t.strip()]
    if len(texts) < 2:
        raise TeacherError("importance needs at least 2 non-empty texts (the loss contrasts texts within a batch)")
    batch_size = max(2, min(batch_size, len(texts)))
    head_gates = torch.ones(L, H, requires_grad=True)
    neuron_gates = torch.ones(L, inner, requires_grad=True)
    heads, neurons, hidden = torch.zeros(L, H), torch.zeros(L, inner), torch.zeros(D)
    gen = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    handles = _gate_hooks(model, head_gates, neuron_gates)
    starts = range(0, len(texts) - 1, batch_size)
    try:
        for n, start in enumerate(starts):
            chunk = list(texts[start : start + batch_size])
            if len(chunk) < 2:
                break
            enc = tokenizer(chunk, padding=True, truncation=True, max_length=seq_len, return_tensors="pt")
            ids, mask = enc["input_ids"], enc["attention_mask"]
            view = _drop_tokens(ids, mask, 0.15, gen)
            loss, out = contrastive_loss(model, ids, mask, view)
            states = out.hidden_states  # embedding output + every layer: (b, t, D) each
            g_heads, g_neurons, *g_states = torch.autograd.grad(loss, [head_gates, neuron_gates, *states])
            heads += g_heads.abs()
            neurons += g_neurons.abs()
            m = mask[:, :, None].to(states[0].dtype)
            for h, g in zip(states, g_states):
                hidden += (h.detach() * g * m).sum((0, 1)).abs()
            if progress is not None:
                progress(n + 1, len(starts))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return Importance(heads, neurons, hidden, "impt", len(texts))
