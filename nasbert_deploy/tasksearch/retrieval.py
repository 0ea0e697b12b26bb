"""Task search on a retrieval task (`{"query", "document"}` pairs, `student.retrieval`): the same search, rerank and
export as for classification, with retrieval in place of the classifier at the two training steps.

- Proxy (`RetrievalProxy`): each architecture's encoder (inherited weights, token embeddings frozen by default)
  trains `ProxyConfig.epochs` passes over `rows` training pairs with `student.retrieval_training.pair_loss`:
  (1 - lam) * in-batch InfoNCE + lam * KL of the teacher's and the student's query-to-document similarity
  distributions (the recipe `finetune` uses on pairs), and is scored by MRR of `heldout` held-out training queries
  in the pool of their documents. The reward is the classification one with MRR for accuracy. Batches hold at least
  `RETRIEVAL_BATCH` pairs (in-batch negatives) and the KD temperature is `RETRIEVAL_TAU` (cosines, not logits).
- Final (`distill_final_retrieval`): `student.retrieval_training.train_retrieval` on the whole task from the teacher
  encoder (resumable; the best validation MRR kept), then recall@1/@10, MRR, kept MRR and ranking loyalty@10 to
  the teacher on the valid split; the encoder is exported as every other student.

The teacher is an encoder (the frozen MiniLM-L6 `default`, or a `finetune-teacher` retrieval output); its embeddings
of the proxy pairs go through the teacher-output cache (`student.teacher_logits`), so reruns and seeds reuse them.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nasbert_deploy.errors import TaskError
from nasbert_deploy.model.loop import warmup_decay
from nasbert_deploy.student.retrieval import RetrievalData, retrieval_scores, subset_pairs, teacher_comparison
from nasbert_deploy.student.retrieval_training import (
    RetrievalConfig,
    embed,
    encode_all,
    load_encoder,
    pad_tokens,
    pair_loss,
    teacher_embeddings,
    tokenize,
    train_retrieval,
)
from nasbert_deploy.tasksearch.proxy import ProxyConfig, ProxyResult, arch_seed

RETRIEVAL_BATCH = 32  # pairs per proxy step at least (the negatives of each query are the batch's other documents)
RETRIEVAL_TAU = 0.05  # KD temperature of the similarity distributions (finetune's retrieval default)
PROXY_ROWS, PROXY_HELDOUT = 2048, 1000  # search-task's defaults on pairs (docs/quality.md s15: 64 steps an epoch,
# MRR of 1,000 held-out queries; the classification defaults, 384 / 256, give 12 steps and a pool of 256)


def proxy_config(cfg: ProxyConfig) -> ProxyConfig:
    """The proxy settings a retrieval search trains with: `cfg` with batches of at least `RETRIEVAL_BATCH` pairs and
    the retrieval KD temperature."""
    return replace(cfg, batch_size=max(cfg.batch_size, RETRIEVAL_BATCH), temperature=RETRIEVAL_TAU)


def final_config(final: Any) -> RetrievalConfig:
    """The final distillation of a retrieval search: `finetune`'s retrieval recipe (batches of `RETRIEVAL_BATCH`
    pairs, temperature `RETRIEVAL_TAU`) with the epochs, learning rate, KD weight, length and seed of `final` (a
    `FinetuneConfig`); `TaskError` for a KD term retrieval does not have."""
    if isinstance(final, RetrievalConfig):
        return final
    if getattr(final, "kd", "kl") != "kl":
        raise TaskError(f"--kd {final.kd}: a retrieval search distils the teacher's similarity distributions (KL); "
                        "drop --kd or use --kd kl")
    return RetrievalConfig(epochs=final.epochs, batch_size=max(final.batch_size, RETRIEVAL_BATCH), max_len=final.max_len,
                           lr=final.lr, lam=final.lam, tau=RETRIEVAL_TAU, seed=final.seed)


def split_proxy_pairs(train: RetrievalData, cfg: ProxyConfig) -> tuple[RetrievalData, RetrievalData]:
    """(proxy training pairs, held-out pairs), both from the training file, disjoint and seeded by `cfg.seed`:
    at most `cfg.heldout` held out (at most half of the file, at least one) and at most `cfg.rows` to train on."""
    n = len(train)
    order = np.random.default_rng(cfg.seed).permutation(n)
    held = min(cfg.heldout, max(1, n // 2))
    rest = order[held : held + cfg.rows]
    return subset_pairs(train, sorted(rest), "proxy"), subset_pairs(train, sorted(order[:held]), "proxy held-out")


def proxy_teacher_embeddings(teacher_model: Path, rows: RetrievalData, tokenizer: Any, max_len: int, note: Any = None
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher encoder's normalised embeddings of `rows`' queries and documents (cached across runs: seeds and
    reruns read them back; the teacher is loaded only when they are not there)."""
    q_tok, d_tok = tokenize(tokenizer, rows.queries, max_len), tokenize(tokenizer, rows.documents, max_len)
    return teacher_embeddings(lambda: load_encoder(teacher_model, "--teacher-model", convert=False)[0], teacher_model,
                              rows, q_tok, d_tok, max_len, "cpu", note=note)


