"""Extractive QA models: loading (any BERT-family encoder with `AutoModelForQuestionAnswering`, and pruned ones),
logits, fine-tuning with optional distillation from a QA teacher, scoring with the official SQuAD metrics.

Loss per window: `(1 - lam) * (CE(start) + CE(end)) / 2 + lam * tau^2 * (KL(start) + KL(end)) / 2`, the KL
against the teacher's start/end distributions over the window's real tokens (padding masked out). The best
epoch by validation F1 is kept. Resumes from `<out>.ckpt/` (`model.loop`), saying so.
"""

from __future__ import annotations

import shutil
import time
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
    epoch_order,
    kept_tensors,
    load_checkpoint,
    optimizer_state,
    restore_kept,
    restore_optimizer_state,
    run_steps,
    save_checkpoint,
    warmup_decay,
)
from nasbert_deploy.model.losses import soft_kl
from nasbert_deploy.qa.features import MASKED, QAFeatures, answers_from_logits, featurize
from nasbert_deploy.qa.metrics import answer_loyalty, span_probability_loyalty, squad_scores
from nasbert_deploy.qa.squad import QAData
from nasbert_deploy.student.task_training import KD_LOSSES, FinetuneConfig

REPORT_NAME = "finetune_report.json"


def is_qa_config(config: dict[str, Any]) -> bool:
    """Whether a saved config is an extractive QA model (a trained start/end head): `teacher.is_qa`."""
    from nasbert_deploy.teacher import is_qa

    return is_qa(config)


def check_qa_folder(path: str | Path, trained: bool = True, option: str = "--model") -> dict[str, Any]:
    """Cheap: `path` is a model folder and, with `trained`, a QA model; `TaskError` saying what to pass instead."""
    from nasbert_deploy.teacher import read_model_config

    config = read_model_config(path, option, TaskError)
    if trained and not is_qa_config(config):
        kind = ", ".join(map(str, config.get("architectures") or [])) or config.get("model_type")
        raise TaskError(f"{option} {path} holds a {kind}, not an extractive question-answering model; for a SQuAD task "
                        "fine-tune one first: `nasbert-deploy finetune-teacher --task FILE.json`")
    if config.get("model_type") == "nasbert":
        raise TaskError(f"{option} {path} is a NAS-BERT model; question answering takes BERT-family encoders "
                        "(BERT, RoBERTa, MiniLM, pruned BERT) for now")
    return config


def load_qa(model_dir: str | Path, fresh_head: bool = False) -> tuple[Any, Any]:
    """(QA model, fast tokenizer) from a local folder; an encoder gets a fresh start/end head with `fresh_head`."""
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    from nasbert_deploy.model.pruned_bert import register
    from nasbert_deploy.student.finetune import _quiet_transformers

    register()
    check_qa_folder(model_dir, trained=not fresh_head)
    try:
        with _quiet_transformers():
            model = AutoModelForQuestionAnswering.from_pretrained(str(model_dir), local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True, use_fast=True)
    except Exception as exc:  # transformers raises many kinds for a foreign folder; the user needs one line
        raise TaskError(f"cannot load a question-answering model with its tokenizer from {model_dir}: "
                        f"{type(exc).__name__}: {exc}") from exc
    return model, tokenizer


@torch.no_grad()
def predict_spans(model: Any, feats: QAFeatures, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) logits (n, max_len) float32 of every window, padding set to `MASKED`."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    n, t = feats.input_ids.shape
    start, end = np.full((n, t), MASKED, np.float32), np.full((n, t), MASKED, np.float32)
    for i in range(0, n, batch_size):
        rows = np.arange(i, min(n, i + batch_size))
        batch = {k: torch.from_numpy(v).to(device) for k, v in feats.batch(rows).items()}
        out = model(**batch)
        w = batch["input_ids"].shape[1]
        m = feats.attention_mask[rows, :w].astype(bool)
        start[rows, :w] = np.where(m, out.start_logits.float().cpu().numpy(), MASKED)
        end[rows, :w] = np.where(m, out.end_logits.float().cpu().numpy(), MASKED)
    model.train(was)
    return start, end


