"""Proxy evaluation of one architecture (KD-NAS's cheap inner loop): weights inherited from the start -- the supernet
(`Supernet.extract`) or a pre-trained encoder (`tasksearch.start.ExtractedStart`, Extract Then Distill) --, a fresh
classifier head, a short task distillation on a small subset of the training rows,
accuracy on a held-out slice of the training file (the valid split is kept for the final report).

Loss per batch (as `student.finetune`): (1 - lam) * CE(student, gold) + lam * tau^2 * KL(teacher || student) on
temperature-softened logits; the teacher's logits are computed once for the subset (`teacher_logits`) and cached
by the caller. Batches are tokenized once and reused by every architecture; the head and the batch order are
seeded from the architecture string, so an evaluation is reproducible.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from nasbert_deploy.model.loop import warmup_decay
from nasbert_deploy.model.losses import kd_loss
from nasbert_deploy.student.finetune import predict_logits
from nasbert_deploy.student.metrics import evaluate_logits
from nasbert_deploy.student.tasks import TaskData, iter_batches, label_maps


@dataclass(frozen=True)
class ProxyConfig:
    """Proxy distillation settings: `rows` training rows, `heldout` held-out rows (both from the training file),
    `epochs` passes, AdamW `lr`, KD weight `lam` and temperature, tokens per row `max_len`; `freeze_embeddings`:
    the inherited token embeddings stay fixed (most of a small student's parameters; 2-3x faster steps)."""

    rows: int = 384
    heldout: int = 256
    epochs: int = 2
    batch_size: int = 16
    max_len: int = 64
    lr: float = 1e-3
    lam: float = 0.5
    temperature: float = 2.0
    freeze_embeddings: bool = True
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ProxyResult:
    accuracy: float
    macro_f1: float
    label_loyalty: float | None
    seconds: float


def arch_seed(arch: str, seed: int) -> int:
    return (zlib.crc32(arch.encode()) + 1_000_003 * seed) % 2**31


def classifier_from_supernet(net: Any, arch: str, labels: list[str], seed: int = 0) -> Any:
    """A `NasBertForSequenceClassification` for `labels` whose encoder is `net.extract(arch)` (inherited weights:
    `net` is a `Supernet` or a `tasksearch.start` start) and whose head is fresh (seeded)."""
    from nasbert_deploy.model.modeling import NasBertForSequenceClassification

    id2label, label2id = label_maps(labels)
    encoder = net.extract(arch, num_labels=len(labels), id2label=id2label, label2id=label2id)
    torch.manual_seed(seed)
    model = NasBertForSequenceClassification(encoder.config)
    model.nasbert.load_state_dict(encoder.state_dict())
    return model


def split_proxy(train: TaskData, cfg: ProxyConfig) -> tuple[TaskData, TaskData]:
    """(proxy training rows, held-out rows), both from the training file, disjoint, stratified by the task's split."""
    n = len(train)
    frac = min(0.5, max(cfg.heldout / max(n, 1), 1.0 / max(n, 1)))
    rest, held = train.split(frac, seed=cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    if len(held) > cfg.heldout:
        held = held.subset(sorted(rng.choice(len(held), cfg.heldout, replace=False).tolist()))
    if len(rest) > cfg.rows:
        rest = rest.subset(sorted(rng.choice(len(rest), cfg.rows, replace=False).tolist()))
    return rest, held


class ProxyEvaluator:
    """Scores architectures of `net` (a `Supernet` or a `tasksearch.start` start) on the proxy split; `labels` in
    the teacher's class order."""

    def __init__(self, net: Any, tokenizer: Any, train: TaskData, heldout: TaskData, labels: list[str],
                 teacher_logits: np.ndarray, cfg: ProxyConfig, heldout_teacher_logits: np.ndarray | None = None) -> None:
        self.net, self.tokenizer, self.labels, self.cfg = net, tokenizer, labels, cfg
        label2id = {n: i for i, n in enumerate(labels)}
        self.y_train = torch.tensor(train.label_ids(label2id))
        self.y_held = np.array(heldout.label_ids(label2id))
        self.t_logits = torch.as_tensor(teacher_logits, dtype=torch.float32)
        self.t_held = heldout_teacher_logits
        self.heldout = heldout
        max_len = min(cfg.max_len, net.space.max_positions)
        self.max_len = max_len
        order = np.random.default_rng(cfg.seed).permutation(len(train)).tolist()
        self.batches = [(torch.tensor(idx), b) for idx, b in iter_batches(tokenizer, train, cfg.batch_size, max_len, order)]

    def evaluate(self, arch: str) -> ProxyResult:
        """Distil `arch` briefly and score it on the held-out slice."""
        t0 = time.perf_counter()
        cfg, seed = self.cfg, arch_seed(arch, self.cfg.seed)
        model = classifier_from_supernet(self.net, arch, self.labels, seed)
        if cfg.freeze_embeddings:
            model.nasbert.embeddings.requires_grad_(False)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.01)
        total = cfg.epochs * len(self.batches)
        sched = warmup_decay(opt, 0.1, total)
        g = np.random.default_rng(seed)
        model.train()
        for _ in range(cfg.epochs):
            for k in g.permutation(len(self.batches)):
                idx, batch = self.batches[int(k)]
                logits = model(**batch).logits
                loss = nn.functional.cross_entropy(logits, self.y_train[idx])
                if cfg.lam:
                    loss = (1 - cfg.lam) * loss + cfg.lam * kd_loss(logits, self.t_logits[idx], cfg.temperature)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
        logits = predict_logits(model, self.tokenizer, self.heldout, max_len=self.max_len)
        rep = evaluate_logits(self.y_held, logits, self.t_held)
        return ProxyResult(rep.accuracy, rep.macro_f1, rep.label_loyalty, time.perf_counter() - t0)
