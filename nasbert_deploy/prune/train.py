"""Gate training: task loss with distillation from the unpruned model, plus a Lagrangian latency term (CoFi).

    loss = (1 - a) CE(y, s) + a tau^2 KL(t / tau || s / tau) [+ h MSE(last hidden states)]
         + lambda1 (E[ms] - target) / full + lambda2 ((E[ms] - target) / full)^2

E[ms] is the latency table's prediction at the gates' expected open heads and neurons per layer.
The target falls linearly from the unpruned model's predicted latency to the budget over the first
`target_warmup` of the steps, then stays; lambda1 and lambda2 are trained by gradient *ascent*
(Xia et al. 2022), so the penalty grows while E[ms] is above the target and pulls it back up below it.
The run is resumable (`model.loop`: checkpoints every `checkpoint_every` steps and on Ctrl-C).

`fit_selection` then turns the gates into whole heads and neurons whose predicted latency is at most the
budget: it starts from round(E[open]) per layer and removes the least confident unit (lowest log_alpha;
neurons in chunks of W/64) while over budget, then adds back the most confident while it still fits.
"""

from __future__ import annotations

import functools
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from nasbert_deploy.model.loop import (
    NoteFn,
    ProgressFn,
    load_checkpoint,
    optimizer_state,
    restore_optimizer_state,
    run_steps,
    save_checkpoint,
    warmup_decay,
)
from nasbert_deploy.model.losses import kd_loss, masked_mse
from nasbert_deploy.prune.gates import GatedModel, Selection, select
from nasbert_deploy.prune.latency import PruneLatencyTable
from nasbert_deploy.student.tasks import TaskData, iter_batches


class GateData(Protocol):
    """The training rows of gate training: batches and the task loss (with distillation) of a model output."""

    def __len__(self) -> int: ...

    def batch(self, rows: list[int]) -> tuple[list[int], dict[str, torch.Tensor]]: ...

    def loss(self, out: Any, rows: list[int], batch: dict[str, torch.Tensor], cfg: GateConfig) -> torch.Tensor: ...


@dataclass(frozen=True)
class ClassifierGateData:
    """Sequence classification: `(1 - a) CE(y, s) + a tau^2 KL(t / tau || s / tau)` on the logits."""

    tokenizer: Any
    train: TaskData
    labels: torch.Tensor  # (n,) class ids
    teacher_logits: torch.Tensor  # (n, c)
    max_len: int

    def __len__(self) -> int:
        return len(self.train)

    def batch(self, rows: list[int]) -> tuple[list[int], dict[str, torch.Tensor]]:
        idx, batch = next(iter_batches(self.tokenizer, self.train, len(rows), self.max_len, rows))
        return list(idx), batch

    def loss(self, out: Any, rows: list[int], batch: dict[str, torch.Tensor], cfg: GateConfig) -> torch.Tensor:
        a = cfg.distill_weight
        ce = nn.functional.cross_entropy(out.logits, self.labels[rows])
        return (1 - a) * ce + a * kd_loss(out.logits, self.teacher_logits[rows], cfg.temperature)


