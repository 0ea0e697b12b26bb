"""Block-wise distillation of the supernet (NAS-BERT 3.2.1) with progressive shrinking (3.2.2).

Student block n takes the teacher's block n-1 output (cached, width T), maps it to its hidden size
(`Supernet.forward_block`: in_map -> layers -> out_map) and regresses the teacher's block n output
with an MSE over real tokens. Every step trains one sampled path per block; the student embedding
regresses the teacher's embedding output. Blocks never see each other's outputs, so each block
(and the embedding) is an independent *part* with its own optimizer, step counter, survivors and
checkpoint folder: `--blocks 0,2` in one process and `--blocks 1` in another train one supernet.

Determinism (what makes resume exact): the batch of step s and the path sampled for block i at
step s are pure functions of (seed, s, i): no random state is carried between steps. A checkpoint
is therefore weights + AdamW state + JSON (step, survivors, seed): resuming from it replays the
very same steps. Parts are written at every epoch end, every `checkpoint_every` steps and on Ctrl-C
(`model.loop.run_steps`); a part interrupted mid-step keeps its previous checkpoint.

Data parallel (torchrun): every rank samples the same paths (same seed), takes its own slice of
the batch, and averages the gradients of the active path with one all-reduce per part and step.
(A `DistributedDataParallel` wrapper would have to search ~all supernet parameters for unused ones
every step, since one path touches a small fraction of them; this is the same arithmetic.)
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nasbert_deploy.errors import CheckpointError, SpaceError
from nasbert_deploy.model.distributed import allreduce_grads, world_info
from nasbert_deploy.model.loop import lr_factor, run_steps
from nasbert_deploy.model.losses import masked_mse
from nasbert_deploy.space import BlockArch, SearchSpace
from nasbert_deploy.supernet.candidates import CandidateTable, parse_block
from nasbert_deploy.supernet.checkpoints import (
    CANDIDATES_NAME,
    Part,
    existing_part_dir,
    load_part,
    part_finished,
    save_part,
)
from nasbert_deploy.supernet.network import Supernet
from nasbert_deploy.supernet.plan import schedule
from nasbert_deploy.supernet.shrinking import (
    ShrinkConfig,
    block_bins,
    sample_for_scoring,
    score_blocks,
    shrink_bin,
    shrinks_at_epoch_end,
)
from nasbert_deploy.supernet.teacher_cache import TeacherCache, init_embeddings_from_teacher


@dataclass
class TrainConfig:
    """Hyper-parameters. `epochs` 0 = warm-up + the shrink epochs needed; `steps_per_epoch` 0 = one data pass."""

    epochs: int = 0
    steps_per_epoch: int = 0
    batch_size: int = 32
    eval_batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    lr_warmup_steps: int = 100
    grad_clip: float = 1.0
    checkpoint_every: int = 200
    seed: int = 0
    blocks: tuple[int, ...] | None = None
    shrink: ShrinkConfig = field(default_factory=ShrinkConfig)
    latency_batch: int = 1
    latency_seq: int = 128
    init: str = "random"  # or etd-impt / etd-rand: candidates extracted from the teacher (`supernet.etd_init`)


class Reporter:
    """Progress callbacks (the CLI draws a rich progress bar); the default does nothing."""

    def start(self, total_steps: int, done_steps: int) -> None: ...

    def step(self, step: int, losses: dict[str, float]) -> None: ...

    def note(self, text: str) -> None: ...


@dataclass
class TrainResult:
    supernet: Supernet
    steps: int
    finished: bool
    assembled: bool
    waiting_for: list[str]


# ---------------------------------------------------------------- determinism helpers
def batch_indices(step: int, steps_per_epoch: int, n: int, batch: int, rank: int, world: int, seed: int) -> torch.Tensor:
    """Paragraph indices of `rank`'s slice of the batch at `step`: a per-epoch permutation, wrapped."""
    epoch, pos = divmod(step, steps_per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    start = (pos * world + rank) * batch
    return perm[(start + torch.arange(batch)) % n]


def sample_path(survivors: list[list[BlockArch]], seed: int, block: int, step: int) -> BlockArch:
    """The path block `block` trains at `step`: a uniform bin, then a uniform survivor in it."""
    rng = random.Random(f"path-{seed}-{block}-{step}")
    live = [b for b in survivors if b]
    return rng.choice(rng.choice(live))


def _part_prefixes(block: int | None) -> tuple[str, ...]:
    if block is None:
        return ("embeddings.", "embed_adapter.")
    return (f"in_maps.{block}.", f"out_maps.{block}.", f"layers.{block}.")


def _make_part(net: Supernet, name: str, block: int | None, cfg: TrainConfig) -> Part:
    prefixes = _part_prefixes(block)
    params = [p for k, p in net.named_parameters() if k.startswith(prefixes)]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return Part(name, block, params, prefixes, opt)


def run_identity(
    space: SearchSpace, cfg: TrainConfig, steps_per_epoch: int, epochs: int, world: int, n_train: int
) -> dict[str, Any]:
    """What must not change between a checkpoint and its resumption."""
    return {
        "space_hash": space.space_hash(),
        "seed": cfg.seed,
        "batch_size": cfg.batch_size,
        "world_size": world,
        "steps_per_epoch": steps_per_epoch,
        "epochs": epochs,
        "train_paragraphs": n_train,
        "lr": cfg.lr,
        "shrink": cfg.shrink.to_dict(),
        **({"init": cfg.init} if cfg.init != "random" else {}),  # runs from before the option keep their identity
    }


def train_supernet(
    space: SearchSpace,
    train: TeacherCache,
    val: TeacherCache,
    out_dir: str | Path,
    cfg: TrainConfig,
    *,
    teacher_model: Any = None,
    importance: Any = None,
    latency_table: Any = None,
    metadata: dict[str, Any] | None = None,
    reporter: Reporter | None = None,
    device: str = "cpu",
    fp16: bool = False,
    stop_after_step: int | None = None,
) -> TrainResult:
    """Train (or resume) the parts in `cfg.blocks` and, once every part is finished, write the supernet
    (`supernet.safetensors` + `supernet.json`) and `candidates.json` into `out_dir`.

    `importance` (`model.importance.Importance` of `teacher_model`): start every candidate from the teacher
    (`supernet.etd_init`) instead of only the embeddings. `stop_after_step` ends the run after that many steps
    without a final checkpoint (tests simulate a kill).
    """
    rep = reporter or Reporter()
    out = Path(out_dir)
    rank, world = world_info()
    if train.num_blocks != space.num_blocks or train.hidden_size != space.output_dim:
        raise SpaceError(
            f"teacher states have {train.num_blocks} blocks of width {train.hidden_size}; space {space.name!r} "
            f"needs {space.num_blocks} blocks of width {space.output_dim}"
        )
    blocks = sorted(set(cfg.blocks)) if cfg.blocks else list(range(space.num_blocks))
    if any(not 0 <= b < space.num_blocks for b in blocks):
        raise SpaceError(f"--blocks {blocks}: valid block indices are 0..{space.num_blocks - 1}")
    bins = block_bins(space, cfg.shrink, latency_table, cfg.latency_batch, cfg.latency_seq)
    spe, epochs = schedule(cfg, len(train), world, [len(b) for b in bins])  # what `plan.plan_training` announced
    total = epochs * spe
    ident = run_identity(space, cfg, spe, epochs, world, len(train))

    torch.manual_seed(cfg.seed)
    net = Supernet(space).to(device).train()
    if teacher_model is not None and importance is not None:
        from nasbert_deploy.supernet.etd_init import init_supernet_from_teacher

        init_supernet_from_teacher(net, teacher_model, importance)
    elif teacher_model is not None:
        init_embeddings_from_teacher(net, teacher_model)
    parts = ([_make_part(net, "embed", None, cfg)] if 0 in blocks else []) + [
        _make_part(net, f"block{i}", i, cfg) for i in blocks
    ]
    for p in parts:
        p.survivors = [list(b) for b in bins] if p.block is not None else None
        load_part(net, p, out, ident, space)
        if world > 1:
            for t in p.params:
                torch.distributed.broadcast(t.data, 0)
    start = min((p.step for p in parts), default=total)
    rep.start(total, start)
    t_start = time.monotonic()
    base_elapsed = {p.name: p.elapsed_s for p in parts}

    def checkpoint(_done: int = 0) -> None:
        for p in parts:
            p.elapsed_s = base_elapsed[p.name] + time.monotonic() - t_start
        if rank == 0:
            for p in parts:
                if not p.busy:  # a part interrupted mid-step resumes from its previous checkpoint
                    save_part(net, p, out, ident, cfg.seed)

    def train_step(step: int) -> dict[str, float]:
        idx = batch_indices(step, spe, len(train), cfg.batch_size, rank, world, cfg.seed)
        mask = train.attention_mask[idx].to(device)
        epoch, pos = divmod(step + 1, spe)
        shrink = pos == 0 and shrinks_at_epoch_end(epoch - 1, cfg.shrink)
        losses = {}
        for p in parts:
            if p.step != step:
                continue
            p.busy = True
            losses[p.name] = _train_part(net, p, train, idx, mask, step, cfg, world, device)
            if shrink and p.survivors is not None and any(len(b) > cfg.shrink.keep for b in p.survivors):
                _shrink(net, p, val, cfg, epoch - 1, device)
                rep.note(f"epoch {epoch}: {p.name} shrunk to {[len(b) for b in p.survivors]} per bin")
            p.step, p.busy = step + 1, False
        return losses

    def due(done: int) -> None:  # checkpoints at every epoch end and every `checkpoint_every` steps
        if done < end and (done % spe == 0 or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0)):
            checkpoint()

    end = total if stop_after_step is None else min(total, stop_after_step)
    run_steps(start, end, train_step, checkpoint, after_step=due, progress=lambda s, _n, v: rep.step(s, v), note=rep.note)
    if stop_after_step is not None:  # a simulated kill: no final checkpoint
        return TrainResult(net, end, False, False, [])
    checkpoint()  # before the final scoring
    for p in parts:
        if p.block is not None and p.final_losses is None:
            assert p.survivors is not None
            cands = [b for bin_ in p.survivors for b in bin_]
            p.final_losses = dict(zip(cands, score_blocks(net, p.block, cands, val, cfg.eval_batch_size, device)))
        p.done = True
    checkpoint()
    waiting = [] if rank else [n for n in _all_part_names(space) if not part_finished(out, n)]
    assembled = False
    if rank == 0 and not waiting:
        meta = dict(metadata or {})
        meta.update(
            steps=total,
            epochs=epochs,
            steps_per_epoch=spe,
            train=ident,
            latency_source="table" if latency_table is not None else "flops",
            train_wall_s=round(
                max(
                    json.loads((existing_part_dir(out, n) / "state.json").read_text())["elapsed_s"]
                    for n in _all_part_names(space)
                ),
                1,
            ),
            bin_sizes=[len(b) for b in bins],
        )
        assemble(space, out, meta, fp16)
        assembled = True
    return TrainResult(net, total, True, assembled, waiting)


