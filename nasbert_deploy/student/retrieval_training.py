"""Fine-tuning an encoder on retrieval pairs, and retrieval distillation from a teacher encoder.

Training rows are `{"query", "document"}` pairs (`student.retrieval`). Each step embeds a batch's queries and
documents (mean-pooled over real tokens, as `Embedder` and sentence-transformers do) and trains

    loss = (1 - lambda) * InfoNCE + lambda * KD

- InfoNCE (in-batch negatives, sentence-transformers' MultipleNegativesRankingLoss): cross-entropy of each
  query's softmax over cosine / `CONTRASTIVE_TAU` to the batch's documents, its own document the target; other
  rows holding the very same document are masked out (they are not negatives);
- KD (with a teacher encoder): KL between the teacher's and the student's softmax over the same query-to-document
  similarities at temperature `tau` (`losses.cross_similarity_kl`); the teacher's embeddings of every query and
  document are computed once, before the first step, and cached across runs (`teacher_embeddings`). Without a
  teacher the loss is InfoNCE alone.

The weights with the best validation MRR (in the pool of the validation split's documents) are kept. Runs resume
from `<out>.ckpt/` (every `CHECKPOINT_STEPS` steps, at each epoch end and on Ctrl-C). Under torchrun every rank
takes its slice of each global batch and ranks its queries against every rank's documents (gathered; their
gradients summed back to the rank that embedded them), so N processes train as one with the global batch; gradients
are averaged, and every rank scores the validation split; rank 0 alone writes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nasbert_deploy.errors import CheckpointError, NasBertDeployError, TaskError
from nasbert_deploy.model.distributed import (
    allreduce_grads,
    allreduce_sum,
    broadcast_params,
    gather_rows,
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
from nasbert_deploy.model.losses import cross_similarity_kl, masked_mean_pool
from nasbert_deploy.student.retrieval import RetrievalData, retrieval_scores
from nasbert_deploy.student.task_training import write_trained

CONTRASTIVE_TAU = 0.05  # sentence-transformers' MultipleNegativesRankingLoss scale 20
CHECKPOINT_STEPS = 200


@dataclass(frozen=True)
class RetrievalConfig:
    """Hyper-parameters; `lam` and `tau` only matter with a teacher. `batch_size`: pairs per process and step."""

    epochs: int = 3
    batch_size: int = 32
    max_len: int = 128
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    lam: float = 0.5
    tau: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 2:
            raise TaskError("retrieval trains against the batch's other documents: --batch-size must be at least 2")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pad_tokens(seqs: Sequence[Sequence[int]], device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of token lists right-padded with 0 to the longest, on `device`."""
    t = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), t, dtype=torch.long)
    mask = torch.zeros(len(seqs), t, dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s)
        mask[r, : len(s)] = 1
    return ids.to(device), mask.to(device)


