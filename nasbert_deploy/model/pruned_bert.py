"""A BERT (or RoBERTa) whose layers keep different numbers of attention heads and FFN neurons (structured pruning).

transformers' `BertConfig` records removed heads (`pruned_heads`, applied by `post_init`) but has one
`intermediate_size` for every layer. `PrunedBertConfig` (model type `pruned_bert`) adds
`intermediate_sizes` (one FFN width per layer); the model classes are BERT's own, with each layer's
two FFN matrices built at that width. Weights, tokenizer and ONNX/OpenVINO exports are BERT's. RoBERTa models
get the same treatment under model type `pruned_roberta` (`PrunedRobertaConfig` and RoBERTa's own classes).

Three options carry a mean-pooled NAS-BERT classifier of uniform width (the teachers `finetune-teacher` converts,
students of `D:mha,ffn` blocks) over exactly (`prune.from_nasbert`): `embedding_projection` (a Linear after the
embedding LayerNorm, NAS-BERT's `embed_proj`), `layer_projections` (layers that start with a Linear of the
layer's width: NAS-BERT's block boundaries) and `pooling = "mean"` (the classifier reads the masked mean of the
last layer's tokens instead of BERT's [CLS] pooler).

This file imports only torch and transformers: `write_pruned_remote_code` copies it verbatim into a
saved folder and adds `auto_map`, so the folder loads with `AutoModel...from_pretrained(folder,
trust_remote_code=True)` where nasbert-deploy is not installed. Here `register()` makes the Auto classes
find it without remote code.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from transformers import BertConfig, RobertaConfig
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.bert.modeling_bert import (
    BertEmbeddings,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertLayer,
    BertModel,
)
from transformers.models.roberta.modeling_roberta import (
    RobertaForQuestionAnswering,
    RobertaForSequenceClassification,
    RobertaModel,
)

PRUNED_MODEL_TYPE = "pruned_bert"
PRUNED_ROBERTA_TYPE = "pruned_roberta"
REMOTE_FILE = "modeling_pruned_bert.py"


class PrunedBertConfig(BertConfig):
    """`BertConfig` plus `intermediate_sizes` (FFN width per layer; None = `intermediate_size` everywhere)."""

    model_type = PRUNED_MODEL_TYPE

    def __init__(self, intermediate_sizes: list[int] | None = None, pooling: str = "cls",
                 embedding_projection: bool = False, layer_projections: list[int] | None = None, **kwargs):
        super().__init__(**kwargs)
        sizes = ffn_sizes(self, intermediate_sizes)
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        self.intermediate_sizes = sizes
        self.pooling = pooling
        self.embedding_projection = bool(embedding_projection)
        self.layer_projections = sorted(int(i) for i in layer_projections or [] if int(i) < self.num_hidden_layers)


def ffn_sizes(config: BertConfig, intermediate_sizes: list[int] | None) -> list[int]:
    """The FFN width of every layer (`intermediate_size` everywhere when None); ValueError if malformed."""
    n = config.num_hidden_layers
    sizes = [int(w) for w in intermediate_sizes] if intermediate_sizes else [int(config.intermediate_size)] * n
    if len(sizes) != n or min(sizes, default=1) < 1:
        raise ValueError(f"intermediate_sizes needs {n} widths >= 1, got {sizes}")
    return sizes


class ProjectedEmbeddings(BertEmbeddings):
    """BERT's embeddings followed by a Linear of the same width (NAS-BERT's `embed_proj`)."""

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.projection = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, *args, **kwargs):
        return self.projection(super().forward(*args, **kwargs))


class ProjectedBertLayer(BertLayer):
    """A BERT layer whose input first goes through a Linear of the same width (a NAS-BERT block boundary)."""

    def __init__(self, config: BertConfig, layer_idx: int | None = None):
        super().__init__(config, layer_idx)
        self.projection = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states, *args, **kwargs):
        return super().forward(self.projection(hidden_states), *args, **kwargs)


def resize_ffn(encoder: nn.Module, sizes: list[int]) -> None:
    """Give layer i of a BERT encoder an FFN of width sizes[i] (fresh matrices: weights are loaded afterwards)."""
    for layer, w in zip(encoder.layer, sizes):
        inner = layer.intermediate.dense
        if inner.out_features == w:
            continue
        layer.intermediate.dense = nn.Linear(inner.in_features, w)  # (hidden -> w)
        layer.output.dense = nn.Linear(w, layer.output.dense.out_features)  # (w -> hidden)


class PrunedBertModel(BertModel):
    config_class = PrunedBertConfig

    def __init__(self, config: PrunedBertConfig, add_pooling_layer: bool = True):
        super().__init__(config, add_pooling_layer=add_pooling_layer and config.pooling == "cls")
        if config.embedding_projection:
            self.embeddings = ProjectedEmbeddings(config)
        for i in config.layer_projections:
            self.encoder.layer[i] = ProjectedBertLayer(config, layer_idx=i)
        resize_ffn(self.encoder, config.intermediate_sizes)


class PrunedBertForSequenceClassification(BertForSequenceClassification):
    config_class = PrunedBertConfig

    def __init__(self, config: PrunedBertConfig):
        super().__init__(config)
        self.bert = PrunedBertModel(config)  # BertModel with the per-layer FFN widths and pruned heads
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None, return_dict=None):
        if self.config.pooling == "cls":
            return super().forward(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                                   labels, output_attentions, output_hidden_states, return_dict)
        out = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, position_ids=position_ids,
                        head_mask=head_mask, inputs_embeds=inputs_embeds, output_attentions=output_attentions,
                        output_hidden_states=output_hidden_states, return_dict=True)
        hidden = out.last_hidden_state  # (b, t, hidden)
        mask = torch.ones(hidden.shape[:2], dtype=hidden.dtype, device=hidden.device) if attention_mask is None \
            else attention_mask.to(hidden.dtype)
        pooled = (hidden * mask[:, :, None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
        logits = self.classifier(self.dropout(pooled))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        if return_dict is False:
            rest = tuple(x for x in (out.hidden_states, out.attentions) if x is not None)
            return ((loss,) if loss is not None else ()) + (logits,) + rest
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions)


class PrunedBertForQuestionAnswering(BertForQuestionAnswering):
    """BERT's extractive QA head (start/end logits per token) on a pruned encoder."""

    config_class = PrunedBertConfig

    def __init__(self, config: PrunedBertConfig):
        super().__init__(config)
        self.bert = PrunedBertModel(config, add_pooling_layer=False)
        self.post_init()


