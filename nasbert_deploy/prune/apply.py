"""Closed gates -> a smaller model: real, smaller weight matrices in a `pruned_bert` classifier.

Heads go the way transformers records them (`config.pruned_heads`, `BertAttention.prune_heads`); FFN
neurons by slicing the two FFN matrices (`config.intermediate_sizes`). The deterministic gate value of each
kept unit is folded into the matrix that reads that unit's output (attention output dense columns, FFN
output dense columns), so the pruned model computes what the gated model computed in eval mode.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from nasbert_deploy.errors import TaskError
from nasbert_deploy.model.pruned_bert import (
    PrunedBertConfig,
    PrunedBertForQuestionAnswering,
    PrunedBertForSequenceClassification,
    PrunedRobertaConfig,
    PrunedRobertaForQuestionAnswering,
    PrunedRobertaForSequenceClassification,
    register,
)
from nasbert_deploy.prune.from_nasbert import NASBERT_TYPE, check_convertible
from nasbert_deploy.prune.gates import Selection, encoder_of

SUPPORTED_TYPES = ("bert", "pruned_bert", "roberta", "pruned_roberta")  # MiniLM checkpoints are model type bert


def check_supported(config: dict[str, Any], path: Any) -> None:
    """`TaskError` unless the saved config is a BERT-family model this pruner handles (classifier or QA)."""
    mt = config.get("model_type")
    if mt == NASBERT_TYPE:
        check_convertible(config, path)
        return
    if mt not in SUPPORTED_TYPES:
        raise TaskError(f"--model {path} is a {mt!r} model; prune handles BERT-family classifiers of model type "
                        f"{', '.join(SUPPORTED_TYPES)} and NAS-BERT ones of mha,ffn layers (e.g. from "
                        "`nasbert-deploy finetune-teacher`)")
    if config.get("pruned_heads") or len(set(config.get("intermediate_sizes") or [0])) > 1:
        raise TaskError(f"--model {path} is already pruned (per-layer heads or FFN widths differ); "
                        "prune the unpruned fine-tuned model instead")


def pruned_classes(model_type: str, qa: bool) -> tuple[type, type]:
    """(config class, model class) of the pruned form of a `model_type` classifier (or QA model)."""
    if model_type in ("roberta", "pruned_roberta"):
        return PrunedRobertaConfig, PrunedRobertaForQuestionAnswering if qa else PrunedRobertaForSequenceClassification
    return PrunedBertConfig, PrunedBertForQuestionAnswering if qa else PrunedBertForSequenceClassification


@torch.no_grad()
def prune_model(model: Any, sel: Selection) -> Any:
    """A `PrunedBertForSequenceClassification` (`...ForQuestionAnswering` for a QA model, `PrunedRoberta...` for
    RoBERTa) keeping `sel`'s heads and neurons of `model` (left unchanged)."""
    register()
    src = copy.deepcopy(model).eval()
    layers = encoder_of(src).encoder.layer
    n_heads = int(src.config.num_attention_heads)
    head_dim = int(src.config.hidden_size) // n_heads
    pruned: dict[int, list[int]] = {}
    for i, layer in enumerate(layers):
        out_w = layer.attention.output.dense.weight  # (hidden, heads * head_dim)
        for h, s in zip(sel.heads[i], sel.head_scale[i]):
            out_w[:, h * head_dim : (h + 1) * head_dim] *= s
        ffn_out = layer.output.dense.weight  # (hidden, W)
        keep = torch.tensor(sel.neurons[i], dtype=torch.long)
        ffn_out[:, keep] *= torch.tensor(sel.neuron_scale[i], dtype=ffn_out.dtype)
        gone = sorted(set(range(n_heads)) - set(sel.heads[i]))
        if gone:
            pruned[i] = gone
            layer.attention.prune_heads(gone)
        inner = layer.intermediate.dense
        inner.weight = torch.nn.Parameter(inner.weight[keep].clone())  # (w, hidden)
        inner.bias = torch.nn.Parameter(inner.bias[keep].clone())
        inner.out_features = len(keep)
        layer.output.dense.weight = torch.nn.Parameter(ffn_out[:, keep].clone())  # (hidden, w)
        layer.output.dense.in_features = len(keep)
    cfg = src.config.to_dict()
    for k in ("model_type", "architectures", "auto_map", "_name_or_path", "transformers_version", "pruned_heads",
              "intermediate_sizes"):
        cfg.pop(k, None)
    config_cls, cls = pruned_classes(str(src.config.model_type), hasattr(src, "qa_outputs"))
    config = config_cls(intermediate_sizes=sel.widths, pruned_heads=pruned, architectures=[cls.__name__], **cfg)
    new = cls(config).eval()
    missing, unexpected = new.load_state_dict(src.state_dict(), strict=False)
    bad = [k for k in missing if not k.endswith("position_ids")] + list(unexpected)
    if bad:
        raise RuntimeError(f"pruned weights do not fit the pruned model: {bad[:5]}")
    return new


def kept_summary(sel: Selection, heads_total: int, width_total: int) -> dict[str, Any]:
    """Heads and neurons kept per layer, and the fractions kept overall."""
    return {
        "heads_per_layer": sel.head_counts,
        "ffn_per_layer": sel.widths,
        "heads_kept": f"{sum(sel.head_counts)}/{heads_total * len(sel.heads)}",
        "ffn_kept": f"{sum(sel.widths)}/{width_total * len(sel.neurons)}",
    }
