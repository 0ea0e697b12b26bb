"""Does a compressed encoder keep its teacher's quality? Frozen-embedding scores against a teacher.

For an encoder without a task head (the model `export` writes, a distilled student, the teacher):
- classification task: a linear probe fitted on the training file's embeddings, scored on the
  valid file (accuracy, macro-F1); against a teacher also the teacher's probe, label loyalty
  (same predicted label) and probability loyalty (1 - sqrt(JS)) between the two probes;
- retrieval task: recall@1/@10 and MRR in the pool of the file's documents; against a teacher
  also the teacher's scores and ranking loyalty@10;
- both: the mean cosine between the encoder's and the teacher's embeddings of the same texts
  (when their widths agree).
Each encoder runs on the chosen runtime (torch, onnxruntime, openvino).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from nasbert_deploy.errors import TaskError
from nasbert_deploy.student.embeddings import Embedder, linear_probe
from nasbert_deploy.student.metrics import label_loyalty, probability_loyalty
from nasbert_deploy.student.retrieval import is_retrieval_file, load_retrieval, retrieval_scores, teacher_comparison
from nasbert_deploy.student.tasks import TaskData, label_maps, load_task

PathLike = str | os.PathLike[str]


def _cosine(a: np.ndarray, b: np.ndarray) -> float | None:
    if a.shape != b.shape:
        return None
    return float((a * b).sum(1).mean())  # both are L2-normalised


def probe_scores(
    model: Embedder, train: TaskData, valid: TaskData, teacher: Embedder | None = None, seed: int = 0
) -> dict[str, Any]:
    """Linear-probe scores of `model` (and of `teacher`, with loyalty between the probes)."""
    names = sorted(set(train.labels))
    unknown = sorted(set(valid.labels) - set(names))
    if unknown:
        raise TaskError(
            f"{valid.source} has labels that {train.source} lacks: {', '.join(unknown[:5])}; known: {', '.join(names)}"
        )
    _, label2id = label_maps(names)
    ytr, yva = train.label_ids(label2id), valid.label_ids(label2id)
    xs_va = model.encode(valid.texts)
    res = linear_probe(model.encode(train.texts), ytr, xs_va, yva, seed=seed)
    out: dict[str, Any] = {"kind": "classification", "examples": len(valid), **res.to_dict()}
    if teacher is not None:
        xt_va = teacher.encode(valid.texts)
        t = linear_probe(teacher.encode(train.texts), ytr, xt_va, yva, seed=seed)
        out.update(
            teacher_probe_accuracy=t.accuracy,
            teacher_probe_macro_f1=t.macro_f1,
            kept_accuracy=res.accuracy / t.accuracy if t.accuracy else None,
            label_loyalty=label_loyalty(t.pred, res.pred),
            probability_loyalty=probability_loyalty(t.probs, res.probs),
            cosine_to_teacher=_cosine(xs_va, xt_va),
        )
    return out


def retrieval_quality(
    model: Embedder, path: PathLike, teacher: Embedder | None = None, limit: int | None = None
) -> dict[str, Any]:
    """Retrieval scores of `model` on a `{"query", "document"}` file (and the teacher's, with ranking loyalty)."""
    data = load_retrieval(path, limit)
    q, d = model.encode(data.queries), model.encode(data.documents)
    out: dict[str, Any] = {"kind": "retrieval", "queries": len(data), "pool": len(data.documents)}
    out.update(retrieval_scores(q, d, data.gold))
    if teacher is not None:
        tq, td = teacher.encode(data.queries), teacher.encode(data.documents)
        out.update(teacher_comparison(q, d, tq, td, data.gold, out["mrr"]))
        out["cosine_to_teacher"] = _cosine(np.concatenate([q, d]), np.concatenate([tq, td]))
    return out


def encoder_quality(
    model_dir: PathLike,
    task: PathLike,
    train: PathLike | None = None,
    teacher_dir: PathLike | None = None,
    runtime: str = "torch",
    max_len: int = 128,
    threads: int = 1,
) -> dict[str, Any]:
    """Frozen-embedding quality of the encoder at `model_dir` on `task` (see the module docstring).

    A classification `task` needs `train` (the probe's training file); a retrieval task does not.
    Input files are checked before any model is loaded.
    """
    retrieval = is_retrieval_file(task)
    if retrieval:
        load_retrieval(task, limit=1)
    else:
        if train is None:
            raise TaskError(f"{task} is a classification file: pass --train FILE to fit the linear probe on frozen embeddings")
        train_data, valid_data = load_task(train), load_task(task)
    model = Embedder(model_dir, runtime, max_len=max_len, threads=threads)
    teacher = Embedder(teacher_dir, "torch", max_len=max_len, threads=threads) if teacher_dir is not None else None
    out = retrieval_quality(model, task, teacher) if retrieval else probe_scores(model, train_data, valid_data, teacher)
    out.update(model=str(Path(model_dir)), runtime=runtime, task=str(task))
    if teacher_dir is not None:
        out["teacher"] = str(Path(teacher_dir))
    return out