class PrunedRobertaConfig(RobertaConfig):
    """`RobertaConfig` plus `intermediate_sizes` (FFN width per layer), as `PrunedBertConfig`."""

    model_type = PRUNED_ROBERTA_TYPE

    def __init__(self, intermediate_sizes: list[int] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.intermediate_sizes = ffn_sizes(self, intermediate_sizes)


class PrunedRobertaModel(RobertaModel):
    config_class = PrunedRobertaConfig

    def __init__(self, config: PrunedRobertaConfig, add_pooling_layer: bool = True):
        super().__init__(config, add_pooling_layer=add_pooling_layer)
        resize_ffn(self.encoder, config.intermediate_sizes)


class PrunedRobertaForSequenceClassification(RobertaForSequenceClassification):
    config_class = PrunedRobertaConfig

    def __init__(self, config: PrunedRobertaConfig):
        super().__init__(config)
        self.roberta = PrunedRobertaModel(config, add_pooling_layer=False)
        self.post_init()


class PrunedRobertaForQuestionAnswering(RobertaForQuestionAnswering):
    config_class = PrunedRobertaConfig

    def __init__(self, config: PrunedRobertaConfig):
        super().__init__(config)
        self.roberta = PrunedRobertaModel(config, add_pooling_layer=False)
        self.post_init()


def _auto_map(prefix: str) -> dict[str, str]:
    m = REMOTE_FILE[:-3]
    return {"AutoConfig": f"{m}.{prefix}Config", "AutoModel": f"{m}.{prefix}Model",
            "AutoModelForSequenceClassification": f"{m}.{prefix}ForSequenceClassification",
            "AutoModelForQuestionAnswering": f"{m}.{prefix}ForQuestionAnswering"}


AUTO_MAP = _auto_map("PrunedBert")
AUTO_MAPS = {PRUNED_MODEL_TYPE: AUTO_MAP, PRUNED_ROBERTA_TYPE: _auto_map("PrunedRoberta")}


def register() -> None:
    """Make `AutoConfig` / `AutoModel` / `AutoModelFor{SequenceClassification,QuestionAnswering}` know `pruned_bert`
    (idempotent)."""
    from transformers import AutoConfig, AutoModel, AutoModelForQuestionAnswering, AutoModelForSequenceClassification

    families = ((PRUNED_MODEL_TYPE, PrunedBertConfig, PrunedBertModel, PrunedBertForSequenceClassification,
                 PrunedBertForQuestionAnswering),
                (PRUNED_ROBERTA_TYPE, PrunedRobertaConfig, PrunedRobertaModel, PrunedRobertaForSequenceClassification,
                 PrunedRobertaForQuestionAnswering))
    for name, config, model, classifier, qa in families:
        try:
            AutoConfig.register(name, config)
            AutoModel.register(config, model)
            AutoModelForSequenceClassification.register(config, classifier)
            AutoModelForQuestionAnswering.register(config, qa)
        except ValueError:  # already registered in this process
            pass


def write_pruned_remote_code(folder: str | Path) -> Path:
    """Copy this file into `folder` (a saved pruned model) and add `auto_map` to its `config.json`."""
    folder = Path(folder)
    target = folder / REMOTE_FILE
    target.write_text(Path(__file__).read_text(encoding="utf-8"), encoding="utf-8")
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["auto_map"] = dict(AUTO_MAPS.get(cfg.get("model_type"), AUTO_MAP))
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return target
