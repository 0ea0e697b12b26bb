"""`distill`, `finetune`, `finetune-teacher`, `evaluate`: train and score standalone students.

Thin shell over `nasbert_deploy.student.distill` / `.finetune`; heavy imports happen inside commands.
`--task pydoc-sample` (the default) is the shipped pydoc-sections sample (300 train / 100 valid rows).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Any

import typer

from nasbert_deploy.cli.common import console

SAMPLE = "pydoc-sample"


class Init(str, Enum):
    supernet = "supernet"
    random = "random"


class SpaceChoice(str, Enum):
    minilm = "minilm"
    standard = "standard"
    tiny = "tiny"


class RuntimeName(str, Enum):
    torch = "torch"
    onnxruntime = "onnxruntime"
    openvino = "openvino"


@contextmanager
def _progress(title: str) -> Iterator[Callable[[int, int, dict[str, float]], None]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*cols, TextColumn("{task.fields[info]}"), console=console, transient=True) as prog:
        task = prog.add_task(title, total=None, info="")

        def update(step: int, total: int, values: dict[str, float]) -> None:
            info = " ".join(f"{k} {v:.4f}" for k, v in values.items())
            prog.update(task, completed=step, total=total, info=info)

        yield update


def _setup(threads: int) -> None:
    import torch

    if threads > 0:
        torch.set_num_threads(threads)


def _tasks(task: str, valid: Path | None, valid_fraction: float) -> tuple[Any, Any]:
    from nasbert_deploy.student.tasks import load_task, sample_task_path

    train = load_task(sample_task_path("train") if task == SAMPLE else task)
    if valid is not None:
        return train, load_task(valid)
    if task == SAMPLE:
        return train, load_task(sample_task_path("valid"))
    return train.split(valid_fraction)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.2e}" if 0 < abs(v) < 1e-3 else f"{v:.4f}"
    return str(v)


def _print_report(title: str, rows: dict[str, Any]) -> None:
    from rich.table import Table

    t = Table(title=title, show_header=False)
    for k, v in rows.items():
        t.add_row(k, _fmt(v))
    console.print(t)


def _print_finetune(title: str, report: dict[str, Any]) -> None:
    best = {f"best valid {k}": v for k, v in report["best"].items()}
    sizes = {"train rows": report["train_rows"], "valid rows": report["valid_rows"], "train_s": report["train_s"]}
    _print_report(title, {**sizes, **best})


def register(app: typer.Typer) -> None:
    threads_opt = typer.Option(0, min=0, help="torch CPU threads (0 = torch's default).")

    @app.command("distill")
    def distill_cmd(
        out: Path = typer.Option(..., "--out", help="Output HF folder (model, tokenizer, distill_report.json)."),
        corpus: Path = typer.Option(..., "--corpus", help="Unlabelled text, one paragraph per line."),
        arch: str | None = typer.Option(None, "--arch", help="Arch string of the student."),
        from_export: Path | None = typer.Option(None, "--from-export", help="Start from an exported NAS-BERT HF folder."),
        teacher: Path | None = typer.Option(None, "--teacher", help="Teacher HF folder (default: offline MiniLM-L6)."),
        supernet: Path | None = typer.Option(None, "--supernet", help="Supernet checkpoint (default: the shipped one)."),
        init: Init = typer.Option(Init.supernet, "--init", help="Start --arch from supernet weights or random ones."),
        space: SpaceChoice = typer.Option(SpaceChoice.minilm, "--space", help="Search space for --init random."),
        valid_corpus: Path | None = typer.Option(None, "--valid-corpus", help="Held-out text for the reported losses."),
        steps: int = typer.Option(2000, min=1, help="Optimizer steps (raise it and rerun to continue training)."),
        batch_size: int = typer.Option(16, min=1),
        seq_len: int = typer.Option(64, min=2, help="Tokens per paragraph (longer ones are truncated)."),
        lr: float = typer.Option(3e-4, min=0.0),
        hidden_weight: float = typer.Option(1.0, min=0.0, help="Weight of the last-hidden-state MSE."),
        block_weight: float = typer.Option(0.0, min=0.0, help="Weight of the block-boundary MSE losses (0 = off)."),
        prediction_weight: float = typer.Option(0.0, min=0.0, help="Weight of the MLM-head KL loss (teachers with an MLM head)."),
        temperature: float = typer.Option(1.0, min=0.01, help="Temperature of the prediction-layer loss."),
        checkpoint_every: int = typer.Option(200, min=1, help="Steps between resumable checkpoints."),
        seed: int = typer.Option(0),
        threads: int = threads_opt,
    ) -> None:
        """Distil a standalone student from the teacher on unlabelled text (resumable)."""
        from nasbert_deploy.space import get_space
        from nasbert_deploy.student.distill import DistillConfig, build_student, distill
        from nasbert_deploy.supernet.teacher_cache import read_paragraphs
        from nasbert_deploy.teacher import load_teacher

        _setup(threads)
        cfg = DistillConfig(
            steps=steps, batch_size=batch_size, seq_len=seq_len, lr=lr, hidden_weight=hidden_weight,
            intermediate_weight=block_weight, prediction_weight=prediction_weight, temperature=temperature,
            checkpoint_every=checkpoint_every, seed=seed,
        )  # fmt: skip
        texts = read_paragraphs(corpus)
        held_out = read_paragraphs(valid_corpus) if valid_corpus else None
        sp = get_space(space.value) if init == Init.random else None
        student = build_student(arch, from_export, supernet, init.value, sp)
        t = load_teacher(teacher)
        with _progress("distilling") as update:
            report = distill(student, t, texts, out, cfg, held_out, update)
        rows = {k: report[k] for k in ("arch", "params", "init", "steps", "train_s", "train_loss_last")}
        names = {"hidden": "held-out hidden MSE", "blocks": "held-out block MSE", "hidden_fvu": "held-out unexplained variance"}
        rows.update({names.get(k, k): v for k, v in report.get("heldout", {}).items()})
        _print_report(f"distilled -> {out}", rows)

    @app.command("finetune")
    def finetune_cmd(
        model: Path = typer.Option(..., "--model", help="Encoder HF folder (e.g. from `distill`)."),
        out: Path = typer.Option(..., "--out", help="Output classifier folder."),
        task: str = typer.Option(SAMPLE, "--task", help=f"Task file (.jsonl/.csv/.tsv: text, [text_pair], label) or {SAMPLE}."),
        valid: Path | None = typer.Option(None, "--valid", help="Validation task file (default: split off --valid-fraction)."),
        valid_fraction: float = typer.Option(0.1, min=0.01, max=0.9, help="Stratified share held out when no --valid."),
        teacher_model: Path | None = typer.Option(None, "--teacher-model", help="Fine-tuned teacher classifier for task KD."),
        lam: float = typer.Option(0.5, "--lambda", min=0.0, max=1.0, help="KD weight: (1-lambda) CE + lambda KL."),
        temperature: float = typer.Option(1.0, min=0.01, help="KD temperature."),
        epochs: int = typer.Option(5, min=1),
        batch_size: int = typer.Option(16, min=1),
        max_len: int = typer.Option(128, min=2),
        lr: float = typer.Option(2e-4, min=0.0),
        seed: int = typer.Option(0),
        threads: int = threads_opt,
    ) -> None:
        """Fine-tune a student on a labelled task, optionally distilling a fine-tuned teacher (resumable)."""
        from nasbert_deploy.student.finetune import FinetuneConfig, finetune

        _setup(threads)
        train, val = _tasks(task, valid, valid_fraction)
        cfg = FinetuneConfig(
            epochs=epochs, batch_size=batch_size, max_len=max_len, lr=lr, lam=lam, temperature=temperature, seed=seed
        )
        with _progress("fine-tuning") as update:
            report = finetune(model, train, val, out, cfg, teacher_model, update)
        _print_finetune(f"fine-tuned -> {out}", report)

    @app.command("finetune-teacher")
    def finetune_teacher_cmd(
        out: Path = typer.Option(..., "--out", help="Output teacher classifier folder."),
        teacher: Path | None = typer.Option(None, "--teacher", help="Any local HF encoder (default: offline MiniLM-L6)."),
        task: str = typer.Option(SAMPLE, "--task", help=f"Task file (.jsonl/.csv/.tsv) or {SAMPLE}."),
        valid: Path | None = typer.Option(None, "--valid", help="Validation task file."),
        valid_fraction: float = typer.Option(0.1, min=0.01, max=0.9),
        epochs: int = typer.Option(6, min=1),
        batch_size: int = typer.Option(16, min=1),
        max_len: int = typer.Option(128, min=2),
        lr: float = typer.Option(2e-4, min=0.0),
        seed: int = typer.Option(0),
        threads: int = threads_opt,
    ) -> None:
        """Fine-tune the teacher encoder as a sequence classifier (the teacher for task distillation)."""
        from nasbert_deploy.student.finetune import FinetuneConfig, finetune_teacher

        _setup(threads)
        train, val = _tasks(task, valid, valid_fraction)
        cfg = FinetuneConfig(epochs=epochs, batch_size=batch_size, max_len=max_len, lr=lr, seed=seed)
        with _progress("fine-tuning teacher") as update:
            report = finetune_teacher(teacher, train, val, out, cfg, update)
        _print_finetune(f"fine-tuned teacher -> {out}", report)

    @app.command("evaluate")
    def evaluate_cmd(
        model: Path = typer.Option(..., "--model", help="Fine-tuned classifier folder."),
        task: str = typer.Option(SAMPLE, "--task", help=f"Labelled task file, or {SAMPLE} (its valid split)."),
        teacher_model: Path | None = typer.Option(None, "--teacher-model", help="Fine-tuned teacher: adds loyalty scores."),
        runtime: RuntimeName = typer.Option(RuntimeName.torch, "--runtime", help="PyTorch, or the ONNX/OpenVINO export."),
        batch_size: int = typer.Option(64, min=1),
        max_len: int = typer.Option(128, min=2),
        json_out: Path | None = typer.Option(None, "--json", help="Also write the report as JSON."),
        threads: int = threads_opt,
    ) -> None:
        """Accuracy, macro-F1 and, against a teacher, label and probability loyalty."""
        from nasbert_deploy.fileio import write_json_atomic
        from nasbert_deploy.student.finetune import evaluate
        from nasbert_deploy.student.tasks import load_task, sample_task_path

        _setup(threads)
        data = load_task(sample_task_path("valid") if task == SAMPLE else task)
        report = evaluate(model, data, teacher_model, runtime.value, batch_size, max_len)
        rows = {k: v for k, v in report.items() if v is not None and k != "labels"}
        _print_report(f"{model} on {data.source} ({runtime.value})", rows)
        if json_out is not None:
            write_json_atomic(json_out, report)