class RetrievalProxy:
    """Scores architectures of `net` (a `Supernet` or a `tasksearch.start` start) by a short retrieval distillation
    on `train` pairs and the MRR of `heldout`; `t_q`, `t_d`: the teacher's embeddings of `train`'s queries and
    documents (pool order)."""

    def __init__(self, net: Any, tokenizer: Any, train: RetrievalData, heldout: RetrievalData, t_q: torch.Tensor,
                 t_d: torch.Tensor, cfg: ProxyConfig) -> None:
        self.net, self.cfg, self.train, self.heldout = net, cfg, train, heldout
        max_len = min(cfg.max_len, net.space.max_positions)
        self.q_tok, self.d_tok = tokenize(tokenizer, train.queries, max_len), tokenize(tokenizer, train.documents, max_len)
        self.hq_tok = tokenize(tokenizer, heldout.queries, max_len)
        self.hd_tok = tokenize(tokenizer, heldout.documents, max_len)
        self.gold = torch.tensor(train.gold)
        self.t_q, self.t_d = t_q, t_d

    def batches(self, g: np.random.Generator) -> list[list[int]]:
        """One pass in a seeded order; a last batch of fewer than 2 pairs (no negative) is dropped."""
        order = g.permutation(len(self.train)).tolist()
        bs = self.cfg.batch_size
        return [order[s : s + bs] for s in range(0, len(order), bs) if len(order[s : s + bs]) >= 2]

    def evaluate(self, arch: str) -> ProxyResult:
        """Distil `arch` briefly on the proxy pairs and score it on the held-out queries (accuracy = MRR,
        macro_f1 = recall@1: the fields the search records)."""
        t0 = time.perf_counter()
        cfg, seed = self.cfg, arch_seed(arch, self.cfg.seed)
        torch.manual_seed(seed)
        model = self.net.extract(arch)
        if cfg.freeze_embeddings:
            model.embeddings.requires_grad_(False)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
        g = np.random.default_rng(seed)
        passes = [self.batches(g) for _ in range(cfg.epochs)]
        sched = warmup_decay(opt, 0.1, max(1, sum(len(p) for p in passes)))
        model.train()
        for rows in (r for p in passes for r in p):
            idx = torch.tensor(rows)
            docs = self.gold[idx]
            s_q = embed(model, *pad_tokens([self.q_tok[i] for i in rows], "cpu"))
            s_d = embed(model, *pad_tokens([self.d_tok[int(j)] for j in docs], "cpu"))
            teacher = (self.t_q[idx], self.t_d[docs]) if cfg.lam else None
            loss, _ = pair_loss(s_q, s_d, docs, teacher, cfg.lam, cfg.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
        q, d = encode_all(model, self.hq_tok, "cpu"), encode_all(model, self.hd_tok, "cpu")
        scores = retrieval_scores(q.numpy(), d.numpy(), self.heldout.gold)
        return ProxyResult(scores["mrr"], scores["recall@1"], None, time.perf_counter() - t0)


def search_proxy(teacher_model: Path, pairs: RetrievalData, tokenizer: Any, net: Any, cfg: ProxyConfig) -> RetrievalProxy:
    """The proxy of a retrieval search for the proxy setting `cfg` (`proxy_config` applied): its split of `pairs`
    and the teacher's embeddings of the proxy pairs."""
    rcfg = proxy_config(cfg)
    train, heldout = split_proxy_pairs(pairs, rcfg)
    t_q, t_d = proxy_teacher_embeddings(teacher_model, train, tokenizer, min(rcfg.max_len, net.space.max_positions))
    return RetrievalProxy(net, tokenizer, train, heldout, t_q, t_d, rcfg)


def pair_quality(model: Any, teacher: Any, tokenizer: Any, data: RetrievalData, max_len: int) -> dict[str, Any]:
    """recall@1/@10 and MRR of the encoder `model` on `data` (pool of its documents) beside the teacher encoder's:
    `teacher_mrr`, `kept_mrr`, `ranking_loyalty@10` (the keys `evaluate` writes for a retrieval task)."""
    q_tok, d_tok = tokenize(tokenizer, data.queries, max_len), tokenize(tokenizer, data.documents, max_len)
    q, d = encode_all(model, q_tok, "cpu").numpy(), encode_all(model, d_tok, "cpu").numpy()
    tq, td = encode_all(teacher, q_tok, "cpu").numpy(), encode_all(teacher, d_tok, "cpu").numpy()
    out: dict[str, Any] = {"queries": len(data), "pool": len(data.documents), **retrieval_scores(q, d, data.gold)}
    return {**out, **teacher_comparison(q, d, tq, td, data.gold, out["mrr"])}


def distill_final_retrieval(arch: str, net: Any, tokenizer: Any, train: RetrievalData, valid: RetrievalData,
                            teacher_model: Path, out_dir: Path, cfg: RetrievalConfig, progress: Any = None,
                            note: Any = None, start_key: dict[str, Any] | None = None) -> dict[str, Any]:
    """Distil `arch` (from `net`) on every training pair from the teacher encoder (`train_retrieval`: resumable, the
    best validation MRR kept), write `out_dir` (the encoder), and return the report with `valid`: the valid split's
    scores beside the teacher's (`pair_quality`), and `model`: the encoder."""
    teacher, _ = load_encoder(teacher_model, "--teacher-model", convert=False)
    torch.manual_seed(cfg.seed)
    model = net.extract(arch)
    key = {"arch": arch, "task": train.source, "teacher_model": str(teacher_model), **(start_key or {})}
    report = train_retrieval(model, tokenizer, train, valid, out_dir, cfg, teacher, progress, key, note, "cpu",
                             teacher_model)
    scores = pair_quality(model, teacher.eval(), tokenizer, valid, cfg.max_len)
    return {**report, "valid": scores, "model": model}
