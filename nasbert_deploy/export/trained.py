"""`export --model DIR`: a trained NAS-BERT folder through the same export as a searched architecture.

`distill` writes an encoder, `finetune` and `finetune-teacher` write sequence classifiers; all three are
transformers folders with weights as safetensors. A plain BERT encoder (the teacher, `truncate`'s baseline, any
local BERT without a task head) is taken too: it is converted exactly into a NAS-BERT encoder
(`model.etd.convert_teacher`, the conversion `finetune-teacher` uses). `load_trained` checks such a folder before
any work and loads it, so `export_model` writes, validates and measures it as it does a model cut from the supernet:
ONNX (`last_hidden_state` for an encoder, `logits` for a classifier), OpenVINO IR, INT8, the numeric
validation against PyTorch on a grid of shapes, latency (predicted where the device has a table for the
model's space) and memory, report and model card.

    model, weights, tokenizer = load_trained(Path("out/student-ft"))
    export_model(model, "out/student-ft-export", tokenizer, load_device("cpu-ort"), ExportOptions(int8=True), weights)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nasbert_deploy.errors import ExportError, TeacherError

TRAINING_REPORTS = ("distill_report.json", "finetune_report.json")  # what `distill` / `finetune*` leave beside the weights
_VALID = ("a NAS-BERT folder that `distill` (an encoder), `finetune` or `finetune-teacher` (a classifier) wrote, or a "
          "plain BERT encoder (converted exactly)")


def check_trained_folder(path: Path) -> str:
    """Cheap, before any work: `path` holds a NAS-BERT encoder or sequence classifier, or a plain BERT encoder
    (converted exactly on loading), with its weights as safetensors.

    Returns 'encoder' or 'classifier'; `ExportError` (one line saying what is valid) otherwise."""
    from nasbert_deploy.teacher import read_model_config, task_head

    config = read_model_config(path, "--model", ExportError)
    head = task_head(config)
    kind = head or str(config["model_type"])
    if config["model_type"] == "bert" and head and head.endswith("ForSequenceClassification"):
        raise ExportError(f"--model {path} holds a {head} ([CLS] pooler, as `finetune --pooling cls` trains it), which "
                          f"`export --model` does not export; fine-tune the encoder with `finetune`'s default pooling "
                          f"(the students' mean-pooling head) instead; valid: {_VALID}")
    if config["model_type"] not in ("nasbert", "bert"):
        raise ExportError(f"--model {path} holds a {kind} (model_type {config['model_type']!r}); valid: {_VALID}")
    if head and not head.endswith("ForSequenceClassification"):
        raise ExportError(f"--model {path} is an extractive QA model ({head}), which `export --model` does not "
                          f"export; valid: {_VALID}")
    if not (path / "model.safetensors").is_file():
        raise ExportError(f"--model {path} has no model.safetensors (weights are read as safetensors only); valid: {_VALID}")
    return "classifier" if head else "encoder"


def training_summary(path: Path) -> dict[str, Any]:
    """What the training reports in `path` say about how the weights were made (their scalar entries and config)."""
    out: dict[str, Any] = {}
    for name in TRAINING_REPORTS:
        try:
            report = json.loads((path / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(report, dict):
            keep = {k: v for k, v in report.items() if isinstance(v, str | int | float | bool) or v is None}
            if isinstance(report.get("config"), dict):
                keep["config"] = report["config"]
            if isinstance(report.get("best"), dict):
                keep["best"] = {k: v for k, v in report["best"].items() if isinstance(v, str | int | float | bool)}
            out[name] = keep
    return out


def _converted_bert(path: Path) -> Any:
    """The BERT encoder in `path` as a `NasBertModel` with the same outputs (`model.etd.convert_teacher`)."""
    from nasbert_deploy.model.etd import convert_teacher_folder

    return convert_teacher_folder(path).eval()


def load_trained(path: Path, tokenizer: Path | None = None) -> tuple[Any, dict[str, Any], Any]:
    """(model, weights info for the report, tokenizer) of the trained folder `path`; the tokenizer is `tokenizer`
    or the folder's own. Raises `ExportError` / `TeacherError` with one line."""
    from nasbert_deploy.export.pipeline import load_export_tokenizer
    from nasbert_deploy.model.modeling import NasBertForSequenceClassification, NasBertModel
    from nasbert_deploy.teacher import read_model_config

    kind = check_trained_folder(path)
    bert = read_model_config(path, "--model", ExportError)["model_type"] == "bert"
    cls = NasBertForSequenceClassification if kind == "classifier" else NasBertModel
    try:
        model = _converted_bert(path) if bert else cls.from_pretrained(str(path), local_files_only=True,
                                                                       use_safetensors=True).eval()
    except TeacherError as exc:  # a BERT geometry the conversion does not cover
        raise ExportError(f"--model {path}: {exc}") from None
    except Exception as exc:  # damaged weights or a config that does not match them: one line
        raise ExportError(f"cannot load the {kind} in {path}: {type(exc).__name__}: {exc}") from None
    has_tokenizer = any((path / f).is_file() for f in ("tokenizer.json", "vocab.txt"))
    if tokenizer is None and not has_tokenizer:
        raise ExportError(f"--model {path} has no tokenizer files (tokenizer.json or vocab.txt); pass --tokenizer DIR")
    tok = load_export_tokenizer(tokenizer or path, model.config.search_space)
    weights: dict[str, Any] = {"init": "trained", "model": str(path), "kind": kind, "training": training_summary(path),
                               **({"converted_from": "bert"} if bert else {})}
    if kind == "classifier":
        weights["labels"] = [model.config.id2label[i] for i in range(model.config.num_labels)]
    return model, weights, tok
