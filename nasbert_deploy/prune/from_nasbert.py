"""A mean-pooled NAS-BERT classifier of uniform width, carried over exactly into the BERT form the pruner gates.

`finetune-teacher` converts a BERT encoder into a `NasBertForSequenceClassification` (mean pooling, one
`D:mha,ffn` block per layer), and ETD students such as `256:mha,ffn,id,id` x 3 have the same structure:
alternating attention and FFN operations of one width. Their operations are BERT's post-LayerNorm sub-layers
(same equations, LayerNorm epsilon and GELU), so each `mha,ffn` pair is one BERT layer; what BERT lacks is
NAS-BERT's `embed_proj` (a Linear after the embedding LayerNorm: `PrunedBertConfig.embedding_projection`), its
block boundaries (a Linear between blocks, trained with the rest when the teacher was fine-tuned:
`layer_projections`, at the first layer of each block after the first) and its token `head` (a Linear before
mean pooling, which is linear too: folded into the classifier, W = C·W_h, b = C·b_h + c). The result is a
`pruned_bert` classifier with `pooling = "mean"` whose logits equal the NAS-BERT model's up to float rounding
(3.8e-6 on the debian-sections teacher); `prune` gates and prunes it like any BERT classifier.
"""

from __future__ import annotations

from typing import Any

import torch

from nasbert_deploy.errors import TaskError
from nasbert_deploy.model.pruned_bert import PrunedBertConfig, PrunedBertForSequenceClassification, register

NASBERT_TYPE = "nasbert"


def _blocks(arch: str) -> list[tuple[int, list[str]]]:
    """(width, non-identity operation names) per block of an arch string (read leniently: the reasons below say
    what does not fit, rather than the space's parser)."""
    out = []
    for block in arch.split("|"):
        hidden, _, names = block.partition(":")
        out.append((int(hidden), [o.strip() for o in names.split(",") if o.strip() != "id"]))
    return out


def unsupported_reason(config: dict[str, Any]) -> str | None:
    """Why a saved NAS-BERT config cannot be carried over (None when it can)."""
    arch = str(config.get("arch") or "")
    try:
        blocks = _blocks(arch)
    except ValueError:
        return f"its arch {arch!r} is not readable"
    widths = {h for h, _ in blocks}
    ops = [op for _, names in blocks for op in names]
    if len(widths) != 1:
        return f"its blocks have different widths ({', '.join(map(str, sorted(widths)))})"
    if not ops or len(ops) % 2 or any(op != want for op, want in zip(ops, ["mha", "ffn"] * len(ops))):
        return "its operations are not attention/FFN pairs (mha,ffn per layer; no convolutions)"
    embed = int((config.get("space") or {}).get("embed_dim", 0))
    if embed != blocks[0][0]:
        return f"its embeddings are {embed} wide and its layers {blocks[0][0]} (BERT's tables have the layers' width)"
    return None


def bert_view(config: dict[str, Any]) -> dict[str, Any]:
    """The BERT geometry of a convertible NAS-BERT config: hidden size, heads, FFN width, layers, and the layers
    that start a block after the first (where a boundary Linear sits)."""
    space, blocks = config["space"], _blocks(str(config["arch"]))
    hidden = blocks[0][0]
    layers = [names.count("mha") for _, names in blocks]  # one BERT layer per mha,ffn pair
    starts = [sum(layers[:i]) for i in range(1, len(blocks))]
    return {"hidden_size": hidden, "num_attention_heads": hidden // int(space["head_dim"]),
            "intermediate_size": hidden * int(space["ffn_ratio"]), "num_hidden_layers": sum(layers),
            "layer_projections": starts}


def check_convertible(config: dict[str, Any], path: Any) -> None:
    """`TaskError` (one line) unless `config` is a NAS-BERT classifier `to_pruned_bert` carries over."""
    why = unsupported_reason(config)
    if why:
        raise TaskError(f"--model {path} is a NAS-BERT model that prune cannot carry over: {why}; prune handles "
                        "BERT classifiers and NAS-BERT ones of one width with mha,ffn layers (finetune-teacher's output)")


@torch.no_grad()
def to_pruned_bert(model: Any) -> PrunedBertForSequenceClassification:
    """The `NasBertForSequenceClassification` `model` as an equivalent `pruned_bert` classifier (mean pooling)."""
    register()
    cfg = model.config
    check_convertible(cfg.to_dict(), getattr(cfg, "_name_or_path", "model"))
    geo = bert_view(cfg.to_dict())
    space = cfg.search_space
    enc = model.nasbert
    # a converted teacher (`identity_projections`) has nn.Identity where other models have projection Linears
    same = not isinstance(enc.embed_proj, torch.nn.Linear)
    if any(not isinstance(b, torch.nn.Linear) for b in enc.boundaries):
        geo["layer_projections"] = []
    config = PrunedBertConfig(
        vocab_size=space.vocab_size, max_position_embeddings=space.max_positions, type_vocab_size=space.type_vocab_size,
        hidden_act="gelu", layer_norm_eps=float(enc.embeddings.norm.eps), hidden_dropout_prob=float(cfg.hidden_dropout_prob),
        attention_probs_dropout_prob=float(cfg.hidden_dropout_prob), classifier_dropout=float(cfg.classifier_dropout),
        num_labels=int(cfg.num_labels), id2label=dict(cfg.id2label), label2id=dict(cfg.label2id),
        pooling="mean", embedding_projection=not same, architectures=["PrunedBertForSequenceClassification"], **geo)
    out = PrunedBertForSequenceClassification(config).eval()
    emb, e = out.bert.embeddings, enc.embeddings
    emb.word_embeddings.weight.copy_(e.word.weight)
    emb.position_embeddings.weight.copy_(e.position.weight)
    emb.token_type_embeddings.weight.copy_(e.token_type.weight)
    _copy_linear(emb.LayerNorm, e.norm)
    if not same:
        _copy_linear(emb.projection, enc.embed_proj)
    for i, boundary in zip(geo["layer_projections"], enc.boundaries):
        _copy_linear(out.bert.encoder.layer[i].projection, boundary)
    ops = [op for block in enc.blocks for op in block.layers if any(True for _ in op.parameters())]
    for layer, (mha, ffn) in zip(out.bert.encoder.layer, zip(ops[::2], ops[1::2])):
        att = layer.attention
        for dst, src in ((att.self.query, mha.query), (att.self.key, mha.key), (att.self.value, mha.value),
                         (att.output.dense, mha.out), (att.output.LayerNorm, mha.norm), (layer.intermediate.dense, ffn.fc1),
                         (layer.output.dense, ffn.fc2), (layer.output.LayerNorm, ffn.norm)):
            _copy_linear(dst, src)
    c, head = model.classifier, enc.head
    if not isinstance(head, torch.nn.Linear):
        _copy_linear(out.classifier, c)
    else:
        out.classifier.weight.copy_(c.weight @ head.weight)  # (k, O) @ (O, D): the token head folded into the classifier
        out.classifier.bias.copy_(c.weight @ head.bias + c.bias)
    return out


def _copy_linear(dst: torch.nn.Module, src: torch.nn.Module) -> None:
    """Weight and bias of a Linear or LayerNorm, same shapes."""
    dst.weight.copy_(src.weight)
    dst.bias.copy_(src.bias)
