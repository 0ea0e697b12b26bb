"""What a supernet training run will do, said before it starts: steps, epochs, shrinks, time and disk.

    plan = plan_training(space, cfg, n_train=3872, n_paragraphs=4000, seq_len=64, bin_sizes=[47, 47, ...])
    check_plan(plan, cfg)          # refuses options that contradict each other (`SpaceError`)
    for line in plan.lines(): print(line)

`schedule` is the one place the steps per epoch and the number of epochs are derived (`blockwise.train_supernet`
uses it too), so the plan is the run. The time is a rough guess scaled from the shipped supernet's run
(`REFERENCE`); the disk figures are exact sizes of what the run writes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from nasbert_deploy.errors import SpaceError
from nasbert_deploy.space import MINILM, SearchSpace
from nasbert_deploy.supernet.shrinking import shrink_schedule

# the default supernet of 2026-11-21 (docs/supernet.md): 4,000 steps, batch 32 x 64 tokens, minilm space, one CPU core,
# 1,139 s of training, shrinking and final scoring
REFERENCE = {"space": MINILM, "batch": 32, "seq_len": 64, "step_s": 1139.0 / 4000}


def schedule(cfg: Any, n_train: int, world: int, bin_sizes: list[int]) -> tuple[int, int]:
    """(steps per epoch, epochs): `cfg.steps_per_epoch` or one pass over `n_train` paragraphs at `cfg.batch_size`
    per process; `cfg.epochs` or the warm-up plus the shrink epochs needed to bring every bin down to `keep`."""
    spe = cfg.steps_per_epoch or max(1, math.ceil(n_train / (cfg.batch_size * world)))
    needed = len(shrink_schedule(bin_sizes, cfg.shrink)) - 1
    epochs = cfg.epochs or max(1, cfg.shrink.warmup_epochs + needed)
    return spe, epochs


def part_params(space: SearchSpace) -> dict[str, int]:
    """Parameters of each part of `Supernet(space)` (tested equal): 'embed' (embeddings and adapter) and
    'block<i>' (its maps and every candidate of its layers)."""
    t, e = space.output_dim, space.embed_dim
    emb = (space.vocab_size + space.max_positions + space.type_vocab_size) * e + 2 * e + (e * t + t if e != t else 0)
    maps = sum(2 * t * h + h + t for h in space.hidden_sizes)
    layers = space.layers_per_block * sum(space.op_params(op, h) for h in space.hidden_sizes for op in space.layer_ops)
    return {"embed": emb, **{f"block{i}": maps + layers for i in range(space.num_blocks)}}


@dataclass(frozen=True)
class TrainPlan:
    """The run in numbers (sizes in MB, time in s); `bins_end`: candidates per bin after the planned shrinks."""

    steps_per_epoch: int
    epochs: int
    warmup_epochs: int
    shrinks_needed: int
    shrinks_planned: int
    bins_start: list[int]
    bins_end: list[int]
    keep: int
    batch: int
    world: int
    train_paragraphs: int
    estimated_s: float
    checkpoint_mb: float
    cache_mb: float
    supernet_mb: float

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def reaches_keep(self) -> bool:
        return self.shrinks_planned >= self.shrinks_needed

    def lines(self) -> list[str]:
        """What will happen, for people: steps, time, disk, and a warning when shrinking stops short."""
        why = f"warm-up {self.warmup_epochs} + {self.shrinks_needed} shrink epochs to reach --keep {self.keep} per bin"
        out = [
            f"plan: {self.total_steps:,} steps = {self.epochs} epochs x {self.steps_per_epoch} steps "
            f"({why if self.reaches_keep and self.epochs == self.warmup_epochs + self.shrinks_needed else 'as given'}), "
            f"batch {self.batch} x {self.world} process(es), {self.train_paragraphs:,} training paragraphs",
            f"expected: about {_duration(self.estimated_s)} of training on one CPU core (a rough guess from the shipped "
            f"supernet's run), after one teacher pass over the paragraphs",
            f"disk: about {self.checkpoint_mb + self.cache_mb + self.supernet_mb:,.0f} MB: checkpoints "
            f"{self.checkpoint_mb:,.0f} MB (weights + AdamW state, kept for resuming), teacher states "
            f"{self.cache_mb:,.0f} MB, supernet {self.supernet_mb:,.0f} MB",
        ]
        if not self.reaches_keep:
            out.append(
                f"warning: {self.epochs} epochs allow {self.shrinks_planned} of the {self.shrinks_needed} shrinks needed "
                f"to reach --keep {self.keep} per bin: bins will end with up to {max(self.bins_end)} candidates "
                f"(--epochs {self.warmup_epochs + self.shrinks_needed}, or --epochs 0, shrinks all the way)"
            )
        return out


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def plan_training(
    space: SearchSpace, cfg: Any, n_train: int, n_paragraphs: int, seq_len: int, bin_sizes: list[int], world: int = 1,
    fp16: bool = False,
) -> TrainPlan:
    """The plan of training `space` with `cfg` (a `blockwise.TrainConfig`) on `n_train` of `n_paragraphs` paragraphs
    of `seq_len` tokens, bins of `bin_sizes` candidates per block, `world` processes."""
    spe, epochs = schedule(cfg, n_train, world, bin_sizes)
    sched = shrink_schedule(bin_sizes, cfg.shrink)
    planned = max(0, epochs - cfg.shrink.warmup_epochs)
    ref = REFERENCE
    largest = space.largest_arch("ffn")
    ref_space: SearchSpace = ref["space"]
    work = cfg.batch_size * seq_len * space.flops(largest, seq_len)
    ref_work = ref["batch"] * ref["seq_len"] * ref_space.flops(ref_space.largest_arch("ffn"), ref["seq_len"])
    parts = part_params(space)
    blocks = cfg.blocks or range(space.num_blocks)  # block 0's process also trains the embedding
    trained = sum(parts[f"block{i}"] for i in blocks) + (parts["embed"] if 0 in blocks else 0)
    state_bytes = n_paragraphs * seq_len * (space.output_dim * (space.num_blocks + 1) * 2 + 16)
    return TrainPlan(
        steps_per_epoch=spe, epochs=epochs, warmup_epochs=cfg.shrink.warmup_epochs, shrinks_needed=len(sched) - 1,
        shrinks_planned=min(planned, len(sched) - 1), bins_start=list(bin_sizes), bins_end=sched[min(planned, len(sched) - 1)],
        keep=cfg.shrink.keep, batch=cfg.batch_size, world=world, train_paragraphs=n_train,
        estimated_s=epochs * spe * ref["step_s"] * work / ref_work,
        checkpoint_mb=trained * 12 / 1e6, cache_mb=state_bytes / 1e6,
        supernet_mb=sum(parts.values()) * (2 if fp16 else 4) / 1e6,
    )  # fmt: skip


def check_plan(plan: TrainPlan, cfg: Any) -> None:
    """Refuse options that contradict each other, before anything is written (`SpaceError` saying what to change)."""
    w = plan.warmup_epochs
    if cfg.epochs and cfg.epochs <= w and plan.shrinks_needed:
        raise SpaceError(
            f"--epochs {cfg.epochs} ends before the first shrink (after --warmup-epochs {w}): no block would be shrunk; "
            f"give --epochs {w + plan.shrinks_needed} (or 0: warm-up plus every shrink), or a lower --warmup-epochs"
        )
    if plan.batch * plan.world > plan.train_paragraphs:
        raise SpaceError(
            f"--batch-size {plan.batch} x {plan.world} process(es) exceeds the {plan.train_paragraphs} training paragraphs "
            "(--paragraphs minus --val-size): every step would repeat paragraphs; lower --batch-size or give more text"
        )
