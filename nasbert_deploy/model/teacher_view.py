"""A NAS-BERT model as a distillation teacher: task-specific distillation from a fine-tuned classifier.

TinyBERT's second stage distils the student's hidden states from the *fine-tuned* teacher on in-domain text before
its predictions are distilled. Here a fine-tuned teacher is a NAS-BERT folder (`finetune` converts a BERT teacher
exactly into one `D:mha,ffn` block per layer, mean-pooled like the students), so `distill --teacher` accepts such a
folder: `NasBertTeacher` presents it as the encoder the distillation losses expect, one "layer" per block:

    hidden_states = (embedding projection, block 1 output, ..., block N - 1 output, head output)

The last entry is the head's output, i.e. `last_hidden_state`, what the classifier mean-pools. Every block must run at
the model's output width (the student regresses the teacher's width): a converted teacher does. The classifier head
is not loaded; only the encoder's weights are (any NAS-BERT folder: `distill`, `export`, `finetune` outputs).
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutput

from nasbert_deploy.errors import TeacherError
from nasbert_deploy.teacher import Teacher, is_nasbert, load_teacher, load_tokenizer, read_model_config


class NasBertTeacher(nn.Module):
    """A `NasBertModel` seen as a teacher encoder of `num_blocks` layers (see the module docstring)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.encoder = model
        cfg = model.config
        self.config = SimpleNamespace(
            hidden_size=int(cfg.hidden_size), num_hidden_layers=len(model.blocks), vocab_size=int(cfg.vocab_size),
            architectures=list(cfg.architectures or []), model_type="nasbert", arch=cfg.arch,
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutput:
        m = self.encoder
        if not output_hidden_states:
            return BaseModelOutput(last_hidden_state=m(input_ids, attention_mask, token_type_ids).last_hidden_state)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        b, t = input_ids.shape[0], input_ids.shape[1]
        x = m.embed_proj(m.embeddings(input_ids, token_type_ids).reshape(b * t, -1))  # as `NasBertModel.forward`
        states = [x.view(b, t, -1)]
        for i, block in enumerate(m.blocks):
            if i:
                x = m.boundaries[i - 1](x)
            x = block(x, mask)
            states.append(x.view(b, t, -1))
        out = m.head(x).view(b, t, -1)
        states[-1] = out
        return BaseModelOutput(last_hidden_state=out, hidden_states=tuple(states))


def load_nasbert_teacher(path: str | os.PathLike[str]) -> Teacher:
    """The NAS-BERT folder at `path` (its encoder; a classifier's head is left out) as a `Teacher`, eval mode, fp32.
    `TeacherError` (one line) when it does not load or a block's width is not its output width."""
    from nasbert_deploy.model.modeling import NasBertModel

    p = Path(path)
    read_model_config(p, "teacher")
    try:
        model, info = NasBertModel.from_pretrained(str(p), local_files_only=True, output_loading_info=True)
    except Exception as exc:  # a foreign or broken folder: the user needs one line
        raise TeacherError(f"cannot load a NAS-BERT teacher from {p}: {type(exc).__name__}: {exc}") from exc
    if info.get("missing_keys"):
        raise TeacherError(f"NAS-BERT teacher {p} lacks encoder weights ({', '.join(sorted(info['missing_keys'])[:3])}, ...)")
    width = int(model.config.hidden_size)
    narrow = sorted({h for h in model.config.arch_obj.hiddens if h != width})
    if narrow:
        raise TeacherError(
            f"NAS-BERT teacher {p} has blocks of width {narrow}, not its output width {width}; a NAS-BERT teacher's "
            f"blocks must all run at its output width (a teacher converted by `finetune`, arch '{width}:mha,ffn|...')"
        )
    return Teacher(model=NasBertTeacher(model.float().eval()).eval(), tokenizer=load_tokenizer(p), path=p)


def load_any_teacher(path: str | os.PathLike[str] | None) -> Teacher:
    """`load_nasbert_teacher` for a NAS-BERT folder, `teacher.load_teacher` for anything else (None: the default)."""
    if path is not None and is_nasbert(read_model_config(path, "teacher")):
        return load_nasbert_teacher(path)
    return load_teacher(path)
