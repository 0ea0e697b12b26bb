"""Training data: labelled task files (loading, label maps, splits, batches) and unlabelled corpus batches.

A task file is JSON lines (`.jsonl`) or CSV/TSV (`.csv`, `.tsv`) with the columns `text`,
optionally `text_pair`, and `label` (any string; integers are read as their text). Labels map to
class ids in sorted order (numerically when every label is an integer), and the maps are stored in
the model's config as `id2label` / `label2id`.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nasbert_deploy.errors import CorpusError, TaskError
from nasbert_deploy.fileio import read_input_text

TASK_SUFFIXES = (".jsonl", ".csv", ".tsv")
SAMPLE_DIR = Path(__file__).resolve().parent.parent / "data" / "tasks"
SAMPLE_TASK = "pydoc-sample"  # `--task` name of the shipped pydoc-sections sample (300 train / 100 valid rows)


def sample_task_path(split: str = "train") -> Path:
    """The shipped pydoc-sections sample (`train`: 300 rows, `valid`: 100 rows)."""
    if split not in ("train", "valid"):
        raise TaskError(f"sample split {split!r} does not exist; valid: train, valid")
    return SAMPLE_DIR / f"pydoc-sections-sample-{split}.jsonl"


def task_splits(task: str, valid: str | Path | None = None, valid_fraction: float = 0.1) -> tuple[TaskData, TaskData]:
    """(train, valid) for `--task` (a task file, or `SAMPLE_TASK` for the shipped sample with its own valid split):
    `valid` if given, else a stratified `valid_fraction` split off the training file."""
    train = load_task(sample_task_path("train") if task == SAMPLE_TASK else task)
    if valid is not None:
        return train, load_task(valid)
    if task == SAMPLE_TASK:
        return train, load_task(sample_task_path("valid"))
    return train.split(valid_fraction)


def eval_task(task: str) -> TaskData:
    """The labelled rows to score: a task file, or the shipped sample's valid split for `SAMPLE_TASK`."""
    return load_task(sample_task_path("valid") if task == SAMPLE_TASK else task)


@dataclass(frozen=True)
class TaskData:
    """Rows of a labelled task. `pairs` is None for single-text tasks."""

    texts: tuple[str, ...]
    labels: tuple[str, ...]
    pairs: tuple[str, ...] | None = None
    source: str = ""

    def __len__(self) -> int:
        return len(self.texts)

    def label_names(self) -> list[str]:
        """Distinct labels in class-id order."""
        return sort_labels(set(self.labels))

    def label_ids(self, label2id: dict[str, int]) -> list[int]:
        unknown = sorted(set(self.labels) - set(label2id))
        if unknown:
            raise TaskError(
                f"{self.source or 'task'} has labels the model does not know: {', '.join(unknown[:5])}; "
                f"known: {', '.join(sort_labels(label2id))}"
            )
        return [label2id[x] for x in self.labels]

    def subset(self, indices: Sequence[int]) -> TaskData:
        return TaskData(
            texts=tuple(self.texts[i] for i in indices),
            labels=tuple(self.labels[i] for i in indices),
            pairs=None if self.pairs is None else tuple(self.pairs[i] for i in indices),
            source=self.source,
        )

    def split(self, valid_fraction: float, seed: int = 0) -> tuple[TaskData, TaskData]:
        """Stratified split into (train, valid); every class keeps at least one training row."""
        if not 0.0 < valid_fraction < 1.0:
            raise TaskError(f"validation fraction must be in (0, 1), got {valid_fraction}")
        by_label: dict[str, list[int]] = defaultdict(list)
        for i, lab in enumerate(self.labels):
            by_label[lab].append(i)
        rng = random.Random(seed)
        train, valid = [], []
        for lab in sort_labels(by_label):
            idx = by_label[lab][:]
            rng.shuffle(idx)
            k = min(len(idx) - 1, round(valid_fraction * len(idx)))
            valid += idx[:k]
            train += idx[k:]
        if not valid:
            raise TaskError(f"{self.source}: {len(self)} rows are too few to split off a validation set; pass --valid FILE")
        return self.subset(sorted(train)), self.subset(sorted(valid))


def sort_labels(labels: Any) -> list[str]:
    labs = [str(x) for x in labels]
    if labs and all(_is_int(x) for x in labs):
        return sorted(labs, key=int)
    return sorted(labs)


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def label_maps(names: Sequence[str]) -> tuple[dict[int, str], dict[str, int]]:
    """(id2label, label2id) for labels in class-id order."""
    return {i: n for i, n in enumerate(names)}, {n: i for i, n in enumerate(names)}


TASK_HINT = "a .jsonl/.csv/.tsv file with the columns text, [text_pair,] label"


