"""Fine-tuning on a labelled task, task distillation from a fine-tuned teacher, and evaluation.

Loss with a teacher classifier (logits computed once per training row, teacher in eval mode):

    loss = (1 - lambda) * CE(student, gold) + lambda * tau^2 * KL(softmax(teacher / tau) || softmax(student / tau))

Without a teacher the loss is plain cross-entropy. The checkpoint with the best validation macro-F1
is kept. Any local HF encoder works (`finetune_teacher` uses the same loop with
`AutoModelForSequenceClassification`); the label maps are stored in the config (`id2label`, `label2id`).
Runs resume from `<out>.ckpt/`, written at every epoch end and on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import functools
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nasbert_deploy.errors import TaskError
from nasbert_deploy.fileio import atomic_dir, write_json_atomic
from nasbert_deploy.model.loop import (
    NoteFn,
    ProgressFn,
    checkpoint_dir,
    load_checkpoint,
    optimizer_state,
    restore_optimizer_state,
    run_steps,
    save_checkpoint,
    warmup_decay,
)
from nasbert_deploy.model.losses import kd_loss
from nasbert_deploy.model.remote_code import write_remote_code
from nasbert_deploy.student.metrics import EvalReport, evaluate_logits
from nasbert_deploy.student.tasks import TaskData, iter_batches, label_maps, sort_labels

REPORT_NAME = "finetune_report.json"


POOLINGS = ("cls", "mean")


@dataclass(frozen=True)
class FinetuneConfig:
    """Hyper-parameters; `lam` and `temperature` only matter with a teacher."""

    epochs: int = 3
    batch_size: int = 16
    max_len: int = 128
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    lam: float = 0.5
    temperature: float = 1.0
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def model_labels(model: Any) -> list[str]:
    """The model's label names in class-id order."""
    id2label = model.config.id2label
    return [str(id2label[i]) for i in range(len(id2label))]


@torch.no_grad()
def predict_logits(model: Any, tokenizer: Any, task: TaskData, batch_size: int = 64, max_len: int = 128) -> np.ndarray:
    """Logits (n, num_labels) float32 for every row of `task`, in order (PyTorch, eval mode)."""
    was_training = model.training
    model.eval()
    max_len = fit_max_len(model, max_len)
    out = [model(**batch).logits.float().numpy() for _, batch in iter_batches(tokenizer, task, batch_size, max_len)]
    model.train(was_training)
    return np.concatenate(out)


def fit_max_len(model: Any, max_len: int) -> int:
    """`max_len` capped at the model's position table (tokens beyond it have no position embedding)."""
    return min(max_len, int(getattr(model.config, "max_position_embeddings", max_len) or max_len))


