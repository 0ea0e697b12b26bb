"""The training loop of every classifier: fine-tuning, task distillation, the teacher's own fine-tuning.

Loss with a teacher classifier (logits computed once per training row, teacher in eval mode):

    loss = (1 - lambda) * CE(student, gold) + lambda * KD
    KD = tau^2 * KL(softmax(teacher / tau) || softmax(student / tau))   (cfg.kd "kl")  or  MSE(student, teacher)  ("mse")

Without a teacher the loss is plain cross-entropy. A *transfer set* (unlabelled in-domain text the teacher
labels, Hinton et al.'s transfer set) adds rows whose loss is the KD term alone (weight 1); each row's loss is
then its own mix and a batch's loss the mean over its rows (with no transfer rows: exactly the formula above).
The weights with the best validation macro-F1 are kept.
Runs resume from `<out>.ckpt/`, written at every epoch end and on Ctrl-C.

Under torchrun (`model.distributed`) every rank runs `train_classifier`: a step takes the next world x
`batch_size` rows of the epoch's seeded order and rank r trains on slice r of them; each rank's loss is scaled
by its share of the rows, so the averaged gradient is the one of the mean loss over the whole global batch
(one process with world x the batch takes the same steps, the last, short batch of an epoch included).
Validation logits are computed sharded and gathered (`sharded_logits`), so every rank scores every epoch and
keeps the same best weights; rank 0 alone writes checkpoints and the output folder.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nasbert_deploy.fileio import atomic_dir, write_json_atomic
from nasbert_deploy.model.distributed import (
    allreduce_grads,
    broadcast_params,
    gather_objects,
    on_rank_zero,
    shard,
    sum_over_ranks,
    world_info,
)
from nasbert_deploy.model.loop import (
    NoteFn,
    ProgressFn,
    checkpoint_dir,
    kept_tensors,
    load_checkpoint_on_every_rank,
    optimizer_state,
    rank_rows,
    restore_kept,
    restore_optimizer_state,
    run_steps,
    save_checkpoint,
    warmup_decay,
)
from nasbert_deploy.model.losses import logit_mse, soft_kl
from nasbert_deploy.model.remote_code import write_remote_code
from nasbert_deploy.student.metrics import evaluate_logits
from nasbert_deploy.student.tasks import TaskData, iter_batches

REPORT_NAME = "finetune_report.json"


@dataclass(frozen=True)
class FinetuneConfig:
    """Hyper-parameters; `lam` and `temperature` only matter with a teacher. `batch_size`: rows per process."""

    epochs: int = 3
    batch_size: int = 16
    max_len: int = 128
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    lam: float = 0.5
    temperature: float = 1.0
    seed: int = 0
    kd: str = "kl"  # the KD term: "kl" (tau^2 KL of the softened distributions) or "mse" (of the logits; `finetune`'s)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["kd"] == "kl":
            del d["kd"]  # the default: checkpoints and reports written before the option keep their key
        return d


def model_labels(model: Any) -> list[str]:
    """The model's label names in class-id order."""
    id2label = model.config.id2label
    return [str(id2label[i]) for i in range(len(id2label))]


