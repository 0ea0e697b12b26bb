"""`finetune` and `finetune-teacher` on a retrieval task (`{"query", "document"}` pairs): the checks and the run.

The commands (`cli.train_cmd`) route a retrieval `--task` here; the training is `student.retrieval_training`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nasbert_deploy.errors import TaskError

RETRIEVAL_BATCH = 32  # pairs per step when --batch-size is not given (in-batch negatives want more than 16)
DEFAULT_TEACHER = "default"  # `--teacher-model default`: the offline default teacher (frozen MiniLM-L6) distils
RETRIEVAL_TAU = 0.05  # the KD temperature when --temperature is not given (cosine similarities, not logits)


def check_options(refused: dict[str, bool]) -> None:
    """One line, exit 2, for options that have no meaning on a retrieval task (`refused`: option -> given)."""
    given = [k for k, v in refused.items() if v]
    if given:
        raise TaskError(f"{', '.join(given)}: not for a retrieval task (query/document pairs train an encoder with "
                        "in-batch negatives and, with --teacher-model, the teacher's similarity distributions)")


def run(model: Path, task: str, valid: Path | None, valid_fraction: float, out: Path, settings: dict[str, Any],
        teacher_model: Path | None, device: str, student: bool) -> None:
    """Read and check the pairs (before any model is loaded), train, print the report (rank 0)."""
    from nasbert_deploy.cli.common import print_report
    from nasbert_deploy.cli.training_runs import processes
    from nasbert_deploy.student.retrieval import retrieval_splits
    from nasbert_deploy.student.retrieval_training import RetrievalConfig, finetune_retrieval

    if teacher_model is not None and str(teacher_model) == DEFAULT_TEACHER:
        from nasbert_deploy.teacher import default_teacher_path

        teacher_model = default_teacher_path()
    batch = settings.pop("batch_size") or RETRIEVAL_BATCH
    tau = settings.pop("temperature") or RETRIEVAL_TAU
    cfg = RetrievalConfig(batch_size=batch, tau=tau, **settings)  # TaskError for a batch too small to have negatives
    train, val = retrieval_splits(task, valid, valid_fraction, cfg.seed)
    title = "fine-tuning on retrieval pairs" + (" (distilling the teacher)" if teacher_model else "")
    with processes(device) as proc, proc.progress(title) as update:
        report = finetune_retrieval(model, train, val, out, cfg, teacher_model, update, proc.note, proc.device,
                                    convert=student)
    if proc.rank == 0:
        best = {f"best valid {k}": v for k, v in report["best"].items()}
        rows = {"train pairs": report["train_rows"], "valid pairs": report["valid_rows"], "train_s": report["train_s"]}
        print_report(f"fine-tuned for retrieval -> {out}", {**rows, **best})
