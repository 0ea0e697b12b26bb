"""The standalone model as a transformers `PreTrainedModel`, registered with the Auto classes.

`NasBertModel` is what `Supernet.extract(arch)` produces, what is profiled, exported, distilled and
fine-tuned. Layout (shapes for batch b, sequence t):

    input_ids (b, t) -> Embeddings (b, t, E) -> embed_proj (b, t, h1)
      -> block 1 layers (b, t, h1) -> boundary 1 (b, t, h2) -> block 2 ... -> block N (b, t, hN)
      -> head (b, t, output_dim)          = last_hidden_state

`output_hidden_states=True` also returns the embedding projection's output and every non-identity operation's
output, each (b, t, h) (what KD-aware quantization matches between the fp32 and the quantized copy).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, SequenceClassifierOutput

from nasbert_deploy.model.configuration import NasBertConfig
from nasbert_deploy.model.ops import Embeddings, build_op

__all__ = ["NasBertConfig", "NasBertModel", "NasBertForSequenceClassification", "mean_pool", "projection"]


class NasBertPreTrainedModel(PreTrainedModel):
    config_class = NasBertConfig
    base_model_prefix = "nasbert"
    main_input_name = "input_ids"

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Conv1d):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class Block(nn.Module):
    """One block of the standalone model: its layer operations (identities hold no weights)."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, mask)
        return x


def projection(d_in: int, d_out: int, identity: bool = False) -> nn.Module:
    """A width projection: `nn.Linear(d_in, d_out)`, or `nn.Identity()` when `identity` and the widths agree.

    A teacher converted exactly has identity projections; as Linears they make MiniLM-L6 6% slower, drift from
    the identity in fine-tuning, and sit on the residual stream where 8-bit quantization of their weights and inputs
    perturbs every feature (docs/quantization.md)."""
    return nn.Identity() if identity and d_in == d_out else nn.Linear(d_in, d_out)


class NasBertModel(NasBertPreTrainedModel):
    def __init__(self, config: NasBertConfig) -> None:
        super().__init__(config)
        space = config.search_space
        arch = config.arch_obj
        hs = arch.hiddens
        p = config.hidden_dropout_prob
        self.embeddings = Embeddings(space.vocab_size, space.max_positions, space.type_vocab_size, space.embed_dim)
        same = bool(getattr(config, "identity_projections", False))
        self.embed_proj = projection(space.embed_dim, hs[0], same)
        self.blocks = nn.ModuleList(Block([build_op(op, b.hidden, space, p) for op in b.ops]) for b in arch.blocks)
        self.boundaries = nn.ModuleList(projection(a, b, same) for a, b in zip(hs, hs[1:]))
        self.head = projection(hs[-1], space.output_dim, same)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.word

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.embeddings.word = value

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        return_dict: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutput | tuple[torch.Tensor]:
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        b, t = input_ids.shape[0], input_ids.shape[1]
        # tokens flattened to (b * t, hidden) from the embedding to the head (see `ops`: Gemm with bias on ORT)
        x = self.embed_proj(self.embeddings(input_ids, token_type_ids).reshape(b * t, -1))
        states = [x.view(b, t, -1)] if output_hidden_states else None
        arch = self.config.arch_obj if states is not None else None
        for i, block in enumerate(self.blocks):
            if i:
                x = self.boundaries[i - 1](x)
            if states is None:
                x = block(x, mask)
                continue
            for op, layer in zip(arch.blocks[i].ops, block.layers):
                x = layer(x, mask)
                if not op.is_identity:
                    states.append(x.view(b, t, -1))
        out = self.head(x).view(b, t, -1)
        if return_dict is False:
            return (out,) if states is None else (out, tuple(states))
        return BaseModelOutput(last_hidden_state=out, hidden_states=None if states is None else tuple(states))


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over the sequence: (b, t, d), (b, t) -> (b, d)."""
    m = mask[:, :, None].to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


class NasBertForSequenceClassification(NasBertPreTrainedModel):
    """Mean-pooled encoder output -> dropout -> linear classifier."""

    def __init__(self, config: NasBertConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.nasbert = NasBertModel(config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.search_space.output_dim, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput | tuple[torch.Tensor, ...]:
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        enc = self.nasbert(input_ids, mask, token_type_ids, output_hidden_states=output_hidden_states)
        logits = self.classifier(self.dropout(mean_pool(enc.last_hidden_state, mask)))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        if return_dict is False:
            out = (logits,) if loss is None else (loss, logits)
            return out if enc.hidden_states is None else (*out, enc.hidden_states)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=enc.hidden_states)


AutoConfig.register("nasbert", NasBertConfig, exist_ok=True)
AutoModel.register(NasBertConfig, NasBertModel, exist_ok=True)
AutoModelForSequenceClassification.register(NasBertConfig, NasBertForSequenceClassification, exist_ok=True)