def score(data: QAData, feats: QAFeatures, logits: tuple[np.ndarray, np.ndarray],
          teacher: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """Official SQuAD scores of (start, end) logits; with the teacher's logits also answer and span loyalty."""
    preds = answers_from_logits(data, feats, *logits)
    report: dict[str, Any] = squad_scores(data, preds)
    if teacher is not None:
        report.update(answer_loyalty(preds, answers_from_logits(data, feats, *teacher)))
        report["span_probability_loyalty"] = span_probability_loyalty(logits, teacher, feats.attention_mask)
    return report


def span_kd(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, tau: float, kd: str = "kl") -> torch.Tensor:
    """Distillation of one span end's (b, t) logits over the real tokens: tau^2 KL of the softened distributions
    (`kd` "kl") or the logits' mean squared difference ("mse", tau unused), averaged over the batch."""
    t = teacher[:, : student.shape[1]]
    if kd == "mse":
        m = mask.to(student.dtype)
        return ((student - t).pow(2) * m).sum(-1).div(m.sum(-1).clamp(min=1.0)).mean()
    if kd not in KD_LOSSES:
        raise ValueError(f"kd {kd!r}: valid: {', '.join(KD_LOSSES)}")
    return soft_kl(student.masked_fill(~mask, MASKED), t.masked_fill(~mask, MASKED), tau).mean()  # carries tau^2


def train_qa(model: Any, tokenizer: Any, train: QAData, valid: QAData, out_dir: str | Path, cfg: FinetuneConfig,
             teacher_logits: tuple[np.ndarray, np.ndarray] | None = None, progress: ProgressFn | None = None,
             run_key: dict[str, Any] | None = None, note: NoteFn | None = None, stride: int = 64,
             device: str = "cpu") -> dict[str, Any]:
    """Train `model` on `train`'s windows (on `device`), keep the best validation F1, write `out_dir` (HF folder +
    report)."""
    feats = featurize(tokenizer, train, cfg.max_len, stride)
    v_feats = featurize(tokenizer, valid, cfg.max_len, stride)
    t_start = t_end = None
    if teacher_logits is not None:
        t_start, t_end = (torch.from_numpy(x) for x in teacher_logits)
        if t_start.shape[0] != len(feats):
            raise ValueError(f"teacher logits for {t_start.shape[0]} windows, the training file has {len(feats)}")
    lam = cfg.lam if t_start is not None else 0.0
    spe = -(-len(feats) // cfg.batch_size)
    total = cfg.epochs * spe
    model.to(device)
    torch.manual_seed(cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = warmup_decay(opt, cfg.warmup_fraction, total)
    out, ckpt = Path(out_dir), checkpoint_dir(out_dir)
    key = {"kind": "finetune-qa", "config": cfg.to_dict(), "questions": len(train), "windows": len(feats),
           "stride": stride, **(run_key or {})}
    start, history, best, elapsed = 0, [], {"f1": -1.0, "epoch": 0}, 0.0
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    loaded = load_checkpoint(ckpt, key)
    if loaded is not None:
        best_state = restore_kept(model, loaded.tensors)
        restore_optimizer_state(opt, sched, loaded.saved)
        st = loaded.state
        start, history, best, elapsed = st["epoch"] * spe + st["done"], st["history"], st["best"], st["elapsed_s"]
    t0 = time.perf_counter() - elapsed

    def step_fn(step: int) -> dict[str, float]:
        epoch, pos = divmod(step, spe)
        rows = np.asarray(epoch_order(len(feats), cfg.seed, epoch)[pos * cfg.batch_size : (pos + 1) * cfg.batch_size])
        batch = {k: torch.from_numpy(v).to(device) for k, v in feats.batch(rows).items()}
        o = model(**batch)
        sp = torch.from_numpy(feats.start_positions[rows]).to(device)
        ep = torch.from_numpy(feats.end_positions[rows]).to(device)
        loss = (nn.functional.cross_entropy(o.start_logits, sp) + nn.functional.cross_entropy(o.end_logits, ep)) / 2
        if lam > 0:
            m = batch["attention_mask"].bool()
            r = torch.from_numpy(rows)
            kd = (span_kd(o.start_logits, t_start[r].to(device), m, cfg.temperature, cfg.kd)
                  + span_kd(o.end_logits, t_end[r].to(device), m, cfg.temperature, cfg.kd)) / 2
            loss = (1 - lam) * loss + lam * kd
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        return {"loss": float(loss.detach())}

    def end_epoch(done: int) -> None:
        nonlocal best, best_state
        if done % spe or len(history) == done // spe:
            return
        s = score(valid, v_feats, predict_spans(model, v_feats))
        if s["f1"] > best["f1"]:
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            best = {"f1": s["f1"], "exact": s["exact"], "epoch": done // spe}
        history.append({"epoch": done // spe, "valid_exact": s["exact"], "valid_f1": s["f1"]})
        model.train()

    def save(done: int) -> None:
        tensors = kept_tensors(model, best_state)
        state = {"epoch": len(history), "done": done - len(history) * spe, "history": history, "best": best,
                 "elapsed_s": time.perf_counter() - t0}
        save_checkpoint(ckpt, key, tensors, optimizer_state(opt, sched), state)

    model.train()
    end_epoch(start)
    run_steps(start, total, step_fn, save, checkpoint_every=min(spe, 200), after_step=end_epoch, progress=progress,
              note=note)
    model.load_state_dict(best_state)
    model.eval().to("cpu")
    report = {"task_kind": "extractive-qa", "squad_v2": train.version2, "train_rows": len(train),
              "train_windows": len(feats), "valid_rows": len(valid), "config": cfg.to_dict(),
              "distilled_from_teacher": t_start is not None, "device": device, "train_s": round(time.perf_counter() - t0, 2),
              "best": best, "history": history, **(run_key or {})}
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if getattr(model.config, "model_type", "") == "pruned_bert":
            from nasbert_deploy.model.pruned_bert import write_pruned_remote_code

            write_pruned_remote_code(tmp)
        write_json_atomic(tmp / REPORT_NAME, report)
    shutil.rmtree(ckpt, ignore_errors=True)
    return report


def finetune_qa(model_dir: str | Path, train: QAData, valid: QAData, out_dir: str | Path, cfg: FinetuneConfig,
                teacher_model: str | Path | None = None, progress: ProgressFn | None = None, note: NoteFn | None = None,
                fresh_head: bool = False, device: str = "cpu") -> dict[str, Any]:
    """Fine-tune the QA model (or, with `fresh_head`, the encoder) in `model_dir`; with `teacher_model` (a QA model
    of the same vocabulary) distil its start/end distributions too."""
    check_qa_folder(model_dir, trained=not fresh_head)
    if teacher_model is not None:
        check_qa_folder(teacher_model, option="--teacher-model")
    torch.manual_seed(cfg.seed)  # a fresh head is drawn from the seeded generator
    model, tokenizer = load_qa(model_dir, fresh_head=fresh_head)
    t_logits = None
    if teacher_model is not None:
        teacher, t_tok = load_qa(teacher_model)
        if t_tok.get_vocab() != tokenizer.get_vocab():
            raise TaskError(f"--teacher-model {teacher_model} has another vocabulary than --model {model_dir}; QA "
                            "distillation compares start/end logits token by token, so both need one tokenizer")
        t_logits = predict_spans(teacher.to(device), featurize(t_tok, train, cfg.max_len))
        del teacher
    key = {"model": str(model_dir), "task": train.source, "teacher_model": None if teacher_model is None else str(teacher_model)}
    return train_qa(model, tokenizer, train, valid, out_dir, cfg, t_logits, progress, key, note, device=device)


def evaluate_qa(model_dir: str | Path, data: QAData, teacher_model: str | Path | None = None, max_len: int = 256,
                runtime: str = "torch") -> dict[str, Any]:
    """Official EM / F1 (v2.0: HasAns / NoAns too) of `model_dir` on `data`; loyalty against `teacher_model`.
    `runtime` 'onnxruntime' / 'openvino' scores the exported model (fp32, CPU) instead of PyTorch."""
    check_qa_folder(model_dir)
    if teacher_model is not None:
        check_qa_folder(teacher_model, option="--teacher-model")
    model, tokenizer = load_qa(model_dir)
    feats = featurize(tokenizer, data, max_len)
    logits = predict_spans(model, feats)
    extra: dict[str, Any] = {"runtime": runtime, "task_kind": "extractive-qa", "squad_v2": data.version2, "windows": len(feats)}
    if runtime != "torch":
        from nasbert_deploy.qa.export import runtime_spans

        rt = runtime_spans(model, feats, runtime)
        m = feats.attention_mask.astype(bool)
        extra["max_abs_logit_diff_vs_torch"] = float(max(np.abs(a - b)[m].max() for a, b in zip(rt, logits)))
        logits = rt
    teacher = None
    if teacher_model is not None:
        t_model, t_tok = load_qa(teacher_model)
        if t_tok.get_vocab() != tokenizer.get_vocab():
            raise TaskError(f"--teacher-model {teacher_model} has another vocabulary than --model {model_dir}; "
                            "loyalty compares models of one tokenizer")
        teacher = predict_spans(t_model, feats)
    return {**score(data, feats, logits, teacher), **extra}
