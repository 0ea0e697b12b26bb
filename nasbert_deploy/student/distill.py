"""Pre-training-stage distillation of a standalone `NasBertModel` from a teacher encoder (NAS-BERT 3.3).

The student starts from its supernet's inherited weights (`Supernet.extract(arch)`), from random
weights, or from an exported HF folder, and regresses the teacher on unlabelled text:

- hidden-state loss: MSE between the student's `last_hidden_state` (already in the teacher's
  width T) and the teacher's last hidden state, averaged over real tokens and T;
- optional block-boundary losses: each block's output (width h_i) goes through a training-only
  `Linear(h_i, T)` (initialised from the supernet's `out_map`, so an inherited student starts with
  the supernet's block outputs) and regresses `teacher.block_targets`; the last block is covered by
  the hidden-state loss;
- a layer map (`DistillConfig.layer_map`, Jiao et al. 2020; searched by `nasbert_deploy.layermap`) replaces
  the uniform block boundaries: block i regresses the teacher's layer `layer_map[i]` (0: no loss on that
  block), and the final output regresses layer `layer_map[-1]` (`teacher.mapped_targets`);
- optional prediction-layer loss: KL between the teacher's masked-LM head applied to the teacher's
  and to the student's last hidden states (temperature tau, scaled by tau^2), over real tokens.
  Only for teachers with an MLM head (MiniLM sentence-transformers has none).

Resumable: `<out>.ckpt/` (safetensors, optimizer via `torch.save` / `torch.load(weights_only=True)`,
JSON state) is written atomically every `checkpoint_every` steps and on Ctrl-C (see docs/training.md).
Runs under torchrun on several processes or GPUs as the supernet training does (`model.distributed`).
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nasbert_deploy.errors import CheckpointError, TeacherError
from nasbert_deploy.fileio import atomic_dir, write_json_atomic
from nasbert_deploy.model.distributed import allreduce_grads, broadcast_params, on_rank_zero, sum_over_ranks, world_info
from nasbert_deploy.model.loop import (
    NoteFn,
    ProgressFn,
    checkpoint_dir,
    load_checkpoint_on_every_rank,
    optimizer_state,
    restore_optimizer_state,
    run_steps,
    save_checkpoint,
    warmup_decay,
)
from nasbert_deploy.model.losses import (
    cross_similarity_kl,
    embedding_cosine_loss,
    head_tail_views,
    masked_kl,
    masked_mean_pool,
    masked_mse,
    similarity_kl,
)
from nasbert_deploy.model.remote_code import write_remote_code
from nasbert_deploy.student.build import Student, build_student, make_student  # noqa: F401  (their former home)
from nasbert_deploy.student.tasks import CorpusBatches
from nasbert_deploy.teacher import Teacher, block_targets, check_compatible, check_layer_map, mapped_targets, split_layers

REPORT_NAME = "distill_report.json"
LAYER_MAP_BLOCK_WEIGHT = 1.0  # the block-boundary weight a layer map turns an intermediate_weight of 0 into


CURVE_BATCHES = 20  # held-out batches per point of `heldout_curve` (the final `heldout` uses up to 50)

@dataclass(frozen=True)
class DistillConfig:
    """Hyper-parameters. Loss weights of 0 switch a loss off; `steps` may grow on resume.

    `layer_map`: one teacher layer per student block (see the module docstring); None = the uniform split
    (`teacher.split_layers`). A map exists to supervise the inner blocks, so with a map an `intermediate_weight`
    of 0 becomes `LAYER_MAP_BLOCK_WEIGHT` (1.0); to leave a block out, map it to 0.
    """

    steps: int = 2000
    batch_size: int = 16
    seq_len: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    hidden_weight: float = 1.0
    intermediate_weight: float = 0.0
    prediction_weight: float = 0.0
    temperature: float = 1.0
    embedding_weight: float = 0.0
    similarity_weight: float = 0.0
    similarity_temperature: float = 0.05
    query_weight: float = 0.0  # query-to-document similarity KL: each paragraph's head against the batch's tails
    query_len: int = 12
    checkpoint_every: int = 200
    seed: int = 0
    layer_map: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.layer_map is not None:
            object.__setattr__(self, "layer_map", tuple(int(e) for e in self.layer_map))
            if not self.intermediate_weight:
                object.__setattr__(self, "intermediate_weight", LAYER_MAP_BLOCK_WEIGHT)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def resume_key(self) -> dict[str, Any]:
        """Settings a checkpoint must share with the current run (steps and checkpointing may change).
        Without a layer map the key is the one checkpoints had before maps existed, so they still resume."""
        d = self.to_dict()
        for k in ("steps", "checkpoint_every"):
            d.pop(k)
        if d["layer_map"] is None:
            d.pop("layer_map")
        if not d["query_weight"]:  # runs without the query term keep the key they had before it existed
            d.pop("query_weight")
            d.pop("query_len")
        return d


def load_mlm_head(teacher: Teacher) -> nn.Module | None:
    """The teacher's masked-LM head, mapping (b, t, T) hidden states to (b, t, vocab) logits; None if it has none."""
    archs = getattr(teacher.model.config, "architectures", None) or []
    if not any(a.endswith(("ForMaskedLM", "ForPreTraining")) for a in archs):
        return None
    from transformers import AutoModelForMaskedLM

    mlm = AutoModelForMaskedLM.from_pretrained(str(teacher.path), local_files_only=True).eval()
    for name in ("cls", "lm_head", "vocab_projector"):
        head = getattr(mlm, name, None)
        if isinstance(head, nn.Module):
            for p in head.parameters():
                p.requires_grad_(False)
            return head
    return None