def embed(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(b, d) mean-pooled last hidden states of a BERT-family or NAS-BERT encoder (not normalised)."""
    return masked_mean_pool(model(input_ids=ids, attention_mask=mask).last_hidden_state, mask)


@torch.no_grad()
def encode_all(model: Any, tokens: Sequence[Sequence[int]], device: str, batch_size: int = 64,
               progress: ProgressFn | None = None) -> torch.Tensor:
    """(n, d) L2-normalised embeddings of tokenized texts, in order (batched by length, model in eval mode)."""
    was = model.training
    model.eval()
    order = np.argsort([len(t) for t in tokens], kind="stable")
    out = torch.zeros(len(tokens), 0)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        vec = torch.nn.functional.normalize(embed(model, *pad_tokens([tokens[i] for i in idx], device)), dim=-1)
        vec = vec.float().cpu()
        if out.shape[1] == 0:
            out = torch.zeros(len(tokens), vec.shape[1])
        out[torch.as_tensor(idx)] = vec
        if progress is not None:
            progress(min(start + batch_size, len(order)), len(order), {})
    model.train(was)
    return out


def _shifted(progress: ProgressFn | None, offset: int, total: int) -> ProgressFn | None:
    """`progress` of one pass of `encode_all` shown as part of a bigger one (`offset` texts done before, `total` in all)."""
    if progress is None:
        return None
    return lambda done, _n, values: progress(offset + done, total, values)


def tokenize(tokenizer: Any, texts: Sequence[str], max_len: int) -> list[list[int]]:
    return list(tokenizer(list(texts), truncation=True, max_length=max_len)["input_ids"])


def validation_scores(model: Any, q_tok: Sequence[Sequence[int]], d_tok: Sequence[Sequence[int]], gold: Sequence[int],
                      device: str) -> dict[str, float]:
    """recall@1, recall@10 and MRR of `model` on a tokenized validation split (pool of its documents)."""
    q, d = encode_all(model, q_tok, device), encode_all(model, d_tok, device)
    return retrieval_scores(q.numpy(), d.numpy(), gold)


def teacher_embeddings(teacher: Any, teacher_dir: str | Path | None, train: RetrievalData,
                       q_tok: Sequence[Sequence[int]] | None, d_tok: Sequence[Sequence[int]] | None, max_len: int,
                       device: str, progress: ProgressFn | None = None,
                       note: NoteFn | None = None, tokenizer: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's normalised embeddings of every training query and document, computed once: with `teacher_dir`
    they go to the teacher-output cache (`student.teacher_logits`, keyed by the teacher's files, the texts and
    `max_len`), so other seeds, other students and a resumed run read them back. `teacher`: the encoder, or a function
    returning it (called only when the cache misses). With `tokenizer` and a seeded split (`train.whole`), the pairs
    it was cut from are embedded and cached instead, and `train`'s rows picked from them: every seed's split reads
    the same cache entry. `q_tok` / `d_tok` None: `tokenizer` tokenizes `train` when the cache misses."""
    from nasbert_deploy.student.tasks import TaskData
    from nasbert_deploy.student.teacher_logits import cached_logits

    whole = train.whole
    if whole is not None and teacher_dir is not None and tokenizer is not None:
        w_q, w_d = teacher_embeddings(teacher, teacher_dir, whole, None, None, max_len, device, progress, note,
                                      tokenizer)
        q_at = {t: i for i, t in reversed(list(enumerate(whole.queries)))}
        d_at = {t: i for i, t in enumerate(whole.documents)}
        return w_q[[q_at[t] for t in train.queries]], w_d[[d_at[t] for t in train.documents]]
    n_q, n_all = len(train.queries), len(train.queries) + len(train.documents)

    def compute() -> np.ndarray:  # on a cache miss only: a hit says so instead (`cached_logits`)
        if note is not None:
            note(f"embedding {len(train)} queries and {len(train.documents)} documents with the teacher (once for "
                 "these pairs; cached)")
        qt = tokenize(tokenizer, train.queries, max_len) if q_tok is None else q_tok
        dt = tokenize(tokenizer, train.documents, max_len) if d_tok is None else d_tok
        model = teacher if isinstance(teacher, torch.nn.Module) else teacher()
        model.to(device)
        q = encode_all(model, qt, device, progress=_shifted(progress, 0, n_all))
        d = encode_all(model, dt, device, progress=_shifted(progress, n_q, n_all))
        model.to("cpu")
        return torch.cat([q, d]).numpy()

    if teacher_dir is None:
        emb = compute()
    else:
        texts = train.queries + train.documents
        rows = TaskData(texts, ("",) * len(texts), None, train.source)
        emb = cached_logits(teacher_dir, rows, max_len, compute, note=note, write=world_info()[0] == 0,
                            kind="embeddings")
    t = torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32))
    return t[:n_q], t[n_q:]


def pair_loss(s_q: torch.Tensor, s_d: torch.Tensor, doc_ids: torch.Tensor, teacher: tuple[torch.Tensor, torch.Tensor]
              | None, lam: float, tau: float, offset: int = 0) -> tuple[torch.Tensor, dict[str, float]]:
    """The module docstring's loss for one batch: (b_q, d) query and (b_d, d) document embeddings, (b_d,) pool index
    of each document row, the teacher's embeddings of the same rows (or None). Query k's own document is row
    `offset` + k (0 and b_q = b_d: one process's batch; under torchrun the documents are every rank's)."""
    norm = torch.nn.functional.normalize
    sims = norm(s_q, dim=-1) @ norm(s_d, dim=-1).T / CONTRASTIVE_TAU  # (b_q, b_d)
    own = torch.arange(len(s_q), device=sims.device) + offset
    same = doc_ids[own][:, None] == doc_ids[None, :]
    same[torch.arange(len(s_q), device=sims.device), own] = False
    nce = torch.nn.functional.cross_entropy(sims.masked_fill(same, float("-inf")), own)
    if teacher is None:
        return nce, {"nce": float(nce.detach())}
    kd = cross_similarity_kl(s_q, s_d, teacher[0], teacher[1], tau)
    return (1 - lam) * nce + lam * kd, {"nce": float(nce.detach()), "kd": float(kd.detach())}