def load_task(path: str | Path) -> TaskData:
    """The one loader of labelled task files (`.jsonl` / `.csv` / `.tsv`): anything unreadable, undecodable,
    malformed, or of another kind (a retrieval file) is one `TaskError` saying which row is wrong."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in TASK_SUFFIXES and not p.is_dir():
        raise TaskError(f"task file {p} has suffix {suffix!r}; valid: {', '.join(TASK_SUFFIXES)}")
    text = read_input_text(p, "task file", TaskError, hint=TASK_HINT)
    rows = read_jsonl(p, text, "task file") if suffix == ".jsonl" else _read_csv(p, text, "\t" if suffix == ".tsv" else ",")
    if not rows:
        raise TaskError(f"task file {p} has no rows; {TASK_HINT}")
    first = rows[0][1]
    if "query" in first and "document" in first and "text" not in first:
        raise TaskError(f"{p} is a retrieval file ({{query, document}} pairs); this command needs a classification "
                        f"task: {TASK_HINT}")
    texts, pairs, labels = [], [], []
    has_pair = "text_pair" in first
    for line, row in rows:
        missing = [k for k in ("text", "label") + (("text_pair",) if has_pair else ()) if row.get(k) in (None, "")]
        if missing:
            raise TaskError(f"{p}:{line}: missing {', '.join(missing)} (columns: text, text_pair (optional), label)")
        bad = [k for k in ("text", "text_pair") if k in row and not isinstance(row[k], str)]
        if bad or isinstance(row["label"], bool) or not isinstance(row["label"], str | int):
            what = bad[0] if bad else "label"
            raise TaskError(f"{p}:{line}: {what} must be {'a string' if bad else 'a string or an integer'}, "
                            f"got {type(row[what]).__name__}")
        texts.append(row["text"])
        labels.append(str(row["label"]))
        if has_pair:
            pairs.append(row["text_pair"])
    if len(set(labels)) < 2:
        raise TaskError(f"task file {p} has {len(set(labels))} distinct label(s); classification needs at least 2")
    return TaskData(tuple(texts), tuple(labels), tuple(pairs) if has_pair else None, str(p))


def read_jsonl(p: Path, text: str, what: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line of JSON-lines `text` (read from `p`); `TaskError` naming the line."""
    rows = []
    for n, line in enumerate(text.split("\n"), 1):  # not splitlines(): JSON strings may hold U+2028 and friends
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError) as exc:
            msg = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
            raise TaskError(f"{p}:{n}: not valid JSON ({msg}); {what}s hold one JSON object per line") from None
        if not isinstance(obj, dict):
            raise TaskError(f"{p}:{n}: expected a JSON object, got {type(obj).__name__}; {what}s hold one object per line")
        rows.append((n, obj))
    return rows


def _read_csv(p: Path, text: str, delimiter: str) -> list[tuple[int, dict[str, Any]]]:
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
        if reader.fieldnames is None or not {"text", "label"} <= set(reader.fieldnames):
            raise TaskError(f"{p}: header must name the columns text, label (and optionally text_pair); got {reader.fieldnames}")
        return [(n, row) for n, row in enumerate(reader, 2)]
    except csv.Error as exc:
        raise TaskError(f"{p}: not a readable {'TSV' if delimiter == chr(9) else 'CSV'} file ({exc}); {TASK_HINT}") from None


def iter_batches(
    tokenizer: Any,
    task: TaskData,
    batch_size: int,
    max_len: int,
    indices: Sequence[int] | None = None,
) -> Iterator[tuple[list[int], dict[str, Any]]]:
    """Yield (row indices, tokenized batch) in the given order; batch tensors are (b, t) int64, padded per batch.

    The batch holds `input_ids`, `attention_mask` and, for pair tasks, `token_type_ids`.
    """
    order = list(range(len(task))) if indices is None else list(indices)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        texts = [task.texts[i] for i in idx]
        pairs = None if task.pairs is None else [task.pairs[i] for i in idx]
        enc = tokenizer(texts, pairs, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        if task.pairs is not None and "token_type_ids" in enc:
            batch["token_type_ids"] = enc["token_type_ids"]
        yield idx, batch


class CorpusBatches:
    """Deterministic batches by step: epoch `e` visits the texts in a permutation seeded by (seed, e).

    With `world` processes (torchrun) step s covers world x `batch_size` texts of that stream and `rank` takes
    slice `rank` of them, so the ranks together see what one process with world x the batch would.
    """

    def __init__(self, texts: Sequence[str], tokenizer: Any, batch_size: int, seq_len: int, seed: int,
                 rank: int = 0, world: int = 1) -> None:
        if not texts:
            raise CorpusError("the corpus is empty")
        self.texts, self.tok, self.b, self.t, self.seed = list(texts), tokenizer, batch_size, seq_len, seed
        self.rank, self.world = rank, world
        self._perm: tuple[int, list[int]] | None = None

    def _order(self, epoch: int) -> list[int]:
        if self._perm is None or self._perm[0] != epoch:
            order = list(range(len(self.texts)))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
            self._perm = (epoch, order)
        return self._perm[1]

    def encode(self, texts: Sequence[str]) -> dict[str, Any]:
        enc = self.tok(list(texts), padding=True, truncation=True, max_length=self.t, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def batch(self, step: int) -> dict[str, Any]:
        n = len(self.texts)
        idx = []
        first = (step * self.world + self.rank) * self.b
        for k in range(first, first + self.b):
            idx.append(self._order(k // n)[k % n])
        return self.encode([self.texts[i] for i in idx])

    def sequential(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The texts in file order as batches (for held-out losses); at most `limit` batches."""
        out = []
        for s in range(0, len(self.texts), self.b):
            if limit is not None and len(out) >= limit:
                break
            out.append(self.encode(self.texts[s : s + self.b]))
        return out