def train_classifier(
    model: Any,
    tokenizer: Any,
    train: TaskData,
    valid: TaskData,
    out_dir: str | Path,
    cfg: FinetuneConfig,
    teacher_logits: np.ndarray | None = None,
    progress: ProgressFn | None = None,
    run_key: dict[str, Any] | None = None,
    note: NoteFn | None = None,
) -> dict[str, Any]:
    """Train `model` (labels from its config) on `train`, keep the best validation macro-F1, write `out_dir`.

    `teacher_logits` (len(train), num_labels) switch on task distillation. Resumes from `<out_dir>.ckpt/`
    (saying so through `note`). Returns the report dict.
    """
    labels = model_labels(model)
    label2id = {n: i for i, n in enumerate(labels)}
    y_train = torch.tensor(train.label_ids(label2id))
    y_valid = valid.label_ids(label2id)
    t_logits = None if teacher_logits is None else torch.as_tensor(teacher_logits, dtype=torch.float32)
    lam = cfg.lam if t_logits is not None else 0.0
    max_len = fit_max_len(model, cfg.max_len)
    spe = -(-len(train) // cfg.batch_size)  # steps per epoch
    total = cfg.epochs * spe
    torch.manual_seed(cfg.seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = warmup_decay(opt, cfg.warmup_fraction, total)
    out = Path(out_dir)
    ckpt = checkpoint_dir(out)
    key = {"kind": "finetune", "config": cfg.to_dict(), "rows": len(train), "labels": labels, **(run_key or {})}
    start, history, best, elapsed = 0, [], {"macro_f1": -1.0, "epoch": 0}, 0.0
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    loaded = load_checkpoint(ckpt, key)
    if loaded is not None:  # state: `epoch` evaluated epochs, then `done` batches (== spe: evaluation pending)
        model.load_state_dict({k[4:]: v for k, v in loaded.tensors.items() if k.startswith("cur.")})
        best_state = {k[5:]: v for k, v in loaded.tensors.items() if k.startswith("best.")}
        restore_optimizer_state(opt, sched, loaded.saved)
        st = loaded.state
        start, history, best, elapsed = st["epoch"] * spe + st["done"], st["history"], st["best"], st["elapsed_s"]
    t0 = time.perf_counter() - elapsed

    @functools.lru_cache(maxsize=1)
    def epoch_order(epoch: int) -> list[int]:
        order = list(range(len(train)))
        random.Random(cfg.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def train_step(step: int) -> dict[str, float]:
        epoch, pos = divmod(step, spe)
        rows = epoch_order(epoch)[pos * cfg.batch_size : (pos + 1) * cfg.batch_size]
        idx, batch = next(iter_batches(tokenizer, train, cfg.batch_size, max_len, rows))
        logits = model(**batch).logits
        loss = nn.functional.cross_entropy(logits, y_train[idx])
        if lam:
            loss = (1 - lam) * loss + lam * kd_loss(logits, t_logits[idx], cfg.temperature)  # type: ignore[index]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        return {"loss": float(loss.detach())}

    def end_epoch(done: int) -> None:  # after `done` steps: evaluate an epoch that ended and is not evaluated yet
        nonlocal best, best_state
        if done % spe or len(history) == done // spe:
            return
        scores = evaluate_logits(y_valid, predict_logits(model, tokenizer, valid, max_len=max_len))
        if scores.macro_f1 > best["macro_f1"]:
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            best = {"macro_f1": scores.macro_f1, "accuracy": scores.accuracy, "epoch": done // spe}
        history.append({"epoch": done // spe, "valid_accuracy": scores.accuracy, "valid_macro_f1": scores.macro_f1})

    def save(done: int) -> None:
        tensors = {f"cur.{k}": v for k, v in model.state_dict().items()}
        tensors.update({f"best.{k}": v for k, v in best_state.items()})
        epoch, elapsed_s = len(history), time.perf_counter() - t0
        state = {"epoch": epoch, "done": done - epoch * spe, "history": history, "best": best, "elapsed_s": elapsed_s}
        save_checkpoint(ckpt, key, tensors, optimizer_state(opt, sched), state)

    model.train()
    end_epoch(start)  # an interrupted run may have stopped before evaluating its last epoch
    run_steps(start, total, train_step, save, checkpoint_every=spe, after_step=end_epoch, progress=progress, note=note)
    elapsed = time.perf_counter() - t0
    model.load_state_dict(best_state)
    model.eval()
    report = {
        "labels": labels,
        "train_rows": len(train),
        "valid_rows": len(valid),
        "config": cfg.to_dict(),
        "distilled_from_teacher": t_logits is not None,
        "train_s": round(elapsed, 2),
        "best": best,
        "history": history,
        **(run_key or {}),
    }
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if getattr(model.config, "model_type", "") == "nasbert":
            write_remote_code(tmp)  # loads with trust_remote_code=True where nasbert-deploy is not installed
        write_json_atomic(tmp / REPORT_NAME, report)
    shutil.rmtree(ckpt, ignore_errors=True)
    return report


def finetune(
    model_dir: str | Path,
    train: TaskData,
    valid: TaskData,
    out_dir: str | Path,
    cfg: FinetuneConfig,
    teacher_model: str | Path | None = None,
    progress: ProgressFn | None = None,
    note: NoteFn | None = None,
) -> dict[str, Any]:
    """Fine-tune the encoder in `model_dir` (e.g. a distilled NAS-BERT folder); with `teacher_model`
    (a fine-tuned classifier folder) add the KL term and use the teacher's label order."""
    check_model_folder(model_dir)
    if teacher_model is not None:
        check_model_folder(teacher_model, classifier=True, option="--teacher-model")
    labels = sort_labels(set(train.labels) | set(valid.labels))
    t_logits = None
    if teacher_model is not None:
        teacher, t_tok = load_classifier(teacher_model)
        labels = model_labels(teacher)
        train.label_ids({n: i for i, n in enumerate(labels)})  # raises if the teacher lacks a label
        t_logits = predict_logits(teacher, t_tok, train, max_len=cfg.max_len)
    torch.manual_seed(cfg.seed)  # the fresh classifier head is drawn from the seeded generator
    model, tokenizer = load_classifier(model_dir, labels)
    key = {"model": str(model_dir), "task": train.source, "teacher_model": None if teacher_model is None else str(teacher_model)}
    return train_classifier(model, tokenizer, train, valid, out_dir, cfg, t_logits, progress, key, note)


def finetune_teacher(
    teacher: str | Path | None,
    train: TaskData,
    valid: TaskData,
    out_dir: str | Path,
    cfg: FinetuneConfig,
    progress: ProgressFn | None = None,
    note: NoteFn | None = None,
    pooling: str = "cls",
) -> dict[str, Any]:
    """Fine-tune a teacher encoder (`None` = the offline MiniLM) as a sequence classifier on `train`.

    `pooling="cls"`: the encoder's own sequence-classification class (BERT: pooler over [CLS]).
    `pooling="mean"`: the teacher converted exactly into a NAS-BERT model (`model.etd.convert_teacher`) under
    the mean-pooling classifier the students use; right for sentence encoders trained with mean pooling."""
    from nasbert_deploy.teacher import resolve_teacher_path

    if pooling not in POOLINGS:
        raise TaskError(f"unknown pooling {pooling!r}; valid: {', '.join(POOLINGS)}")
    path = resolve_teacher_path(teacher)
    labels = sort_labels(set(train.labels) | set(valid.labels))
    torch.manual_seed(cfg.seed)
    if pooling == "mean":
        model, tokenizer = mean_pooled_teacher(path, labels, cfg)
    else:
        model, tokenizer = load_classifier(path, labels)
    key = {"model": str(path), "task": train.source, "teacher_model": None, "pooling": pooling}
    return train_classifier(model, tokenizer, train, valid, out_dir, cfg, None, progress, key, note)


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
                           num_labels=len(labels), id2label=id2label, label2id=label2id)
    model = NasBertForSequenceClassification(config)
    model.nasbert.load_state_dict(encoder.state_dict())
    return model, t.tokenizer


def runtime_logits(
    model: Any, tokenizer: Any, task: TaskData, runtime: str, workdir: str | Path, batch_size: int = 64, max_len: int = 128
) -> np.ndarray:
    """Logits (n, c) from the model exported to ONNX and run on `runtime` ('onnxruntime' | 'openvino'), fp32, CPU."""
    from nasbert_deploy.devices import load_device
    from nasbert_deploy.runtimes.base import get_runtime
    from nasbert_deploy.runtimes.convert import EXAMPLE_BATCH, EXAMPLE_SEQ, FirstOutput

    spec = load_device({"onnxruntime": "cpu-ort", "openvino": "cpu-openvino"}[runtime])
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

    With `runtime` 'onnxruntime' or 'openvino' the scores come from the exported model; the report
    then also holds the largest absolute logit difference and the prediction agreement vs PyTorch.
    """
    check_model_folder(model_dir, classifier=True)
    if teacher_model is not None:
        check_model_folder(teacher_model, classifier=True, option="--teacher-model")
    model, tokenizer = load_classifier(model_dir)
    labels = model_labels(model)
    y = task.label_ids({n: i for i, n in enumerate(labels)})
    logits = predict_logits(model, tokenizer, task, batch_size, max_len)
    extra: dict[str, Any] = {"runtime": runtime, "labels": labels}
    if runtime != "torch":
        with tempfile.TemporaryDirectory(prefix="nasbert-eval-") as work:
            rt_logits = runtime_logits(model, tokenizer, task, runtime, work, batch_size, max_len)
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
