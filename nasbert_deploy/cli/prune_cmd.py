"""`prune`: structured pruning of heads and FFN neurons of a fine-tuned BERT classifier to a device latency budget.

Thin shell over `nasbert_deploy.prune.run`; heavy imports happen inside the command.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from nasbert_deploy.cli.common import DeviceOpt, SeedOpt, ThreadsOpt, Ticker, choice, console, set_threads
from nasbert_deploy.errors import NasBertDeployError

app = typer.Typer()
ClockName = choice("ClockName", ("wall", "cpu"))


def _opt(*names: str, help: str, **kw: Any) -> Any:
    return typer.Option(*names, help=help, **kw)


@contextmanager
def _progress() -> Iterator[tuple[Callable[[int, int, dict[str, float]], None], Callable[[str, int, int], None]]]:
    """(training progress, profiling progress): a bar on a terminal, plain lines every 30 s otherwise."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    plain, ticker = not console.is_terminal, Ticker()
    cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*cols, TextColumn("{task.fields[info]}"), console=console, transient=True, disable=plain) as prog:
        tasks: dict[str, Any] = {}

        def show(title: str, done: int, total: int, info: str = "") -> None:
            if title not in tasks:
                tasks[title] = prog.add_task(title, total=total, info="")
            prog.update(tasks[title], completed=done, total=total, info=info)
            if plain and ticker.due(done, total, title):
                console.print(f"{title}: {done}/{total} {info}".rstrip(), highlight=False)

        def train(done: int, total: int, values: dict[str, float]) -> None:
            show("training", done, total, " ".join(f"{k} {v:.4g}" for k, v in values.items()))

        def profile(phase: str, done: int, total: int) -> None:
            show(f"profiling: {phase}", done, total)

        yield train, profile


