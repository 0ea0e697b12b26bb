"""The official SQuAD metrics (v1.1 and v2.0 evaluation scripts' definitions) and loyalty to a teacher.

Answers are normalised as the official scripts do: lower case, punctuation removed, the articles a / an / the
removed, whitespace collapsed. Exact match is 1 when the normalised prediction equals a normalised gold answer;
F1 is the bag-of-tokens F1 against each gold answer, the best one counting. v2.0: an unanswerable question's gold
answer is ""; predicting "" scores 1 there, any text 0, and "" on an answerable question scores 0. Scores are
means over questions, in percent as the official scripts print them, with the HasAns / NoAns breakdown for v2.0.

Loyalty (this project's, as label loyalty for classifiers): `answer_loyalty` is the share of questions where the
student's normalised answer equals the teacher's, `f1_to_teacher` the mean F1 of the student's answer against the
teacher's; `span_probability_loyalty` compares the start and end distributions (1 - Jensen-Shannon divergence,
as classifiers' probability loyalty) over the real tokens of each window.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Mapping

import numpy as np

from nasbert_deploy.qa.squad import QAData

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    p, g = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not p or not g:  # an empty answer: 1 only when both are empty (v2.0's no-answer)
        return float(p == g)
    common = sum((collections.Counter(p) & collections.Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def squad_scores(data: QAData, predictions: Mapping[str, str]) -> dict[str, float]:
    """exact and f1 (percent) over every question of `data`; v2.0 adds HasAns_* and NoAns_* (and their totals)."""
    em, f1, has = [], [], []
    for ex in data.examples:
        pred = predictions.get(ex.id, "")
        golds = ex.gold_texts()
        em.append(max(exact_match(pred, g) for g in golds))
        f1.append(max(f1_score(pred, g) for g in golds))
        has.append(not ex.impossible)
    scores = {"exact": 100 * float(np.mean(em)), "f1": 100 * float(np.mean(f1)), "total": len(em)}
    if data.version2:
        for name, want in (("HasAns", True), ("NoAns", False)):
            idx = [i for i, h in enumerate(has) if h == want]
            scores[f"{name}_total"] = len(idx)
            if idx:
                scores[f"{name}_exact"] = 100 * float(np.mean([em[i] for i in idx]))
                scores[f"{name}_f1"] = 100 * float(np.mean([f1[i] for i in idx]))
    return scores


def answer_loyalty(student: Mapping[str, str], teacher: Mapping[str, str]) -> dict[str, float]:
    """Share of questions with the teacher's answer (normalised) and the mean F1 against the teacher's answers."""
    ids = sorted(teacher)
    same = [exact_match(student.get(i, ""), teacher[i]) for i in ids]
    f1 = [f1_score(student.get(i, ""), teacher[i]) for i in ids]
    return {"answer_loyalty": float(np.mean(same)), "f1_to_teacher": float(np.mean(f1))}


def span_probability_loyalty(student: tuple[np.ndarray, np.ndarray], teacher: tuple[np.ndarray, np.ndarray],
                             mask: np.ndarray) -> float:
    """1 - mean JS divergence (base 2) of the start and the end distributions over each window's real tokens."""
    from nasbert_deploy.student.metrics import probability_loyalty, softmax

    m = mask.astype(bool)
    out = []
    for s, t in zip(student, teacher):
        s, t = np.where(m, s, -1e9), np.where(m, t, -1e9)
        out.append(probability_loyalty(softmax(t), softmax(s)))
    return float(np.mean(out))