def teacher_targets(
    teacher: Teacher, ids: torch.Tensor, mask: torch.Tensor, num_blocks: int, cfg: DistillConfig
) -> list[torch.Tensor | None]:
    """The teacher states the losses regress: `block_targets` (uniform), or `mapped_targets` under `cfg.layer_map`."""
    if cfg.layer_map is None:
        return block_targets(teacher, ids, mask, num_blocks)
    return mapped_targets(teacher, ids, mask, cfg.layer_map)


def distill_layer_map(cfg: DistillConfig, num_blocks: int, num_layers: int) -> list[int]:
    """The teacher layer each block regresses under `cfg` (the uniform split when it has no map), for reports."""
    return list(cfg.layer_map) if cfg.layer_map is not None else split_layers(num_layers, num_blocks)


def split_batch(
    batch: dict[str, torch.Tensor], cfg: DistillConfig, tokenizer: Any
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """(the batch the losses see, the query batch or None). With the query term each paragraph is cut into a head
    of `cfg.query_len` tokens (the query) and the rest (its document, what every other loss is computed on):
    `losses.head_tail_views`."""
    if not cfg.query_weight:
        return batch, None
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    h_ids, h_mask, t_ids, t_mask = head_tail_views(batch["input_ids"], batch["attention_mask"], cfg.query_len,
                                                   int(cls_id or 0), int(sep_id or 0))
    return {"input_ids": t_ids, "attention_mask": t_mask}, {"input_ids": h_ids, "attention_mask": h_mask}


def distill_losses(
    student: Student,
    teacher: Teacher,
    batch: dict[str, torch.Tensor],
    cfg: DistillConfig,
    mlm_head: nn.Module | None,
    targets: list[torch.Tensor | None] | None = None,
    query: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Weighted losses for one batch, plus their sum under 'total'. Batch tensors are (b, t) int64.

    `targets` are the teacher's states when already computed (`teacher_targets`); a None entry (a block a layer
    map sends to 0) gets no block loss, and 'blocks' is the mean over the blocks that have one. `query`: the heads
    of `split_batch` (the batch then holds their documents), for the query term.
    """
    ids, mask = batch["input_ids"], batch["attention_mask"]
    n_blocks = len(student.model.blocks)
    if targets is None:
        targets = teacher_targets(teacher, ids, mask, n_blocks, cfg)  # [emb, target of block 1, ..., of block N]
    final = targets[-1]  # (b, t, T): what the final output regresses
    assert final is not None  # check_layer_map: the last entry of a map is >= 1
    block_out: list[torch.Tensor] = []  # each block's output: the model's (b*t, h) tokens back as (b, t, h)
    hooks = [b.register_forward_hook(lambda _m, _i, o: block_out.append(o.reshape(*ids.shape, -1))) for b in student.model.blocks]
    try:
        hidden = student.model(ids, mask).last_hidden_state  # (b, t, T)
    finally:
        for h in hooks:
            h.remove()
    losses: dict[str, torch.Tensor] = {}
    if cfg.hidden_weight:
        losses["hidden"] = cfg.hidden_weight * masked_mse(hidden, final, mask)
    supervised = [i for i in range(n_blocks - 1) if targets[i + 1] is not None]
    if cfg.intermediate_weight and supervised:
        inter = [masked_mse(student.projections[i](block_out[i]), targets[i + 1], mask) for i in supervised]
        losses["blocks"] = cfg.intermediate_weight * torch.stack(inter).mean()
    if cfg.prediction_weight and mlm_head is not None:
        with torch.no_grad():
            t_logits = mlm_head(final)
        losses["prediction"] = cfg.prediction_weight * masked_kl(mlm_head(hidden), t_logits, mask, cfg.temperature)
    if cfg.embedding_weight or cfg.similarity_weight or cfg.query_weight:
        s_emb, t_emb = masked_mean_pool(hidden, mask), masked_mean_pool(final, mask)  # (b, T) sentence embeddings
        if cfg.embedding_weight:
            losses["embedding"] = cfg.embedding_weight * embedding_cosine_loss(s_emb, t_emb)
        if cfg.similarity_weight:
            losses["similarity"] = cfg.similarity_weight * similarity_kl(s_emb, t_emb, cfg.similarity_temperature)
        if cfg.query_weight and query is not None:
            losses["query"] = cfg.query_weight * query_loss(student, teacher, query, s_emb, t_emb, cfg)
    losses["total"] = torch.stack(list(losses.values())).sum()
    return losses


def query_loss(student: Student, teacher: Teacher, query: dict[str, torch.Tensor], s_doc: torch.Tensor,
               t_doc: torch.Tensor, cfg: DistillConfig) -> torch.Tensor:
    """The query-to-document similarity KL: the heads (`split_batch`), embedded alone by student and teacher,
    against every document embedding of the batch (`s_doc`, `t_doc`; `losses.cross_similarity_kl`)."""
    q_ids, q_mask = query["input_ids"], query["attention_mask"]
    with torch.no_grad():
        t_query = masked_mean_pool(teacher.model(input_ids=q_ids, attention_mask=q_mask).last_hidden_state, q_mask)
    s_query = masked_mean_pool(student.model(q_ids, q_mask).last_hidden_state, q_mask)
    return cross_similarity_kl(s_query, s_doc, t_query, t_doc, cfg.similarity_temperature)


@torch.no_grad()
def heldout_losses(
    student: Student, teacher: Teacher, texts: Sequence[str], cfg: DistillConfig, max_batches: int = 50
) -> dict[str, float]:
    """Mean unweighted losses on held-out text: 'hidden' (MSE), for multi-block students 'blocks', and the
    sentence-embedding terms 'embedding' (1 - cosine to the teacher's mean-pooled output) and 'similarity'
    (in-batch similarity KL).

    Also 'hidden_fvu': the hidden MSE over the teacher's variance around its per-dimension mean (real
    tokens of these texts), i.e. the fraction of the teacher's variance the student leaves unexplained
    (1.0 = no better than a constant output).
    """
    was_training = student.model.training
    student.model.eval()
    full = replace(cfg, hidden_weight=1.0, intermediate_weight=1.0, prediction_weight=0.0, embedding_weight=1.0,
                   similarity_weight=1.0, query_weight=1.0 if cfg.query_weight else 0.0)
    sums: dict[str, float] = {}
    s1, s2, n = 0.0, 0.0, 0
    batches = CorpusBatches(texts, teacher.tokenizer, cfg.batch_size, cfg.seq_len, cfg.seed).sequential(max_batches)
    device = next(student.model.parameters()).device
    for batch in batches:
        batch, query = split_batch({k: v.to(device) for k, v in batch.items()}, full, teacher.tokenizer)
        targets = teacher_targets(teacher, batch["input_ids"], batch["attention_mask"], len(student.model.blocks), cfg)
        for k, v in distill_losses(student, teacher, batch, full, None, targets, query).items():
            if k != "total":
                sums[k] = sums.get(k, 0.0) + float(v.detach())
        final = targets[-1]
        assert final is not None
        real = final[batch["attention_mask"].bool()].double()  # (tokens, T)
        s1, s2, n = s1 + real.sum(0), s2 + (real**2).sum(0), n + real.shape[0]
    student.model.train(was_training)
    out = {k: v / len(batches) for k, v in sums.items()}
    variance = float((s2 / n - (s1 / n) ** 2).mean())  # mean over T of the per-dimension variance
    out["hidden_fvu"] = out["hidden"] / variance if variance > 0 else float("nan")
    return out


def distill(
    student: Student,
    teacher: Teacher,
    corpus: Sequence[str],
    out_dir: str | Path,
    cfg: DistillConfig,
    valid_corpus: Sequence[str] | None = None,
    progress: ProgressFn | None = None,
    metadata: dict[str, Any] | None = None,
    note: NoteFn | None = None,
    device: str = "cpu",
    heldout_every: int = 0,
) -> dict[str, Any]:
    """Distil `student` from `teacher` on `corpus` and write an HF folder (model, tokenizer, report) to `out_dir`.

    `heldout_every` N > 0 (needs `valid_corpus`): the held-out losses at step 0 and every N steps, on the first
    `CURVE_BATCHES` batches of `valid_corpus`, kept in the checkpoint and reported as `heldout_curve` (a convergence
    curve; evaluation only: the training run is the same with or without it).

    Resumes from `<out_dir>.ckpt/` when it holds a checkpoint of the same run (and says so through
    `note`). Returns the report dict. `device`: where teacher, student and batches go ('cpu', 'cuda:0').

    Under torchrun (an initialised process group, `model.distributed`) every rank calls this: rank r trains on
    slice r of each global batch of world x `cfg.batch_size` rows, gradients are averaged before clipping, and
    only rank 0 writes checkpoints, the held-out losses and `out_dir`; every rank returns rank 0's report.
    """
    check_compatible(student.model.config.search_space, teacher)
    if cfg.layer_map is not None:
        check_layer_map(cfg.layer_map, len(student.model.blocks), teacher.num_layers)
    mlm_head = load_mlm_head(teacher) if cfg.prediction_weight else None
    if cfg.prediction_weight and mlm_head is None:
        raise TeacherError(
            f"prediction-layer loss unavailable: the teacher at {teacher.path} has no masked-LM head "
            "(e.g. a sentence-transformers encoder); set the prediction weight to 0"
        )
    rank, world = world_info()
    out = Path(out_dir)
    ckpt = checkpoint_dir(out)
    student.model.to(device)
    student.projections.to(device)
    teacher.model.to(device)
    if mlm_head is not None:
        mlm_head.to(device)
    torch.manual_seed(cfg.seed)
    params = [p for p in student.parameters() if p.requires_grad]
    broadcast_params(params)  # every rank starts from rank 0's weights
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = warmup_decay(opt, cfg.warmup_fraction, cfg.steps)
    arch = student.model.config.arch
    key = {"kind": "distill", "arch": arch, "config": cfg.resume_key(), "teacher": str(teacher.path),
           **({"world_size": world} if world > 1 else {})}  # one process keeps the key it had before torchrun support
    start, history, elapsed, curve = 0, [], 0.0, []
    loaded = load_checkpoint_on_every_rank(ckpt, key)
    if loaded is not None:
        student.load_state(loaded.tensors)
        restore_optimizer_state(opt, sched, loaded.saved)
        start, history, elapsed = loaded.state["step"], loaded.state["history"], loaded.state["elapsed_s"]
        curve = loaded.state.get("heldout_curve", [])
    track = bool(heldout_every and valid_corpus and rank == 0)

    def point(step: int) -> None:
        if track and step % heldout_every == 0 and not any(p["step"] == step for p in curve):
            curve.append({"step": step, **heldout_losses(student, teacher, valid_corpus or (), cfg, CURVE_BATCHES)})

    point(start)
    batches = CorpusBatches(corpus, teacher.tokenizer, cfg.batch_size, cfg.seq_len, cfg.seed, rank, world)
    student.model.train()
    t0 = time.perf_counter() - elapsed

    def train_step(step: int) -> dict[str, float]:
        batch, query = split_batch({k: v.to(device) for k, v in batches.batch(step).items()}, cfg, teacher.tokenizer)
        losses = distill_losses(student, teacher, batch, cfg, mlm_head, query=query)
        opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        allreduce_grads(params, world)  # every rank has the same gradients (same model, full batches)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        values = sum_over_ranks({k: float(v.detach()) / world for k, v in losses.items()})  # the mean over the ranks
        if not math.isfinite(values["total"]):
            raise CheckpointError(f"distillation diverged at step {step + 1} (loss {values['total']}); lower the learning rate")
        history.append([step + 1, values["total"]])
        return values

    def save(step: int) -> None:  # rank 0 only, and no collective: Ctrl-C may reach the ranks at different moments
        if rank == 0:
            state = {"step": step, "history": history, "elapsed_s": time.perf_counter() - t0, "heldout_curve": curve}
            save_checkpoint(ckpt, key, student.state(), optimizer_state(opt, sched), state)

    step = run_steps(start, cfg.steps, train_step, save, checkpoint_every=cfg.checkpoint_every, after_step=point,
                     progress=progress, note=note)
    elapsed = time.perf_counter() - t0
    student.model.eval()
    report: dict[str, Any] = {
        "arch": arch,
        "params": sum(p.numel() for p in student.model.parameters()),
        "init": student.init,
        "teacher": str(teacher.path),
        "config": cfg.to_dict(),
        "distill_layer_map": distill_layer_map(cfg, len(student.model.blocks), teacher.num_layers),
        "steps": step,
        "world_size": world,
        "device": device,
        "train_s": round(elapsed, 2),
        "train_loss_last": float(sum(v for _, v in history[-20:]) / max(1, len(history[-20:]))),
        "history": history[:: max(1, len(history) // 200)],
        **({"heldout_curve": curve, "heldout_curve_batches": CURVE_BATCHES} if track else {}),
        **(metadata or {}),
    }

    def write() -> dict[str, Any]:
        if valid_corpus:
            report["heldout"] = heldout_losses(student, teacher, valid_corpus, cfg)
        with atomic_dir(out) as tmp:
            student.model.save_pretrained(tmp)
            teacher.tokenizer.save_pretrained(tmp)
            write_remote_code(tmp)  # loads with trust_remote_code=True where nasbert-deploy is not installed
            write_json_atomic(tmp / REPORT_NAME, report)
        shutil.rmtree(ckpt, ignore_errors=True)
        return report

    return on_rank_zero(write)
