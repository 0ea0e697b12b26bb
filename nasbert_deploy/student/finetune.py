"""Fine-tuning on a labelled task, task distillation from a fine-tuned teacher, and evaluation.

The training loop, its loss and its torchrun support are `student.task_training.train_classifier`;
here: loading models and teachers, the teacher's logits, and scoring. Any local HF encoder works
(`finetune_teacher` uses the same loop with `AutoModelForSequenceClassification`); the label maps are
stored in the config (`id2label`, `label2id`). Runs resume from `<out>.ckpt/`.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nasbert_deploy.errors import CorpusError, TaskError, TeacherError
from nasbert_deploy.model.loop import NoteFn, ProgressFn
from nasbert_deploy.student.embeddings import RUNTIME_DEVICES
from nasbert_deploy.student.metrics import EvalReport, evaluate_logits
from nasbert_deploy.student.task_training import (
    FinetuneConfig,
    fit_max_len,
    model_labels,
    predict_logits,
    sharded_logits,
    train_classifier,
)
from nasbert_deploy.student.tasks import TaskData, iter_batches, label_maps, sort_labels

POOLINGS = ("auto", "cls", "mean")


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide 'newly initialized classifier' notices: a fresh head is the point of fine-tuning."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def load_classifier(model_dir: str | Path, labels: list[str] | None = None) -> tuple[Any, Any]:
    """(sequence classifier, tokenizer) from a local HF folder; a fresh head for `labels` when given."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from nasbert_deploy.model import modeling  # noqa: F401  (registers model_type "nasbert" with the Auto classes)
    from nasbert_deploy.model.pruned_bert import register

    register()  # model_type "pruned_bert" (`nasbert-deploy prune` outputs)
    p = Path(model_dir)
    check_model_folder(p, classifier=labels is None)
    kwargs: dict[str, Any] = {}
    if labels is not None:
        id2label, label2id = label_maps(labels)
        kwargs = {"num_labels": len(labels), "id2label": id2label, "label2id": label2id, "ignore_mismatched_sizes": True}
    try:
        with _quiet_transformers():
            model = AutoModelForSequenceClassification.from_pretrained(str(p), local_files_only=True, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    except Exception as exc:  # a foreign or damaged folder: transformers raises many kinds; the user needs one line
        raise TaskError(f"cannot load a model with its tokenizer from {p}: {type(exc).__name__}: {exc}") from exc
    return model, tokenizer


def check_model_folder(path: str | Path, classifier: bool = False, option: str = "--model") -> None:
    """Cheap, before any work: `path` is a model folder (`teacher.read_model_config`) and, with `classifier`,
    a fine-tuned sequence classifier rather than a bare encoder. `TaskError` saying what to pass instead."""
    from nasbert_deploy.teacher import is_classifier, read_model_config

    config = read_model_config(path, option, TaskError)
    if classifier and not is_classifier(config):
        kind = ", ".join(map(str, config.get("architectures") or [])) or config["model_type"]
        raise TaskError(f"{option} {path} is not a classifier (it holds a {kind}, no trained classification head); "
                        "fine-tune it first with `nasbert-deploy finetune` or `finetune-teacher`, or score its frozen "
                        "embeddings with `evaluate --train FILE`")


def finetune(
    model_dir: str | Path,
    train: TaskData,
    valid: TaskData,
    out_dir: str | Path,
    cfg: FinetuneConfig,
    teacher_model: str | Path | None = None,
    progress: ProgressFn | None = None,
    note: NoteFn | None = None,
    device: str = "cpu",
    transfer: Sequence[str] | None = None,
    pooling: str = "auto",
    head_from_teacher: bool = False,
) -> dict[str, Any]:
    """Fine-tune the encoder in `model_dir` (e.g. a distilled NAS-BERT folder); with `teacher_model`
    (a fine-tuned classifier folder) add the KD term (`cfg.kd`) and use the teacher's label order. `device`: where
    teacher, student and batches go; under torchrun each rank computes the teacher logits of its share of the
    rows and all ranks gather them (`task_training.sharded_logits`).

    `transfer`: unlabelled texts (a transfer set, `transfer_texts`) the teacher labels; they join every epoch
    with the KD term as their only loss. Needs `teacher_model` and a single-text task.

    `pooling` (`fresh_classifier`): a plain BERT encoder (e.g. `truncate`'s baseline) is converted exactly under
    the students' mean-pooling head by default, so it trains, scores and exports as the students do; NAS-BERT and
    pruned models keep their own head.

    `head_from_teacher`: start the classifier from the teacher's own (a mean-pooled NAS-BERT teacher of the
    student's width: after task-specific distillation the student's pooled output approximates the teacher's)."""
    check_model_folder(model_dir)
    check_pooling(pooling, Path(model_dir))
    if head_from_teacher and teacher_model is None:
        raise TaskError("--head-from-teacher starts the classifier from the teacher's: give --teacher-model")
    if teacher_model is not None:
        check_model_folder(teacher_model, classifier=True, option="--teacher-model")
    if transfer is not None and (teacher_model is None or train.pairs is not None):
        raise TaskError("a transfer set (--transfer) needs --teacher-model to label it, and a single-text task"
                        + ("" if teacher_model is None else f" ({train.source} has text pairs)"))
    labels = sort_labels(set(train.labels) | set(valid.labels))
    t_logits, extra = None, None
    if teacher_model is not None:
        teacher, t_tok = load_classifier(teacher_model)
        head = teacher_head(teacher, Path(teacher_model), Path(model_dir), pooling) if head_from_teacher else None
        labels = model_labels(teacher)
        train.label_ids({n: i for i, n in enumerate(labels)})  # raises if the teacher lacks a label
        teacher.to(device)
        t_logits = teacher_logits(teacher_model, teacher, t_tok, train, cfg.max_len, note)
        if transfer is not None:
            rows = TaskData(tuple(transfer), ("",) * len(transfer), None, "transfer")
            extra = (rows, teacher_logits(teacher_model, teacher, t_tok, rows, cfg.max_len, note))
        del teacher
    torch.manual_seed(cfg.seed)  # the fresh classifier head is drawn from the seeded generator
    model, tokenizer, pooling = fresh_classifier(Path(model_dir), labels, cfg, pooling, note, own_head_first=True)
    if head_from_teacher:
        if type(model).__name__ != "NasBertForSequenceClassification":  # e.g. a BERT folder with its own [CLS] head
            raise TaskError(f"--head-from-teacher: {model_dir} keeps its own {type(model).__name__} head, not the "
                            "students' mean-pooling one the teacher's head reads")
        model.classifier.load_state_dict(head)
        if note is not None:
            note("classifier head: the teacher's (--head-from-teacher)")
    key = {"model": str(model_dir), "task": train.source, "teacher_model": None if teacher_model is None else str(teacher_model),
           **({"pooling": pooling} if pooling == "mean" else {}),  # a student's key is the one it had before --pooling
           **({"head": "teacher"} if head_from_teacher else {})}
    return train_classifier(model, tokenizer, train, valid, out_dir, cfg, t_logits, progress, key, note, device, extra)


def teacher_head(teacher: Any, teacher_dir: Path, model_dir: Path, pooling: str) -> dict[str, torch.Tensor]:
    """The teacher's classifier weights for `--head-from-teacher`, checked before any long work: the teacher is a
    mean-pooled NAS-BERT classifier (what `finetune-teacher` writes) and the student pools its output the same way
    at the same width (a NAS-BERT student, or a BERT encoder under the mean-pooling head). `TaskError` otherwise."""
    from nasbert_deploy.teacher import is_nasbert, read_model_config

    student = read_model_config(model_dir)
    lin = getattr(teacher, "classifier", None)
    why = ""
    if not is_nasbert(teacher.config.to_dict()) or not isinstance(lin, torch.nn.Linear):
        why = f"the teacher {teacher_dir} is not a mean-pooled NAS-BERT classifier (`finetune-teacher` writes one)"
    elif not (is_nasbert(student) or pooling == "mean" or (pooling == "auto" and resolve_pooling(model_dir) == "mean")):
        why = f"the student {model_dir} does not mean-pool its output (a NAS-BERT student or a BERT encoder does)"
    elif student.get("hidden_size") != lin.in_features:
        why = f"the student's output width {student.get('hidden_size')} is not the teacher's {lin.in_features}"
    if why:
        raise TaskError(f"--head-from-teacher: {why}")
    return {k: v.detach().clone() for k, v in lin.state_dict().items()}


def teacher_logits(folder: str | Path, teacher: Any, tokenizer: Any, rows: TaskData, max_len: int,
                   note: NoteFn | None = None) -> np.ndarray:
    """The teacher's logits on `rows` (`student.teacher_logits` cache; computed sharded under torchrun, with a
    note every tenth of the rows when there are many)."""
    from nasbert_deploy.model.distributed import world_info
    from nasbert_deploy.student.teacher_logits import cached_logits

    said = {0}  # the tenths already reported

    def progress(done: int, total: int) -> None:
        tenth = done * 10 // total
        if note is not None and total >= 2000 and tenth not in said:
            said.add(tenth)
            note(f"teacher logits: {done:,}/{total:,} rows of {Path(rows.source).name or 'the task'}")

    def compute() -> np.ndarray:
        return sharded_logits(teacher, tokenizer, rows, max_len=max_len, progress=progress)

    return cached_logits(folder, rows, max_len, compute, note=note, write=world_info()[0] == 0)


def transfer_texts(path: str | Path, train: TaskData, valid: TaskData, limit: int = 0, seed: int = 0) -> list[str]:
    """The transfer set in `path` (UTF-8 text, one paragraph per line): distinct lines that are not a text of
    `train` or `valid` (compared after lower-casing and dropping punctuation, so the validation score is not
    inflated), then `limit` of them drawn with `seed` (0: all). `CorpusError` for an empty, binary or missing file,
    `TaskError` when nothing is left."""
    import random
    import re

    from nasbert_deploy.fileio import read_input_lines

    def norm(text: str) -> str:
        return re.sub(r"[^0-9a-z]+", " ", text.lower()).strip()

    seen = {norm(t) for t in train.texts + valid.texts}
    texts = [t for t in dict.fromkeys(read_input_lines(path, "transfer set", CorpusError)) if norm(t) not in seen]
    if not texts:
        raise TaskError(f"--transfer {path}: every line is a text of the task itself; give other in-domain text")
    if 0 < limit < len(texts):
        texts = [texts[i] for i in sorted(random.Random(seed).sample(range(len(texts)), limit))]
    return texts


def finetune_teacher(
    teacher: str | Path | None,
    train: TaskData,
    valid: TaskData,
    out_dir: str | Path,
    cfg: FinetuneConfig,
    progress: ProgressFn | None = None,
    note: NoteFn | None = None,
    pooling: str = "auto",
    device: str = "cpu",
) -> dict[str, Any]:
    """Fine-tune a teacher encoder (`None` = the offline MiniLM) as a sequence classifier on `train`.

    `pooling="auto"` (`resolve_pooling`): "mean" for BERT encoders, "cls" for the rest.

    `pooling="cls"`: the encoder's own sequence-classification class (BERT: pooler over [CLS]).
    `pooling="mean"`: the teacher converted exactly into a NAS-BERT model (`model.etd.convert_teacher`) under
    the mean-pooling classifier the students use; right for sentence encoders trained with mean pooling.
    `device` and torchrun: as `finetune`."""
    from nasbert_deploy.teacher import resolve_teacher_path

    path = resolve_teacher_path(teacher)
    check_pooling(pooling, path)
    labels = sort_labels(set(train.labels) | set(valid.labels))
    torch.manual_seed(cfg.seed)
    model, tokenizer, pooling = fresh_classifier(path, labels, cfg, pooling, note)
    key = {"model": str(path), "task": train.source, "teacher_model": None, "pooling": pooling}
    return train_classifier(model, tokenizer, train, valid, out_dir, cfg, None, progress, key, note, device)


def check_pooling(pooling: str, path: Path) -> None:
    """Cheap, before any work: `pooling` is one of `POOLINGS`, and "mean" is asked of a BERT encoder only."""
    from nasbert_deploy.teacher import read_model_config

    if pooling not in POOLINGS:
        raise TaskError(f"unknown pooling {pooling!r}; valid: {', '.join(POOLINGS)}")
    model_type = read_model_config(path).get("model_type")
    if pooling == "mean" and model_type != "bert":
        raise TaskError(f"--pooling mean converts a BERT encoder; {path} holds a {model_type} (valid for it: auto, cls)")


def resolve_pooling(path: Path) -> str:
    """"mean" for a BERT encoder (`model_type` bert: converts exactly; measured ahead of the [CLS] pooler and of
    the frozen probe on both classification tasks, docs/quality.md), "cls" for any other encoder."""
    from nasbert_deploy.teacher import read_model_config

    return "mean" if read_model_config(path).get("model_type") == "bert" else "cls"


def fresh_classifier(path: Path, labels: list[str], cfg: FinetuneConfig, pooling: str, note: NoteFn | None = None,
                     own_head_first: bool = False) -> tuple[Any, Any, str]:
    """(classifier with a fresh head for `labels`, tokenizer, the pooling used) over the encoder at `path`.

    "cls": the folder's own sequence-classification class (BERT: pooler over [CLS]; NAS-BERT and pruned models:
    their mean-pooling head). "mean": the BERT encoder converted exactly under the students' mean-pooling head
    (`mean_pooled_teacher`). "auto": `resolve_pooling`, falling back to "cls" (with a note saying why) for a BERT
    geometry the conversion does not cover. `own_head_first`: with "auto", a folder that already holds a task
    head keeps its own class (`finetune` of a fine-tuned BERT classifier trains the head it has)."""
    from nasbert_deploy.teacher import read_model_config, task_head

    why = ""
    if pooling == "auto":
        pooling, why = resolve_pooling(path), "not a BERT encoder"
        if pooling == "mean" and own_head_first and task_head(read_model_config(path)):
            pooling, why = "cls", "the folder has its own task head"
        elif pooling == "cls" and own_head_first:
            why = ""  # a NAS-BERT or pruned student: its own head, as always
        if pooling == "mean":
            try:
                model, tokenizer = mean_pooled_teacher(path, labels, cfg)
                why = "a BERT encoder, converted exactly"
            except TeacherError as exc:  # a BERT geometry the conversion does not cover
                pooling, why = "cls", str(exc)
    elif pooling == "mean":
        model, tokenizer = mean_pooled_teacher(path, labels, cfg)
    if pooling == "cls":
        model, tokenizer = load_classifier(path, labels)
    if why and note is not None:
        note(f"pooling: {pooling} (auto: {why})")
    return model, tokenizer, pooling


def mean_pooled_teacher(path: Path, labels: list[str], cfg: FinetuneConfig) -> tuple[Any, Any]:
    """The teacher at `path` as a `NasBertForSequenceClassification` (mean pooling) with a fresh head for `labels`."""
    from nasbert_deploy.model.etd import convert_teacher
    from nasbert_deploy.model.modeling import NasBertConfig, NasBertForSequenceClassification
    from nasbert_deploy.teacher import load_teacher

    t = load_teacher(path)
    encoder = convert_teacher(t.model)
    id2label, label2id = label_maps(labels)
    dropout = float(getattr(t.model.config, "hidden_dropout_prob", 0.1))
    config = NasBertConfig(arch=encoder.config.arch, space=encoder.config.space, hidden_dropout_prob=dropout,
                           identity_projections=encoder.config.identity_projections,
                           num_labels=len(labels), id2label=id2label, label2id=label2id)
    model = NasBertForSequenceClassification(config)
    model.nasbert.load_state_dict(encoder.state_dict())
    return model, t.tokenizer


def int8_artefact(model_dir: str | Path | None, runtime: str) -> Path:
    """The INT8 file of export folder `model_dir` that `runtime` ('onnxruntime-int8' | 'openvino-int8') runs;
    `TaskError` saying how to make it when the folder has none."""
    from nasbert_deploy.runtimes.base import export_artefact

    kind = "onnx-int8" if runtime.startswith("onnxruntime") else "openvino-int8"
    path = export_artefact(model_dir or ".", kind)
    if model_dir is None or not path.is_file():
        raise TaskError(f"--runtime {runtime} runs the INT8 file of an export folder and {model_dir} has none ({path.name}); "
                        "write it with `nasbert-deploy export --model DIR --int8 --out EXPORT` and evaluate EXPORT")
    return path


def runtime_logits(
    model: Any, tokenizer: Any, task: TaskData, runtime: str, workdir: str | Path, batch_size: int = 64, max_len: int = 128,
    model_dir: str | Path | None = None,
) -> np.ndarray:
    """Logits (n, c) from the model exported to ONNX and run on `runtime` ('onnxruntime' | 'openvino'), fp32, CPU;
    'onnxruntime-int8' | 'openvino-int8' run the INT8 file of the export folder `model_dir` (`export --int8`)."""
    from nasbert_deploy.devices import load_device
    from nasbert_deploy.runtimes.base import get_runtime
    from nasbert_deploy.runtimes.convert import EXAMPLE_BATCH, EXAMPLE_SEQ, FirstOutput

    spec = load_device(RUNTIME_DEVICES[runtime])
    if runtime.endswith("-int8"):
        compiled = get_runtime(spec.runtime).load(int8_artefact(model_dir, runtime), spec)
        return np.concatenate([compiled.run({k: v.numpy() for k, v in batch.items()})[0]
                               for _, batch in iter_batches(tokenizer, task, batch_size, fit_max_len(model, max_len))])
    g = torch.Generator().manual_seed(0)
    shape = (EXAMPLE_BATCH, EXAMPLE_SEQ)
    example = {
        "input_ids": torch.randint(5, int(model.config.vocab_size), shape, generator=g),
        "attention_mask": torch.ones(shape, dtype=torch.long),
    }
    if task.pairs is not None:
        example["token_type_ids"] = torch.zeros(shape, dtype=torch.long)
    compiled = get_runtime(runtime).compile(FirstOutput(model.eval()), example, ["logits"], spec, Path(workdir))
    out = []
    for _, batch in iter_batches(tokenizer, task, batch_size, fit_max_len(model, max_len)):
        out.append(compiled.run({k: v.numpy() for k, v in batch.items()})[0])
    return np.concatenate(out)


def evaluate(
    model_dir: str | Path,
    task: TaskData,
    teacher_model: str | Path | None = None,
    runtime: str = "torch",
    batch_size: int = 64,
    max_len: int = 128,
) -> dict[str, Any]:
    """Accuracy, macro-F1 and (with a teacher classifier) label/probability loyalty of `model_dir` on `task`.

    With `runtime` 'onnxruntime' or 'openvino' the scores come from the exported model ('onnxruntime-int8' /
    'openvino-int8': the INT8 file of the export folder `model_dir`, `export --model DIR --int8`); the report
    then also holds the largest absolute logit difference and the prediction agreement vs PyTorch.
    """
    check_model_folder(model_dir, classifier=True)
    if teacher_model is not None:
        check_model_folder(teacher_model, classifier=True, option="--teacher-model")
    if runtime not in RUNTIME_DEVICES:
        raise TaskError(f"unknown runtime {runtime!r}; valid: {', '.join(RUNTIME_DEVICES)}")
    if runtime.endswith("-int8"):
        int8_artefact(model_dir, runtime)  # before any work
    model, tokenizer = load_classifier(model_dir)
    labels = model_labels(model)
    y = task.label_ids({n: i for i, n in enumerate(labels)})
    logits = predict_logits(model, tokenizer, task, batch_size, max_len)
    extra: dict[str, Any] = {"runtime": runtime, "labels": labels}
    if runtime != "torch":
        with tempfile.TemporaryDirectory(prefix="nasbert-eval-") as work:
            rt_logits = runtime_logits(model, tokenizer, task, runtime, work, batch_size, max_len, model_dir)
        extra["max_abs_logit_diff_vs_torch"] = float(np.abs(rt_logits - logits).max())
        extra["prediction_agreement_vs_torch"] = float((rt_logits.argmax(1) == logits.argmax(1)).mean())
        logits = rt_logits
    t_logits = None
    if teacher_model is not None:
        teacher, t_tok = load_classifier(teacher_model)
        t_labels = model_labels(teacher)
        if sorted(t_labels) != sorted(labels):
            raise TaskError(f"teacher labels {t_labels} differ from the model's {labels}; fine-tune both on the same task")
        t_logits = predict_logits(teacher, t_tok, task, batch_size, max_len)[:, [t_labels.index(n) for n in labels]]
    report: EvalReport = evaluate_logits(y, logits, t_logits)
    return {**report.to_dict(), **extra}