def _train_part(
    net: Supernet, p: Part, train: TeacherCache, idx: torch.Tensor, mask: torch.Tensor, step: int, cfg: TrainConfig,
    world: int, device: str,
) -> float:  # fmt: skip
    """One optimizer step of one part at `step`: the embedding, or the path block `p.block` samples; returns the loss."""
    for g in p.optimizer.param_groups:
        g["lr"] = cfg.lr * lr_factor(step, cfg.lr_warmup_steps)
    p.optimizer.zero_grad(set_to_none=True)
    k = 0 if p.block is None else p.block
    target = train.states[k + (0 if p.block is None else 1)][idx].to(device).float()
    if p.block is None:
        pred = net.embed(train.input_ids[idx].to(device))
    else:
        assert p.survivors is not None
        path = sample_path(p.survivors, cfg.seed, p.block, step)
        pred = net.forward_block(p.block, path, train.states[k][idx].to(device).float(), mask)
    loss = masked_mse(pred, target, mask)
    loss.backward()
    allreduce_grads(p.params, world)
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_([q for q in p.params if q.grad is not None], cfg.grad_clip)
    p.optimizer.step()
    p.last_loss = float(loss.detach())
    return p.last_loss


def _all_part_names(space: SearchSpace) -> list[str]:
    return ["embed"] + [f"block{i}" for i in range(space.num_blocks)]