def train_retrieval(
    model: Any,
    tokenizer: Any,
    train: RetrievalData,
    valid: RetrievalData,
    out_dir: str | Path,
    cfg: RetrievalConfig,
    teacher: Any = None,
    progress: ProgressFn | None = None,
    run_key: dict[str, Any] | None = None,
    note: NoteFn | None = None,
    device: str = "cpu",
    teacher_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Train the encoder `model` on `train` pairs (with the encoder `teacher`: retrieval distillation; its embeddings
    cached when `teacher_dir`, its folder, is given), keep the best validation MRR, write `out_dir` (encoder,
    tokenizer, report). Returns the report (rank 0's on every rank)."""
    rank, world = world_info()
    max_len = min(cfg.max_len, int(getattr(model.config, "max_position_embeddings", cfg.max_len)))
    q_tok, d_tok = tokenize(tokenizer, train.queries, max_len), tokenize(tokenizer, train.documents, max_len)
    vq_tok, vd_tok = tokenize(tokenizer, valid.queries, max_len), tokenize(tokenizer, valid.documents, max_len)
    gold = torch.tensor(train.gold)
    t_q = t_d = None
    if teacher is not None:
        t_q, t_d = teacher_embeddings(teacher, teacher_dir, train, q_tok, d_tok, max_len, device, progress, note,
                                      tokenizer)
    rows_per_step = cfg.batch_size * world
    spe = -(-len(train) // rows_per_step)
    total = cfg.epochs * spe
    model.to(device)
    torch.manual_seed(cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    broadcast_params(params)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = warmup_decay(opt, cfg.warmup_fraction, total)
    out = Path(out_dir)
    ckpt = checkpoint_dir(out)
    key = {"kind": "finetune-retrieval", "config": cfg.to_dict(), "rows": len(train), **(run_key or {}),
           **({"world_size": world} if world > 1 else {})}
    start, history, best, elapsed = 0, [], {"mrr": -1.0, "epoch": 0}, 0.0
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    loaded = load_checkpoint_on_every_rank(ckpt, key)
    if loaded is not None:
        best_state = restore_kept(model, loaded.tensors)
        restore_optimizer_state(opt, sched, loaded.saved)
        st = loaded.state
        start, history, best, elapsed = st["step"], st["history"], st["best"], st["elapsed_s"]
    t0 = time.perf_counter() - elapsed

    none = torch.zeros(0, 0, device=device)  # an empty rank's share of the gathered documents (width set below)
    if world > 1:
        with torch.no_grad():
            none = torch.zeros(0, embed(model, *pad_tokens([q_tok[0]], device)).shape[-1], device=device)

    def train_step(step: int) -> dict[str, float]:
        slices = [rank_rows(step, len(train), cfg.batch_size, cfg.seed, r, world)[0] for r in range(world)]
        rows, sizes = slices[rank], [len(s) for s in slices]
        n_global, offset = sum(sizes), sum(sizes[:rank])
        opt.zero_grad(set_to_none=True)
        values = {"loss": 0.0, "nce": 0.0, **({"kd": 0.0} if t_q is not None else {})}  # the same keys on every rank
        s_d = embed(model, *pad_tokens([d_tok[int(gold[i])] for i in rows], device)) if rows else None
        # every rank's documents are this rank's negatives: gathered (detached) into a leaf whose gradient, summed
        # over the ranks, flows back into this rank's own document rows (exactly one process's global batch)
        docs = s_d if world == 1 else gather_rows(s_d if s_d is not None else none, sizes).requires_grad_()
        if rows:  # a rank whose slice of a short last batch is empty only joins the collectives
            s_q = embed(model, *pad_tokens([q_tok[i] for i in rows], device))
            idx, every = torch.tensor(rows), torch.tensor([i for s in slices for i in s])
            tq = None if t_q is None or t_d is None else (t_q[idx].to(device), t_d[gold[every]].to(device))
            loss, parts = pair_loss(s_q, docs, gold[every].to(device), tq, cfg.lam, cfg.tau, offset)
            weight = len(rows) / n_global
            (loss * weight * world).backward()
            values = {"loss": float(loss.detach()) * weight, **{k: v * weight for k, v in parts.items()}}
        if world > 1:
            grad = allreduce_sum(docs.grad if docs.grad is not None else torch.zeros_like(docs))
            if s_d is not None:
                s_d.backward(grad[offset : offset + len(rows)])
        allreduce_grads(params, world, uneven=True)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        values = sum_over_ranks(values)
        if not np.isfinite(values["loss"]):
            raise CheckpointError(f"training diverged at step {step + 1} (loss {values['loss']}); lower the learning rate")
        return values

    def end_epoch(done: int) -> None:
        nonlocal best, best_state
        if done % spe or len(history) == done // spe:
            return
        scores = validation_scores(model, vq_tok, vd_tok, valid.gold, device)
        improved = scores["mrr"] > best["mrr"]
        if improved:
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            best = {**scores, "epoch": done // spe}
        history.append({"epoch": done // spe, **{f"valid_{k}": v for k, v in scores.items()}})
        if note is not None:
            verdict = "the best so far, kept" if improved else f"epoch {best['epoch']} stays the best"
            note(f"epoch {done // spe}/{cfg.epochs}: validation MRR {scores['mrr']:.4f}, recall@1 "
                 f"{scores['recall@1']:.4f} ({verdict})")

    def save(done: int) -> None:  # rank 0 only, and no collective: Ctrl-C may reach the ranks at different moments
        if rank != 0:
            return
        tensors = kept_tensors(model, best_state)
        state = {"step": done, "history": history, "best": best, "elapsed_s": time.perf_counter() - t0}
        save_checkpoint(ckpt, key, tensors, optimizer_state(opt, sched), state)

    model.train()
    end_epoch(start)  # an interrupted run may have stopped before scoring its last epoch
    run_steps(start, total, train_step, save, checkpoint_every=min(spe, CHECKPOINT_STEPS), after_step=end_epoch,
              progress=progress, note=note)
    model.load_state_dict(best_state)
    model.eval()
    report = {"kind": "retrieval", "train_rows": len(train), "valid_rows": len(valid), "config": cfg.to_dict(),
              "distilled_from_teacher": teacher is not None, "world_size": world, "device": device,
              "train_s": round(time.perf_counter() - t0, 2), "best": best, "history": history, **(run_key or {})}

    return write_trained(out, model, tokenizer, report)


def encoder_config(path: Path, option: str) -> dict[str, Any]:
    """The config.json of the encoder folder `path` (read only; `TaskError` for a task model or no model folder)."""
    from nasbert_deploy.teacher import read_model_config, task_head

    config = read_model_config(path, option, TaskError)
    head = task_head(config)
    if head:
        raise TaskError(f"{option} {path} is a task model ({head}); retrieval fine-tunes and distils encoders (a "
                        "`distill` or `export` output, the teacher, a `finetune-teacher` retrieval output)")
    return config


def load_encoder(path: str | Path, option: str, convert: bool) -> tuple[Any, Any]:
    """(encoder, tokenizer) from a local folder, checked cheaply first: a NAS-BERT encoder, or a BERT-family one
    (`convert`: converted exactly into NAS-BERT form, `model.etd.convert_teacher_folder`, so a student trains,
    exports and is timed as the others). A task model (classifier, QA) is refused: retrieval pools token states."""
    from transformers import AutoModel, AutoTokenizer

    from nasbert_deploy.model import modeling  # noqa: F401  (registers model_type "nasbert" with the Auto classes)
    p = Path(path)
    config = encoder_config(p, option)
    try:
        if convert and config.get("model_type") == "bert":
            from nasbert_deploy.model.etd import convert_teacher_folder

            model = convert_teacher_folder(p)
        else:
            model = AutoModel.from_pretrained(str(p), local_files_only=True).float()
        tokenizer = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    except NasBertDeployError:
        raise
    except Exception as exc:  # a damaged folder: transformers raises many kinds; the user needs one line
        raise TaskError(f"cannot load an encoder with its tokenizer from {option} {p}: {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    return model, tokenizer


def finetune_retrieval(
    model_dir: str | Path,
    train: RetrievalData,
    valid: RetrievalData,
    out_dir: str | Path,
    cfg: RetrievalConfig,
    teacher_model: str | Path | None = None,
    progress: ProgressFn | None = None,
    note: NoteFn | None = None,
    device: str = "cpu",
    convert: bool = True,
) -> dict[str, Any]:
    """`finetune` (a student, `convert`: BERT folders in NAS-BERT form) or `finetune-teacher` (`convert` False: the
    encoder keeps its class) on retrieval pairs; with `teacher_model` (an encoder) the KD term joins."""
    teacher = None
    if teacher_model is not None:
        teacher, t_tok = load_encoder(teacher_model, "--teacher-model", convert=False)
    model, tokenizer = load_encoder(model_dir, "--model", convert=convert)
    if teacher is not None and t_tok.get_vocab() != tokenizer.get_vocab():
        raise TaskError(f"--teacher-model {teacher_model} and --model {model_dir} tokenize differently (vocabularies "
                        "differ); retrieval distillation feeds both the same tokens")
    key = {"model": str(model_dir), "task": train.source, "teacher_model": str(teacher_model) if teacher_model else None}
    return train_retrieval(model, tokenizer, train, valid, out_dir, cfg, teacher, progress, key, note, device,
                           teacher_model)