@torch.no_grad()
def predict_logits(
    model: Any, tokenizer: Any, task: TaskData, batch_size: int = 64, max_len: int = 128,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Logits (n, num_labels) float32 for every row of `task`, in order (PyTorch, eval mode, on the model's device;
    computed in batches of similar length). `progress(rows done, rows)` after each batch."""
    was_training = model.training
    model.eval()
    max_len = fit_max_len(model, max_len)
    device = next(model.parameters()).device
    out = np.zeros((len(task), int(model.config.num_labels)), dtype=np.float32)  # an empty task gives (0, num_labels)
    by_length = sorted(range(len(task)), key=lambda i: len(task.texts[i]) + len(task.pairs[i] if task.pairs else ""))
    done = 0
    for idx, batch in iter_batches(tokenizer, task, batch_size, max_len, by_length):  # little padding per batch
        out[idx] = model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu().numpy()
        done += len(idx)
        if progress is not None:
            progress(done, len(task))
    model.train(was_training)
    return out


def sharded_logits(
    model: Any, tokenizer: Any, task: TaskData, batch_size: int = 64, max_len: int = 128,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """`predict_logits` of all of `task` on every rank, each rank computing a contiguous share (torchrun;
    `progress` then counts rank 0's share)."""
    rank, world = world_info()
    if world == 1:
        return predict_logits(model, tokenizer, task, batch_size, max_len, progress)
    mine = predict_logits(model, tokenizer, task.subset(shard(len(task), rank, world)), batch_size, max_len,
                          progress if rank == 0 else None)
    return np.concatenate(gather_objects(mine))


KD_LOSSES = ("kl", "mse")


def mixed_loss(
    logits: torch.Tensor, y: torch.Tensor, t_logits: torch.Tensor | None, lam: float, tau: float, kd: str = "kl",
) -> torch.Tensor:
    """The batch's mean per-row loss: labelled rows (y >= 0) (1 - lam) CE + lam KD, transfer rows (y = -1) KD alone;
    KD = tau^2 KL of the softened distributions (`kd` "kl") or the logits' mean squared difference ("mse", no tau);
    without `t_logits`, plain CE."""
    if t_logits is None:
        return nn.functional.cross_entropy(logits, y)
    if kd not in KD_LOSSES:
        raise ValueError(f"kd {kd!r}: valid: {', '.join(KD_LOSSES)}")
    labelled = (y >= 0).to(logits.dtype)
    ce = nn.functional.cross_entropy(logits, y.clamp(min=0), reduction="none")
    kl = soft_kl(logits, t_logits, tau) if kd == "kl" else logit_mse(logits, t_logits)
    return ((1 - lam) * labelled * ce + (lam * labelled + (1 - labelled)) * kl).mean()


def with_transfer(
    train: TaskData, y: torch.Tensor, t_logits: torch.Tensor, rows: TaskData, rows_logits: np.ndarray
) -> tuple[TaskData, torch.Tensor, torch.Tensor]:
    """The labelled rows followed by the transfer rows (label id -1, text only)."""
    both = TaskData(train.texts + rows.texts, train.labels + ("",) * len(rows), None, train.source)
    y_all = torch.cat([y, torch.full((len(rows),), -1, dtype=y.dtype)])
    return both, y_all, torch.cat([t_logits, torch.as_tensor(rows_logits, dtype=torch.float32)])


def usable_positions(config: Any, default: int = 512) -> int:
    """Tokens a model can take: its position table, less RoBERTa's offset (positions start after the pad id)."""
    n = int(getattr(config, "max_position_embeddings", default) or default)
    if "roberta" in str(getattr(config, "model_type", "")):
        n -= int(getattr(config, "pad_token_id", 1) or 0) + 1
    return n


def fit_max_len(model: Any, max_len: int) -> int:
    """`max_len` capped at the model's position table (tokens beyond it have no position embedding)."""
    return min(max_len, usable_positions(model.config, max_len))


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
    device: str = "cpu",
    transfer: tuple[TaskData, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Train `model` (labels from its config) on `train`, keep the best validation macro-F1, write `out_dir`.

    `teacher_logits` (len(train), num_labels) switch on task distillation; `transfer` = (unlabelled rows, the
    teacher's logits on them) adds KD-only rows to every epoch (needs `teacher_logits`). Resumes from `<out_dir>.ckpt/`
    (saying so through `note`, which also gets each epoch's validation scores). `device`: where the model and batches
    go. Returns the report dict (rank 0's, on every rank under torchrun).
    """
    labels = model_labels(model)
    label2id = {n: i for i, n in enumerate(labels)}
    y_train = torch.tensor(train.label_ids(label2id))
    y_valid = valid.label_ids(label2id)
    t_logits = None if teacher_logits is None else torch.as_tensor(teacher_logits, dtype=torch.float32)
    lam = cfg.lam if t_logits is not None else 0.0
    n_labelled = len(train)
    if transfer is not None:
        if t_logits is None:
            raise ValueError("a transfer set needs the teacher's logits on the labelled rows too")
        train, y_train, t_logits = with_transfer(train, y_train, t_logits, *transfer)
    max_len = fit_max_len(model, cfg.max_len)
    rank, world = world_info()
    rows_per_step = cfg.batch_size * world  # the global batch
    spe = -(-len(train) // rows_per_step)  # steps per epoch
    total = cfg.epochs * spe
    model.to(device)
    torch.manual_seed(cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    broadcast_params(params)  # every rank starts from rank 0's weights (a fresh head included)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = warmup_decay(opt, cfg.warmup_fraction, total)
    out = Path(out_dir)
    ckpt = checkpoint_dir(out)
    key = {"kind": "finetune", "config": cfg.to_dict(), "rows": n_labelled, "labels": labels, **(run_key or {}),
           **({"transfer_rows": len(train) - n_labelled} if transfer is not None else {}),
           **({"world_size": world} if world > 1 else {})}  # one process keeps the key it had before torchrun support
    start, history, best, elapsed = 0, [], {"macro_f1": -1.0, "epoch": 0}, 0.0
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    loaded = load_checkpoint_on_every_rank(ckpt, key)
    if loaded is not None:  # state: `epoch` evaluated epochs, then `done` batches (== spe: evaluation pending)
        best_state = restore_kept(model, loaded.tensors)
        restore_optimizer_state(opt, sched, loaded.saved)
        st = loaded.state
        start, history, best, elapsed = st["epoch"] * spe + st["done"], st["history"], st["best"], st["elapsed_s"]
    t0 = time.perf_counter() - elapsed

    def train_step(step: int) -> dict[str, float]:
        rows, n_global = rank_rows(step, len(train), cfg.batch_size, cfg.seed, rank, world)
        opt.zero_grad(set_to_none=True)
        share = 0.0
        if rows:  # a rank whose slice of a short last batch is empty only joins the all-reduce
            idx, batch = next(iter_batches(tokenizer, train, cfg.batch_size, max_len, rows))
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
            loss = mixed_loss(logits, y_train[idx].to(device), None if t_logits is None else t_logits[idx].to(device),
                              lam, cfg.temperature, cfg.kd)
            weight = len(rows) / n_global  # this rank's share of the global batch's mean loss
            (loss * weight * world).backward()  # x world: allreduce_grads averages over the ranks
            share = float(loss.detach()) * weight
        allreduce_grads(params, world, uneven=True)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        return sum_over_ranks({"loss": share})

    def end_epoch(done: int) -> None:  # after `done` steps: evaluate an epoch that ended and is not evaluated yet
        nonlocal best, best_state
        if done % spe or len(history) == done // spe:
            return
        scores = evaluate_logits(y_valid, sharded_logits(model, tokenizer, valid, max_len=max_len))
        improved = scores.macro_f1 > best["macro_f1"]
        if improved:
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            best = {"macro_f1": scores.macro_f1, "accuracy": scores.accuracy, "epoch": done // spe}
        history.append({"epoch": done // spe, "valid_accuracy": scores.accuracy, "valid_macro_f1": scores.macro_f1})
        if note is not None:
            verdict = "the best so far, kept" if improved else f"epoch {best['epoch']} stays the best"
            note(f"epoch {done // spe}/{cfg.epochs}: validation accuracy {scores.accuracy:.4f}, "
                 f"macro-F1 {scores.macro_f1:.4f} ({verdict})")

    def save(done: int) -> None:  # rank 0 only, and no collective: Ctrl-C may reach the ranks at different moments
        if rank != 0:
            return
        tensors = kept_tensors(model, best_state)
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
        "train_rows": n_labelled,
        "transfer_rows": len(train) - n_labelled,
        "valid_rows": len(valid),
        "config": cfg.to_dict(),
        "distilled_from_teacher": t_logits is not None,
        "world_size": world,
        "device": device,
        "train_s": round(elapsed, 2),
        "best": best,
        "history": history,
        **(run_key or {}),
    }

    return write_trained(out, model, tokenizer, report)


def write_trained(out: Path, model: Any, tokenizer: Any, report: dict[str, Any]) -> dict[str, Any]:
    """Rank 0 writes a trainer's output folder (model, tokenizer, `REPORT_NAME`; for NAS-BERT its remote code) all or
    nothing and drops the run's checkpoint; every rank returns `report` once that is done."""

    def write() -> dict[str, Any]:
        with atomic_dir(out) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            if getattr(model.config, "model_type", "") == "nasbert":
                write_remote_code(tmp)  # loads with trust_remote_code=True where nasbert-deploy is not installed
            write_json_atomic(tmp / REPORT_NAME, report)
        shutil.rmtree(checkpoint_dir(out), ignore_errors=True)
        return report

    return on_rank_zero(write)