@dataclass(frozen=True)
class GateConfig:
    """Gate-training settings (the `prune` command's options)."""

    steps: int = 300
    batch_size: int = 16
    max_len: int = 128
    lr: float = 3e-5  # encoder and head weights
    gate_lr: float = 0.1  # log_alpha
    lambda_lr: float = 0.05  # Lagrange multipliers (ascent)
    gate_init: float = 2.0  # initial log_alpha: P(open) ~ 0.97
    target_warmup: float = 0.5  # share of the steps over which the target falls to the budget
    distill_weight: float = 0.9  # a: weight of the KL to the unpruned model's logits
    temperature: float = 2.0
    hidden_weight: float = 0.0  # h: last-hidden-state MSE to the teacher (needs a teacher forward per step)
    checkpoint_every: int = 50
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def train_gates(
    gated: GatedModel,
    data: GateData,
    table: PruneLatencyTable,
    budget_ms: float,
    cfg: GateConfig,
    ckpt: Path,
    run_key: dict[str, Any],
    teacher: Any = None,
    progress: ProgressFn | None = None,
    note: NoteFn | None = None,
) -> dict[str, Any]:
    """Train the gates (and weights) of `gated` for `cfg.steps` steps; returns the training summary."""
    torch.manual_seed(cfg.seed)
    layers = gated.layers
    full_ms = table.predict_ms([table.heads] * layers, [table.ffn] * layers)
    lambdas = nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([
        {"params": gated.model_parameters(), "lr": cfg.lr, "weight_decay": 0.01},
        {"params": gated.gate_parameters(), "lr": cfg.gate_lr, "weight_decay": 0.0},
    ])
    lam_opt = torch.optim.Adam([lambdas], lr=cfg.lambda_lr)
    sched = warmup_decay(opt, 0.05, cfg.steps)
    key = {"kind": "prune-gates", "config": cfg.to_dict(), "budget_ms": budget_ms, "rows": len(data), **run_key}
    start, elapsed, history = 0, 0.0, []
    loaded = load_checkpoint(ckpt, key)
    if loaded is not None:
        gated.load_state_dict(dict(loaded.tensors), strict=False)
        lambdas.data.copy_(loaded.tensors["__lambdas"])
        restore_optimizer_state(opt, sched, loaded.saved)
        lam_opt.load_state_dict(loaded.saved["lambda_optimizer"])
        start, elapsed, history = loaded.state["done"], loaded.state["elapsed_s"], loaded.state["history"]
    t0 = time.perf_counter() - elapsed
    spe = -(-len(data) // cfg.batch_size)
    warm = max(1, int(cfg.target_warmup * cfg.steps))

    @functools.lru_cache(maxsize=1)
    def epoch_order(epoch: int) -> list[int]:
        order = list(range(len(data)))
        random.Random(cfg.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def target_at(step: int) -> float:
        return full_ms - (full_ms - budget_ms) * min(1.0, (step + 1) / warm)

    def step_fn(step: int) -> dict[str, float]:
        epoch, pos = divmod(step, spe)
        rows = epoch_order(epoch)[pos * cfg.batch_size : (pos + 1) * cfg.batch_size]
        idx, batch = data.batch(rows)
        out = gated(output_hidden_states=cfg.hidden_weight > 0, **batch)
        task = data.loss(out, idx, batch, cfg)
        if cfg.hidden_weight > 0 and teacher is not None:
            with torch.no_grad():
                t_hidden = teacher(**batch, output_hidden_states=True).hidden_states[-1]
            task = task + cfg.hidden_weight * masked_mse(out.hidden_states[-1], t_hidden, batch["attention_mask"])
        eh, en = gated.expected_counts()
        exp_ms = table.expected_ms(eh, en)
        target = target_at(step)
        d = (exp_ms - target) / full_ms
        loss = task + lambdas[0] * d + lambdas[1] * d * d
        opt.zero_grad(set_to_none=True)
        lam_opt.zero_grad(set_to_none=True)
        loss.backward()
        lambdas.grad.neg_()  # ascent on the multipliers
        torch.nn.utils.clip_grad_norm_(gated.model_parameters(), 1.0)
        opt.step()
        lam_opt.step()
        sched.step()
        values = {"loss": float(task.detach()), "exp_ms": float(exp_ms.detach()), "target_ms": target,
                  "lambda1": float(lambdas[0].detach())}
        if (step + 1) % max(1, cfg.steps // 20) == 0 or step + 1 == cfg.steps:
            history.append({"step": step + 1, **values, "heads": float(eh.detach().sum()), "neurons": float(en.detach().sum())})
        return values

    def save(done: int) -> None:
        tensors = {k: v for k, v in gated.state_dict().items()}
        tensors["__lambdas"] = lambdas.detach()
        saved = {**optimizer_state(opt, sched), "lambda_optimizer": lam_opt.state_dict()}
        state = {"done": done, "elapsed_s": time.perf_counter() - t0, "history": history}
        save_checkpoint(ckpt, key, tensors, saved, state)

    gated.train()
    run_steps(start, cfg.steps, step_fn, save, checkpoint_every=cfg.checkpoint_every, progress=progress, note=note)
    gated.eval()
    eh, en = gated.expected_counts()
    return {"steps": cfg.steps, "train_s": round(time.perf_counter() - t0, 1), "full_predicted_ms": full_ms,
            "expected_ms_end": float(table.expected_ms(eh, en).detach()), "lambdas": lambdas.detach().tolist(),
            "expected_heads": eh.detach().tolist(), "expected_neurons": en.detach().tolist(), "history": history}


def fit_selection(gated: GatedModel, table: PruneLatencyTable, budget_ms: float) -> Selection:
    """Whole heads/neurons per layer from the gates, with predicted latency <= `budget_ms` (see the module doc)."""
    base = select(gated)
    hc, wc = base.head_counts, base.widths
    la_h = torch.sort(gated.heads.log_alpha.detach(), dim=1, descending=True).values  # (L, H) best first
    la_n = torch.sort(gated.neurons.log_alpha.detach(), dim=1, descending=True).values  # (L, W)
    chunk = max(1, table.ffn // 64)
    layers = len(hc)

    def worst_kept() -> tuple[float, str, int] | None:
        cands = [(float(la_h[i, hc[i] - 1]), "h", i) for i in range(layers) if hc[i] > 1]
        cands += [(float(la_n[i, wc[i] - 1]), "n", i) for i in range(layers) if wc[i] > 1]
        return min(cands) if cands else None

    def best_dropped() -> list[tuple[float, str, int]]:
        cands = [(float(la_h[i, hc[i]]), "h", i) for i in range(layers) if hc[i] < table.heads]
        cands += [(float(la_n[i, wc[i]]), "n", i) for i in range(layers) if wc[i] < table.ffn]
        return sorted(cands, reverse=True)

    while table.predict_ms(hc, wc) > budget_ms:
        w = worst_kept()
        if w is None:
            break
        _, kind, i = w
        if kind == "h":
            hc[i] -= 1
        else:
            wc[i] = max(1, wc[i] - chunk)
    while True:  # add back the most confident dropped unit that still fits, until none does
        for _, kind, i in best_dropped():
            h2, w2 = list(hc), list(wc)
            if kind == "h":
                h2[i] += 1
            else:
                w2[i] = min(table.ffn, w2[i] + chunk)
            if table.predict_ms(h2, w2) <= budget_ms:
                hc, wc = h2, w2
                break
        else:
            break
    return select(gated, hc, wc)
