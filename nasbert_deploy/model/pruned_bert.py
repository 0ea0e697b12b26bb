"""A BERT whose layers keep different numbers of attention heads and FFN neurons (structured pruning).

transformers' `BertConfig` records removed heads (`pruned_heads`, applied by `post_init`) but has one
`intermediate_size` for every layer. `PrunedBertConfig` (model type `pruned_bert`) adds
`intermediate_sizes` (one FFN width per layer); the model classes are BERT's own, with each layer's
two FFN matrices built at that width. Weights, tokenizer and ONNX/OpenVINO exports are BERT's.

This file imports only torch and transformers: `write_pruned_remote_code` copies it verbatim into a
saved folder and adds `auto_map`, so the folder loads with `AutoModel...from_pretrained(folder,
trust_remote_code=True)` where nasbert-deploy is not installed. Here `register()` makes the Auto classes
find it without remote code.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertForSequenceClassification, BertModel

PRUNED_MODEL_TYPE = "pruned_bert"
REMOTE_FILE = "modeling_pruned_bert.py"


class PrunedBertConfig(BertConfig):
    """`BertConfig` plus `intermediate_sizes` (FFN width per layer; None = `intermediate_size` everywhere)."""

    model_type = PRUNED_MODEL_TYPE

    def __init__(self, intermediate_sizes: list[int] | None = None, **kwargs):
        super().__init__(**kwargs)
        n = self.num_hidden_layers
        sizes = [int(w) for w in intermediate_sizes] if intermediate_sizes else [int(self.intermediate_size)] * n
        if len(sizes) != n or min(sizes) < 1:
            raise ValueError(f"intermediate_sizes needs {n} widths >= 1, got {sizes}")
        self.intermediate_sizes = sizes


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
        super().__init__(config, add_pooling_layer=add_pooling_layer)
        resize_ffn(self.encoder, config.intermediate_sizes)


class PrunedBertForSequenceClassification(BertForSequenceClassification):
    config_class = PrunedBertConfig

    def __init__(self, config: PrunedBertConfig):
        super().__init__(config)
        self.bert = PrunedBertModel(config)  # BertModel with the per-layer FFN widths and pruned heads
        self.post_init()


AUTO_MAP = {
    "AutoConfig": f"{REMOTE_FILE[:-3]}.PrunedBertConfig",
    "AutoModel": f"{REMOTE_FILE[:-3]}.PrunedBertModel",
    "AutoModelForSequenceClassification": f"{REMOTE_FILE[:-3]}.PrunedBertForSequenceClassification",
}


def register() -> None:
    """Make `AutoConfig` / `AutoModel` / `AutoModelForSequenceClassification` know `pruned_bert` (idempotent)."""
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    try:
        AutoConfig.register(PRUNED_MODEL_TYPE, PrunedBertConfig)
        AutoModel.register(PrunedBertConfig, PrunedBertModel)
        AutoModelForSequenceClassification.register(PrunedBertConfig, PrunedBertForSequenceClassification)
    except ValueError:  # already registered in this process
        pass


def write_pruned_remote_code(folder: str | Path) -> Path:
    """Copy this file into `folder` (a saved pruned model) and add `auto_map` to its `config.json`."""
    folder = Path(folder)
    target = folder / REMOTE_FILE
    target.write_text(Path(__file__).read_text(encoding="utf-8"), encoding="utf-8")
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["auto_map"] = dict(AUTO_MAP)
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return target