@app.command("prune")
def prune_cmd(
    model: Annotated[Path, _opt("--model", help="Fine-tuned BERT classifier or extractive QA folder (e.g. from "
                                "`finetune-teacher`).")],
    task: Annotated[Path, _opt("--task", help="Training task file (.jsonl/.csv/.tsv with text, optional text_pair, label; "
                               "or a SQuAD v1.1/v2.0 .json file for a QA model).")],
    device: DeviceOpt,
    max_latency_ms: Annotated[float, _opt("--max-latency-ms", help="Latency budget (ms) on --device at --batch x --seq-len.")],
    out: Annotated[Path, _opt("--out", help="Output folder: pruned HF model, onnx/, openvino/, prune_report.json.")],
    valid: Annotated[Path | None, _opt("--valid", help="Validation task file (default: split off 10% of --task).")] = None,
    teacher_model: Annotated[Path | None, _opt("--teacher-model", help="Classifier to distil from (default: --model).")]
    = None,
    table: Annotated[Path | None, _opt("--table", help="Pruning latency table to use, or to write when missing "
                                       "(default: ./profiles/prune/DEVICE-hH-aA-fF-bB-sS.json).")] = None,
    steps: Annotated[int, _opt("--steps", min=1, help="Gate-training steps.")] = 300,
    batch_size: Annotated[int, _opt("--batch-size", min=1, help="Examples per step.")] = 16,
    max_len: Annotated[int, _opt("--max-len", min=2, help="Tokens per training example.")] = 128,
    lr: Annotated[float, _opt("--lr", min=0.0, help="Learning rate of the model weights during gate training.")] = 3e-5,
    gate_lr: Annotated[float, _opt("--gate-lr", min=0.0, help="Learning rate of the gates (log alpha).")] = 0.1,
    lambda_lr: Annotated[float, _opt("--lambda-lr", min=0.0, help="Learning rate of the Lagrange multipliers.")] = 0.05,
    target_warmup: Annotated[float, _opt("--target-warmup", min=0.0, max=1.0,
                                         help="Share of the steps over which the latency target falls to the budget.")] = 0.5,
    distill_weight: Annotated[float, _opt("--distill-weight", min=0.0, max=1.0,
                                          help="KD weight: (1-a) CE + a KL to the teacher's logits.")] = 0.9,
    temperature: Annotated[float, _opt("--temperature", min=0.01, help="KD temperature.")] = 2.0,
    hidden_weight: Annotated[float, _opt("--hidden-weight", min=0.0,
                                         help="Weight of the last-hidden-state MSE to the teacher (0 = off).")] = 0.0,
    finetune_epochs: Annotated[int, _opt("--finetune-epochs", min=0, help="Epochs of fine-tuning after pruning.")] = 1,
    finetune_lr: Annotated[float, _opt("--finetune-lr", min=0.0, help="Learning rate of that fine-tuning.")] = 5e-5,
    batch: Annotated[int, _opt("--batch", min=1, help="Batch of the latency budget and table.")] = 1,
    seq_len: Annotated[int, _opt("--seq-len", min=2, help="Sequence length of the latency budget and table.")] = 128,
    clock: Annotated[ClockName, _opt("--clock", help="Time with wall time, or process CPU time (1-thread devices on a "
                                     "shared, oversubscribed host).")] = ClockName("wall"),
    validate: Annotated[int, _opt("--validate", min=0, help="Whole pruned models timed when a table is profiled.")] = 8,
    holdout: Annotated[int, _opt("--holdout", min=0, help="Of those, held out of the table's scale fit.")] = 5,
    calibrate: Annotated[bool, _opt("--calibrate/--no-calibrate", help="Time the unpruned model on --device first and "
                                    "scale the table to this machine, then time the selected model and, while it is over "
                                    "the budget or well under it, select again (up to 3 timings).")
                         ] = True,
    checkpoint_every: Annotated[int, _opt("--checkpoint-every", min=1, help="Steps between resumable checkpoints.")] = 50,
    seed: SeedOpt = 0,
    threads: ThreadsOpt = 0,
    force: Annotated[bool, _opt("--force", help="Replace a non-empty --out folder.")] = False,
) -> None:
    """Prune attention heads and FFN neurons of a classifier or an extractive QA model with learned L0 gates until it
    meets --max-latency-ms on --device
    (distilling from the unpruned model), fine-tune, export (ONNX, OpenVINO), validate, and measure (resumable)."""
    from nasbert_deploy.fileio import check_output
    from nasbert_deploy.prune.profile import PruneProfileSettings
    from nasbert_deploy.prune.run import PruneRequest, check_request, prune
    from nasbert_deploy.prune.train import GateConfig
    from nasbert_deploy.qa.squad import is_squad_path, squad_splits
    from nasbert_deploy.student.tasks import task_splits

    if device is None:
        raise NasBertDeployError("pass --device NAME (see `nasbert-deploy devices`)")
    if max_latency_ms <= 0 or max_latency_ms != max_latency_ms or max_latency_ms == float("inf"):
        raise NasBertDeployError(f"--max-latency-ms must be a positive number of milliseconds, got {max_latency_ms:g}")
    check_output(out, "dir", force)
    if table is not None:
        check_output(table, "file", force=True, option="--table")
    if is_squad_path(task):  # extractive QA: SQuAD v1.1 / v2.0 files
        train, val = squad_splits(task, valid, 0.1)
    else:
        train, val = task_splits(str(task), valid, 0.1)
    gates = GateConfig(steps=steps, batch_size=batch_size, max_len=max_len, lr=lr, gate_lr=gate_lr, lambda_lr=lambda_lr,
                       target_warmup=target_warmup, distill_weight=distill_weight, temperature=temperature,
                       hidden_weight=hidden_weight, checkpoint_every=checkpoint_every, seed=seed)
    profile = PruneProfileSettings(batch=batch, seq_len=seq_len, validate=validate, holdout=min(holdout, validate),
                                   clock=clock.value, seed=seed)
    req = PruneRequest(model=model, train=train, valid=val, out=out, spec=device, max_latency_ms=max_latency_ms,
                       gates=gates, finetune_epochs=finetune_epochs, finetune_lr=finetune_lr, teacher_model=teacher_model,
                       table_path=table, profile=profile, calibrate=calibrate)
    check_request(req)
    set_threads(threads)
    with _progress() as (train_progress, profile_progress):
        report = prune(req, train_progress, note=console.print, profile_progress=profile_progress,
                       step=lambda s: console.print(f"[dim]{s}[/]"))
    _print(report, out)


def _print(report: dict[str, Any], out: Path) -> None:
    from rich.table import Table

    from nasbert_deploy.prune.run import summary_rows

    t = Table(title=f"pruned -> {out} ({report['device']}, batch {report['batch']} x seq {report['seq_len']})",
              show_header=False)
    for k, v in summary_rows(report).items():
        t.add_row(k, str(v))
    console.print(t)
