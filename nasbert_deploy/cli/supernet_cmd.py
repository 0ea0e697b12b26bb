"""`supernet train` (block-wise distillation + progressive shrinking) and `supernet info`.

The run itself (checks, torchrun set-up, teacher states, training) is `supernet.launch.train_from_corpus`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from nasbert_deploy.cli.common import SpaceName, ThreadsOpt, Ticker, TrainDevice, choice, console, err_console

app = typer.Typer(help="Train and inspect the weight-sharing supernet.", no_args_is_help=True)
SupernetInit = choice("SupernetInit", ("random", "etd-impt", "etd-rand"))  # supernet.etd_init.SUPERNET_INITS, torch-free


class _RichReporter:
    """A rich progress bar on a terminal; one plain line every `log_every_s` seconds in a log file."""

    def __init__(self, progress: Any, rank: int, log_every_s: float = 30.0) -> None:
        self.progress, self.rank, self.task, self.cache_task = progress, rank, None, None
        self.plain = not progress.console.is_terminal
        self.log_every_s, self.last_log, self.total = log_every_s, 0.0, 0
        self.ticker = Ticker(log_every_s)

    def cache(self, done: int, total: int) -> None:
        if self.cache_task is None:
            self.cache_task = self.progress.add_task("teacher states", total=total)
        self.progress.update(self.cache_task, completed=done)
        if self.plain and self.rank == 0 and self.ticker.due(done, total, "cache"):
            self.progress.console.print(f"teacher states: {done} of {total} paragraphs", highlight=False)

    def start(self, total_steps: int, done_steps: int) -> None:
        if self.cache_task is not None:
            self.progress.remove_task(self.cache_task)
            self.cache_task = None
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


def _opt(help: str, flag: str | None = None, **kw: Any) -> Any:
    return typer.Option(*([flag] if flag else []), help=help, **kw)


@app.command("train")
def train(
    corpus: Annotated[Path, _opt("UTF-8 text file, one paragraph per line.")],
    out: Annotated[Path, _opt("Output folder (checkpoints, supernet, candidates.json). Resumes if it has one.")],
    teacher: Annotated[Path | None, _opt("Local Hugging Face encoder folder (default: offline MiniLM-L6).")] = None,
    space: Annotated[SpaceName, _opt("Search space; must match the teacher (hidden, vocab).")] = SpaceName("minilm"),
    device_table: Annotated[Path | None, _opt("Latency table for binning (default: FLOPs as latency proxy).")] = None,
    paragraphs: Annotated[int, _opt("Use the first N paragraphs of the corpus.", min=2)] = 4000,
    val_size: Annotated[int, _opt("Paragraphs held out (the last ones) for shrinking and block losses.", min=1)] = 128,
    seq_len: Annotated[int, _opt("Tokens per paragraph (truncate/pad).", min=2)] = 64,
    epochs: Annotated[int, _opt("Epochs; 0 = warm-up + the shrink epochs needed.", min=0)] = 0,
    steps_per_epoch: Annotated[int, _opt("Steps per epoch; 0 = one pass over the training paragraphs.", min=0)] = 0,
    batch_size: Annotated[int, _opt("Paragraphs per step (per process).", min=1)] = 32,
    lr: Annotated[float, _opt("AdamW learning rate.", min=0.0)] = 1e-3,
    bins: Annotated[int, _opt("B: bins per block by params and latency.", min=1)] = 10,
    per_bin: Annotated[int, _opt("E: candidates scored per bin at each shrink.", min=2)] = 2000,
    keep: Annotated[int, _opt("m: candidates kept per bin.", min=1)] = 10,
    warmup_epochs: Annotated[int, _opt("Epochs before the first shrink.", min=0)] = 3,
    checkpoint_every: Annotated[int, _opt("Steps between checkpoints (also at every epoch end).", min=1)] = 200,
    blocks: Annotated[str | None, _opt("Train only these 0-based blocks, e.g. '0,2' (block 0 includes the embedding).")] = None,
    seed: Annotated[int, _opt("Seed for init, batches and sampled paths.")] = 0,
    init: Annotated[SupernetInit, _opt("random; or every candidate extracted from the teacher's most important "
                                       "(etd-impt) or random (etd-rand) units.")] = SupernetInit("random"),
    device: Annotated[TrainDevice, _opt("Where to train (torchrun: one GPU per process).")] = TrainDevice("auto"),
    threads: ThreadsOpt = 0,
    fp16: Annotated[bool, typer.Option("--fp16/--fp32", help="Store the final supernet weights in fp16.")] = False,
    resume: Annotated[bool, _opt("Require an existing checkpoint in --out (resuming is automatic anyway).", flag="--resume")]
    = False,
    cache_dir: Annotated[Path | None, _opt("Teacher-state cache (default: OUT/teacher-cache).")] = None,
) -> None:
    """Block-wise distillation of the supernet with progressive shrinking; writes the candidate table."""
    from nasbert_deploy.fileio import check_output

    check_output(out, "dir", reuse=True)  # before the heavy imports; `train_from_corpus` checks again for library users
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from nasbert_deploy.model.distributed import process_rank
    from nasbert_deploy.profiling.table import LatencyTable
    from nasbert_deploy.space import get_space
    from nasbert_deploy.supernet.blockwise import TrainConfig
    from nasbert_deploy.supernet.launch import LaunchConfig, parse_blocks, train_from_corpus
    from nasbert_deploy.supernet.shrinking import ShrinkConfig

    launch = LaunchConfig(corpus=corpus, out=out, teacher=teacher, space=space.value, paragraphs=paragraphs,
                          val_size=val_size, seq_len=seq_len, device=device.value, threads=threads, fp16=fp16, resume=resume,
                          cache_dir=cache_dir)
    shrink = ShrinkConfig(bins=bins, per_bin=per_bin, keep=keep, warmup_epochs=warmup_epochs)
    sp = get_space(space.value)
    block_sel = parse_blocks(blocks, sp.num_blocks)
    table = LatencyTable.load(device_table, sp) if device_table is not None else None  # TableError: another space
    cfg = TrainConfig(epochs=epochs, steps_per_epoch=steps_per_epoch, batch_size=batch_size, lr=lr, shrink=shrink,
                      checkpoint_every=checkpoint_every, seed=seed, blocks=block_sel, init=init.value)
    rank = process_rank()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console, disable=rank != 0 or not err_console.is_terminal) as progress:
        reporter = _RichReporter(progress, rank)
        run = train_from_corpus(launch, cfg, table, reporter=reporter, on_cache_progress=reporter.cache)
    if run.rank == 0:
        if run.train.assembled:
            console.print(f"supernet and candidates.json written to {out} ({run.train.steps} steps, {run.wall_s:.0f} s this run)")
        else:
            console.print(f"blocks {list(cfg.blocks or [])} finished; waiting for parts {', '.join(run.train.waiting_for)}")


@app.command("info")
def info(
    supernet: Annotated[Path | None, _opt("Supernet folder (default: the shipped default supernet).")] = None,
) -> None:
    """Space, teacher, steps and candidates per block of a trained supernet (or a run in progress)."""
    from nasbert_deploy.space import SearchSpace
    from nasbert_deploy.supernet.candidates import CandidateTable
    from nasbert_deploy.supernet.default import CANDIDATES_FILE, resolve_supernet_dir
    from nasbert_deploy.supernet.launch import part_states
    from nasbert_deploy.supernet.network import read_meta

    states = part_states(supernet) if supernet is not None else None
    if states is not None:
        _print_in_progress(supernet, states)
        return
    d = resolve_supernet_dir(supernet)
    meta = read_meta(d)
    meta["space"] = SearchSpace.from_dict(meta["space"]).to_dict()  # checked: SpaceError if malformed
    table = CandidateTable.load(d / CANDIDATES_FILE) if (d / CANDIDATES_FILE).is_file() else None
    _print_supernet(d, meta, table)


def _print_in_progress(folder: Path | None, states: list[tuple[str, dict[str, Any]]]) -> None:
    from rich.table import Table

    t = Table(title=f"training in progress: {folder}")
    for col in ("part", "step", "shrinks", "survivors per bin", "done"):
        t.add_column(col)
    for name, st in states:
        surv = " ".join(str(len(b)) if isinstance(b, list) else "?" for b in st.get("survivors") or []) or "-"
        t.add_row(name, str(st["step"]), str(st.get("shrinks", "?")), surv, "yes" if st.get("done") else "no")
    console.print(t)


def _print_supernet(folder: Path, meta: dict[str, Any], table: Any) -> None:
    from rich.table import Table

    md = meta.get("metadata", {})
    sp = meta["space"]
    t = Table(title=f"supernet {folder}", show_header=False)
    t.add_row("space", f"{sp['name']} ({sp['num_blocks']} blocks x {sp['layers_per_block']} layers)")
    for key in ("teacher", "corpus", "paragraphs", "seq_len", "steps", "epochs", "latency_source", "hardware", "train_wall_s"):
        if key in md:
            t.add_row(key, str(md[key]))
    console.print(t)
    if table is None:
        return
    ct = Table(title="candidates per block")
    for col in ("block", "candidates", "best loss", "worst loss", "params"):
        ct.add_column(col, justify="right")
    for i, cands in enumerate(table.blocks):
        losses = [c.loss for c in cands]
        ps = [c.params for c in cands]
        ct.add_row(str(i), str(len(cands)), f"{min(losses):.4f}", f"{max(losses):.4f}", f"{min(ps):,}..{max(ps):,}")
    console.print(ct)