def _shrink(net: Supernet, p: Part, val: TeacherCache, cfg: TrainConfig, epoch: int, device: str) -> None:
    """One progressive-shrinking step for one block: score E per bin, drop the worse half."""
    assert p.survivors is not None and p.block is not None
    samples = [
        sample_for_scoring(bin_, cfg.shrink, random.Random(f"shrink-{cfg.seed}-{p.block}-{epoch}-{j}"))
        for j, bin_ in enumerate(p.survivors)
    ]
    flat = [b for s in samples for b in s]
    scores = dict(zip(flat, score_blocks(net, p.block, flat, val, cfg.eval_batch_size, device)))
    p.survivors = [shrink_bin(bin_, {b: scores[b] for b in s}, cfg.shrink) for bin_, s in zip(p.survivors, samples)]
    p.shrinks += 1


def assemble(space: SearchSpace, out: Path, metadata: dict[str, Any], fp16: bool = False) -> Path:
    """Join the finished parts in `out/checkpoint/` into `out/supernet.*` and `out/candidates.json`."""
    from safetensors.torch import load_file

    net = Supernet(space)
    state: dict[str, torch.Tensor] = {}
    losses: list[dict[BlockArch, float]] = []
    for name in _all_part_names(space):
        d = existing_part_dir(out, name)
        state.update(load_file(str(d / "weights.safetensors")))
        if name != "embed":
            st = json.loads((d / "state.json").read_text())
            losses.append({parse_block(space, a): float(v) for a, v in st["final_losses"]})
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{out}: parts do not cover the supernet ({len(missing)} missing, {len(unexpected)} unexpected)")
    net.save(out, metadata, fp16=fp16)
    CandidateTable.from_losses(space, losses, metadata).save(out / CANDIDATES_NAME)
    return out
