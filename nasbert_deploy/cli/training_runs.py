"""What the training commands share: the torchrun process group and who prints, the fine-tuning report, and extractive
QA fine-tuning (a SQuAD `--task` of `finetune` / `finetune-teacher`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nasbert_deploy.cli.common import console, print_report, training_progress
from nasbert_deploy.errors import TaskError


@dataclass(frozen=True)
class Processes:
    """Where a training command runs: its torchrun rank and world size, the torch device, and who prints (rank 0)."""

    rank: int
    world: int
    device: str

    @property
    def note(self) -> Callable[..., None] | None:
        return console.print if self.rank == 0 else None

    @contextlib.contextmanager
    def progress(self, title: str) -> Iterator[Callable[[int, int, dict[str, float]], None] | None]:
        """`training_progress` on rank 0; the other ranks show nothing."""
        if self.rank:
            yield None
            return
        with training_progress(title) as update:
            yield update


@contextlib.contextmanager
def processes(device: str) -> Iterator[Processes]:
    """The torchrun process group (when launched by torchrun) and the training device, for the block.
    `--device cuda` without a visible GPU: one line, exit 2, before any model is loaded."""
    from nasbert_deploy.model.distributed import distributed_run

    with distributed_run(device) as (rank, world, dev):
        if rank == 0 and world > 1:
            console.print(f"training on {world} processes (device {dev} on rank 0)", highlight=False)
        yield Processes(rank, world, dev)


def print_finetune(title: str, report: dict[str, Any]) -> None:
    best = {f"best valid {k}": v for k, v in report["best"].items()}
    sizes = {"train rows": report["train_rows"], "valid rows": report["valid_rows"], "train_s": report["train_s"]}
    if report.get("world_size", 1) > 1:
        sizes["processes"] = report["world_size"]
    print_report(title, {**sizes, **best})


def squad_task(task: str | Path) -> bool:
    from nasbert_deploy.qa.squad import is_squad_path

    return is_squad_path(task)


def run_qa(model: Path, task: str, valid: Path | None, valid_fraction: float, out: Path, cfg: Any,
           teacher_model: Path | None, device: str, fresh: bool | None) -> None:
    """Extractive QA (a SQuAD `--task`): fine-tune a QA model, or an encoder under a fresh start/end head
    (`fresh` None: fresh unless `model` already is a QA model). One process; `--device` cpu or cuda."""
    from nasbert_deploy.model.distributed import world_info
    from nasbert_deploy.qa.squad import squad_splits
    from nasbert_deploy.qa.train import check_qa_folder, finetune_qa, is_qa_config

    if world_info()[1] > 1:
        raise TaskError("question answering trains in one process; run it without torchrun")
    if fresh is None:
        fresh = not is_qa_config(check_qa_folder(model, trained=False))
    train, val = squad_splits(task, valid, valid_fraction)
    with processes(device) as run, run.progress("fine-tuning (extractive QA)") as update:
        report = finetune_qa(model, train, val, out, cfg, teacher_model, update, run.note, fresh_head=fresh,
                             device=run.device)
    print_finetune(f"fine-tuned QA model -> {out}", report)
