"""Extractive question answering data: SQuAD v1.1 / v2.0 JSON files, read and checked before any work.

A file is `{"version": ..., "data": [{"title": ..., "paragraphs": [{"context": ..., "qas": [{"id", "question",
"answers": [{"text", "answer_start"}], "is_impossible"?}]}]}]}` (Rajpurkar et al. 2016, 2018). A file is v2.0 when
its `version` says so or any question carries `is_impossible`; then a question with `is_impossible: true` has no
answer (its gold answer is the empty string) and the others need at least one. Every answer span must match its
context: `context[answer_start : answer_start + len(text)] == text` (the official files satisfy it; a file built
with character offsets of another encoding does not, and would train on wrong spans).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nasbert_deploy.errors import TaskError
from nasbert_deploy.fileio import read_input_text

SQUAD_SUFFIX = ".json"
FORMAT_HINT = ('a SQuAD v1.1 / v2.0 JSON file: {"data": [{"paragraphs": [{"context": ..., "qas": [{"id": ..., '
               '"question": ..., "answers": [{"text": ..., "answer_start": ...}]}]}]}]}')


@dataclass(frozen=True)
class QAExample:
    """One question on one context; `answers` are (text, character start) pairs; none when `impossible`."""

    id: str
    question: str
    context: str
    answers: tuple[tuple[str, int], ...]
    impossible: bool = False

    def gold_texts(self) -> list[str]:
        """The official metric's gold answers: the answer texts, or [""] for an unanswerable question."""
        return [t for t, _ in self.answers] or [""]


@dataclass(frozen=True)
class QAData:
    examples: tuple[QAExample, ...]
    version2: bool
    source: str = ""

    def __len__(self) -> int:
        return len(self.examples)

    def subset(self, indices: list[int]) -> QAData:
        return QAData(tuple(self.examples[i] for i in indices), self.version2, self.source)

    def split(self, valid_fraction: float, seed: int = 0) -> tuple[QAData, QAData]:
        """(train, valid) by whole contexts (questions on one paragraph stay together: no leak through it)."""
        import random

        contexts = sorted({e.context for e in self.examples})
        random.Random(seed).shuffle(contexts)
        n_valid = max(1, round(valid_fraction * len(contexts))) if len(contexts) > 1 else 0
        held = set(contexts[:n_valid])
        if not held:
            raise TaskError(f"{self.source}: one context only; pass --valid FILE to score on other questions")
        train = [i for i, e in enumerate(self.examples) if e.context not in held]
        valid = [i for i, e in enumerate(self.examples) if e.context in held]
        return self.subset(train), self.subset(valid)


def is_squad_path(path: str | Path) -> bool:
    """Whether a task path names a SQuAD JSON file (classification task files are .jsonl / .csv / .tsv)."""
    return Path(path).suffix.lower() == SQUAD_SUFFIX


def squad_splits(task: str | Path, valid: str | Path | None, valid_fraction: float = 0.1) -> tuple[QAData, QAData]:
    """(train, valid) for a SQuAD `--task`: `valid` if given, else `valid_fraction` of its contexts held out."""
    train = load_squad(task)
    if valid is not None:
        if not is_squad_path(valid):
            raise TaskError(f"--valid {valid} is not a SQuAD file (.json) like --task {task}")
        return train, load_squad(valid)
    return train.split(valid_fraction)


def load_squad(path: str | Path) -> QAData:
    """The questions of a SQuAD file; `TaskError` (one line: which question, what is wrong) on any defect."""
    text = read_input_text(path, "SQuAD file", TaskError, FORMAT_HINT)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TaskError(f"SQuAD file {path} is not valid JSON (line {exc.lineno}: {exc.msg}); expected {FORMAT_HINT}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise TaskError(f"SQuAD file {path} has no \"data\" list; expected {FORMAT_HINT}")
    version2 = str(doc.get("version", "")).startswith(("v2", "2"))
    raw: list[tuple[dict[str, Any], str]] = []
    for a, article in enumerate(doc["data"]):
        for p, para in enumerate(_list(article, "paragraphs", f"{path}: data[{a}]")):
            where = f"{path}: data[{a}].paragraphs[{p}]"
            context = para.get("context") if isinstance(para, dict) else None
            if not isinstance(context, str) or not context.strip():
                raise TaskError(f"{where} has no context text")
            for qa in _list(para, "qas", where):
                version2 = version2 or (isinstance(qa, dict) and "is_impossible" in qa)
                raw.append((qa, context))
    if not raw:
        raise TaskError(f"SQuAD file {path} holds no questions; expected {FORMAT_HINT}")
    seen: set[str] = set()
    examples = []
    for qa, context in raw:
        ex = _example(qa, context, version2, str(path))
        if ex.id in seen:
            raise TaskError(f"{path}: question id {ex.id!r} appears twice; ids must be unique")
        seen.add(ex.id)
        examples.append(ex)
    return QAData(tuple(examples), version2, str(path))


def _list(obj: Any, key: str, where: str) -> list[Any]:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, list):
        raise TaskError(f"{where} has no {key!r} list; expected {FORMAT_HINT}")
    return value


def _example(qa: Any, context: str, version2: bool, path: str) -> QAExample:
    if not isinstance(qa, dict) or not isinstance(qa.get("id"), str | int):
        raise TaskError(f"{path}: a question has no \"id\"; every entry of \"qas\" needs id, question and answers")
    qid = str(qa["id"])
    question = qa.get("question")
    if not isinstance(question, str) or not question.strip():
        raise TaskError(f"{path}: question {qid!r} has an empty question text")
    impossible = bool(qa.get("is_impossible", False))
    answers = []
    for ans in qa.get("answers") or []:
        t, s = (ans.get("text"), ans.get("answer_start")) if isinstance(ans, dict) else (None, None)
        if not isinstance(t, str) or not t or not isinstance(s, int) or isinstance(s, bool):
            raise TaskError(f"{path}: question {qid!r} has an answer without a non-empty \"text\" and an integer "
                            "\"answer_start\"")
        if context[s : s + len(t)] != t:
            found = context[max(0, s) : max(0, s) + len(t)]
            raise TaskError(f"{path}: question {qid!r}: the answer {t!r} does not match its context at answer_start {s} "
                            f"(the context there reads {found!r}); answer_start is a character offset into the context")
        answers.append((t, s))
    if impossible:
        answers = []  # v2.0 keeps plausible answers of unanswerable questions apart; the gold answer is ""
    elif not answers:
        hint = " (mark it \"is_impossible\": true in a v2.0 file)" if version2 else " (unanswerable questions need v2.0)"
        raise TaskError(f"{path}: question {qid!r} has no answer{hint}")
    return QAExample(qid, question, context, tuple(answers), impossible)
