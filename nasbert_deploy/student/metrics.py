"""Classification metrics and loyalty to a teacher (numpy only, cheap to import).

- `accuracy`, `macro_f1`: against gold labels (macro-F1 because the running example is imbalanced).
- `label_loyalty`: share of examples where student and teacher predict the same label.
- `probability_loyalty`: 1 - sqrt(JS(p_teacher, p_student)) with natural logarithms, averaged over
  examples (Xu et al., "Beyond Preserved Accuracy: Evaluating Loyalty and Robustness of BERT
  Compression", EMNLP 2021). With natural logs JS lies in [0, ln 2], so the score lies in
  [1 - sqrt(ln 2), 1] = [0.167, 1]; 1 means identical output distributions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from nasbert_deploy.errors import NasBertDeployError


def _labels(y: Sequence[int] | np.ndarray) -> np.ndarray:
    a = np.asarray(y)
    if a.ndim != 1:
        raise NasBertDeployError(f"labels must be a 1-D sequence of class ids, got shape {a.shape}")
    return a.astype(np.int64)


def _same_length(a: np.ndarray, b: np.ndarray) -> None:
    if len(a) != len(b):
        raise NasBertDeployError(f"label sequences differ in length ({len(a)} vs {len(b)}); they must match one to one")
    if len(a) == 0:
        raise NasBertDeployError("no examples to score; the task file must hold at least one row")


def accuracy(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray) -> float:
    """Share of exact matches, in [0, 1]."""
    t, p = _labels(y_true), _labels(y_pred)
    _same_length(t, p)
    return float((t == p).mean())


def per_class_f1(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, labels: Sequence[int] | None = None
) -> dict[int, float]:
    """F1 per class; `labels` defaults to the classes present in either sequence. 0 where P+R = 0."""
    t, p = _labels(y_true), _labels(y_pred)
    _same_length(t, p)
    classes = sorted(set(t.tolist()) | set(p.tolist())) if labels is None else list(labels)
    out = {}
    for c in classes:
        tp = int(((t == c) & (p == c)).sum())
        fp = int(((t != c) & (p == c)).sum())
        fn = int(((t == c) & (p != c)).sum())
        out[c] = 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)
    return out


def macro_f1(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, labels: Sequence[int] | None = None
) -> float:
    """Unweighted mean of per-class F1 (classes present in gold or predictions unless `labels` is given)."""
    f = per_class_f1(y_true, y_pred, labels)
    return float(np.mean(list(f.values())))


def label_loyalty(teacher_pred: Sequence[int] | np.ndarray, student_pred: Sequence[int] | np.ndarray) -> float:
    """Share of examples on which student and teacher predict the same label, in [0, 1]."""
    return accuracy(teacher_pred, student_pred)


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence (natural log) per row: (n, c), (n, c) probabilities -> (n,), in [0, ln 2]."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p.shape != q.shape or p.ndim != 2:
        raise NasBertDeployError(f"probability arrays must both be (examples, classes); got {p.shape} and {q.shape}")
    m = 0.5 * (p + q)

    def kl(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        # 0 * log(0 / x) = 0 by convention; b > 0 wherever a > 0 since b = (a + other) / 2
        safe = np.where(a > 0, a / np.where(b > 0, b, 1.0), 1.0)
        return np.sum(np.where(a > 0, a * np.log(safe), 0.0), axis=1)

    return np.clip(0.5 * kl(p, m) + 0.5 * kl(q, m), 0.0, np.log(2.0))


def probability_loyalty(teacher_probs: np.ndarray, student_probs: np.ndarray) -> float:
    """Mean over examples of 1 - sqrt(JS(teacher || student)), natural log; (n, c) probabilities each."""
    return float(np.mean(1.0 - np.sqrt(js_divergence(teacher_probs, student_probs))))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of (n, c) logits, computed stably in float64."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class EvalReport:
    """Scores of one model on one labelled task; loyalty fields are None without a teacher."""

    examples: int
    accuracy: float
    macro_f1: float
    label_loyalty: float | None = None
    probability_loyalty: float | None = None
    teacher_accuracy: float | None = None
    teacher_macro_f1: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_logits(
    labels: Sequence[int] | np.ndarray,
    logits: np.ndarray,
    teacher_logits: np.ndarray | None = None,
) -> EvalReport:
    """All scores from (n, c) logits and gold class ids (and optionally the teacher's (n, c) logits).

    Macro-F1 averages over the classes present in the gold labels or the predictions.
    """
    y = _labels(labels)
    pred = np.asarray(logits).argmax(axis=1)
    acc, f1 = accuracy(y, pred), macro_f1(y, pred)
    if teacher_logits is None:
        return EvalReport(len(y), acc, f1)
    t_pred = np.asarray(teacher_logits).argmax(axis=1)
    return EvalReport(
        examples=len(y),
        accuracy=acc,
        macro_f1=f1,
        label_loyalty=label_loyalty(t_pred, pred),
        probability_loyalty=probability_loyalty(softmax(teacher_logits), softmax(logits)),
        teacher_accuracy=accuracy(y, t_pred),
        teacher_macro_f1=macro_f1(y, t_pred),
    )
