"""The final student: the searched architecture, weights inherited from the start (the supernet, or extracted from
the encoder for ETD), distilled on the whole task
from the teacher (`student.finetune.train_classifier`: resumable, best validation macro-F1 kept), scored on the
valid split (accuracy, macro-F1, loyalty to the teacher), and its encoder exported through the normal export path
(`export.pipeline.export_model`: ONNX / OpenVINO, numeric validation, predicted vs measured latency report).

    out/student/   the task classifier (transformers folder, loads with AutoModelForSequenceClassification)
    out/export/    the encoder export with report.json (the classifier head -- mean pooling and one Linear --
                   stays in out/student; it is not part of the ONNX graph)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nasbert_deploy.devices import DeviceSpec
from nasbert_deploy.student.finetune import FinetuneConfig, predict_logits, train_classifier
from nasbert_deploy.student.metrics import evaluate_logits
from nasbert_deploy.student.tasks import TaskData
from nasbert_deploy.tasksearch.proxy import classifier_from_supernet


def distill_final(arch: str, net: Any, tokenizer: Any, train: TaskData, valid: TaskData, labels: list[str],
                  teacher_model: Path, out_dir: Path, cfg: FinetuneConfig, logits_dir: Path, progress: Any = None,
                  note: Any = None, start_key: dict[str, Any] | None = None,
                  transfer: list[str] | None = None) -> dict[str, Any]:
    """Distil `arch` (from `net`, a `Supernet` or a `tasksearch.start` / `tasksearch.distilled` start) on `train` with
    the teacher's logits (cached in `logits_dir`); write `out_dir`; return the finetune report plus the valid-split
    scores against the teacher. `start_key` (`Prepared.start_key`) joins the resume key of the distillation's
    checkpoint; `transfer`: unlabelled texts the teacher labels, KD-only rows of every epoch."""
    from nasbert_deploy.tasksearch.distilled import corpus_digest
    from nasbert_deploy.tasksearch.loop import teacher_logits

    logits_dir.mkdir(parents=True, exist_ok=True)
    t_train = teacher_logits(teacher_model, train, labels, logits_dir / "teacher_train.safetensors", "train", cfg.max_len)
    t_valid = teacher_logits(teacher_model, valid, labels, logits_dir / "teacher_valid.safetensors", "valid", cfg.max_len)
    extra, key = None, {"arch": arch, "task": train.source, "teacher_model": str(teacher_model), **(start_key or {})}
    if transfer:
        rows = TaskData(tuple(transfer), ("",) * len(transfer), None, "transfer")
        digest = corpus_digest(transfer)
        extra = (rows, teacher_logits(teacher_model, rows, labels, logits_dir / "teacher_transfer.safetensors",
                                      f"transfer_{digest}", cfg.max_len))
        key["transfer"] = digest
    model = classifier_from_supernet(net, arch, labels, cfg.seed)
    report = train_classifier(model, tokenizer, train, valid, out_dir, cfg, t_train, progress, key, note, transfer=extra)
    y = valid.label_ids({n: i for i, n in enumerate(labels)})
    scores = evaluate_logits(y, predict_logits(model, tokenizer, valid, max_len=cfg.max_len), t_valid)
    return {**report, "valid": scores.to_dict(), "model": model}


def export_options(spec: DeviceSpec, budget_ms: float, batch: int, seq_len: int) -> Any:
    """Export options for `spec`: the artefact it runs (ONNX; + OpenVINO IR; INT8 / fp16 as the device needs)."""
    from nasbert_deploy.export.pipeline import ExportOptions

    formats = ("onnx", "openvino") if spec.runtime == "openvino" else ("onnx",)
    return ExportOptions(formats=formats, int8=spec.precision == "int8", fp16=spec.precision == "fp16" and
                         spec.runtime == "openvino", batch=batch, seq_len=seq_len, budget_ms=(budget_ms,))


def export_student(model: Any, tokenizer: Any, out_dir: Path, spec: DeviceSpec, budget_ms: float, batch: int, seq_len: int,
                   weights: dict[str, Any], on_step: Any = None) -> dict[str, Any]:
    """Export the encoder of `model` (a classifier's, or `model` itself for a retrieval encoder) to `out_dir` with
    validation and the latency report; the report dict."""
    from nasbert_deploy.export.pipeline import export_model

    encoder = getattr(model, "nasbert", model)
    return export_model(encoder, out_dir, tokenizer, spec, export_options(spec, budget_ms, batch, seq_len), weights,
                        on_step=on_step)


def summary(report: dict[str, Any], search_predicted_ms: float) -> dict[str, Any]:
    """The export report's latency line: the search table's prediction, the export's own (the device's table by
    name, as `export` finds it: None when that table does not cover the space), the measured median and p90 (ms),
    the over-budget / over-prediction flags, whether validation passed, and the machine."""
    lat = report.get("latency", {})
    measured = lat.get("measured") or {}
    return {"predicted_ms": search_predicted_ms, "export_predicted_ms": lat.get("predicted_ms"),
            "measured_ms": measured.get("median_ms"), "measured_p90_ms": measured.get("p90_ms"),
            "latency_flags": report.get("latency_flags", []), "validation_passed": report.get("validation", {}).get("passed"),
            "machine": report.get("machine")}
