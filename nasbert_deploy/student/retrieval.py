"""Sentence-embedding retrieval tasks: `{"query", "document"}` pairs, scored in a pool.

Every query's relevant document is its own pair's document; the pool is every document of the
file (duplicates collapse to one pool entry, so a repeated document counts as found for each of its
queries). Scores on L2-normalised embeddings ranked by cosine similarity:

- recall@k: the share of queries whose document ranks in the top k;
- MRR: the mean of 1 / rank of the document;
- ranking loyalty@k (against a teacher): the mean overlap |top-k(student) ∩ top-k(teacher)| / k,
  the retrieval analogue of label loyalty.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from nasbert_deploy.errors import TaskError
from nasbert_deploy.fileio import read_input_text
from nasbert_deploy.student.tasks import read_jsonl

FIELDS = ("query", "document")


@dataclass(frozen=True)
class RetrievalData:
    """Queries, the pool of distinct documents, and for each query the pool index of its document."""

    queries: tuple[str, ...]
    documents: tuple[str, ...]
    gold: tuple[int, ...]
    source: str = ""
    # the pairs a seeded split was cut from (`split_pairs`): teacher embeddings are cached for them, once for every seed
    whole: RetrievalData | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.queries)


def is_retrieval_file(path: str | Path) -> bool:
    """True when the first JSON line of `path` has the retrieval fields (query, document)."""
    p = Path(path)
    if p.suffix.lower() != ".jsonl" or not p.is_file():
        return False
    try:
        with p.open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    obj = json.loads(line)
                    return isinstance(obj, dict) and "query" in obj and "document" in obj
    except (OSError, ValueError, RecursionError):  # unreadable, not UTF-8, not JSON: not a retrieval file
        return False
    return False


def load_retrieval(path: str | Path, limit: int | None = None) -> RetrievalData:
    """Read a `.jsonl` file of `{"query", "document"}` objects; `TaskError` naming the bad line."""
    p = Path(path)
    text = read_input_text(p, "retrieval file", TaskError, hint="expected .jsonl with query/document fields")
    queries: list[str] = []
    docs: list[str] = []
    for n, obj in read_jsonl(p, text, "retrieval file"):
        missing = [k for k in FIELDS if not isinstance(obj.get(k), str) or not obj[k].strip()]
        if missing:
            raise TaskError(f"{p}:{n}: missing or empty {', '.join(missing)} (fields: query, document)")
        queries.append(obj["query"])
        docs.append(obj["document"])
        if limit and len(queries) >= limit:
            break
    if not queries:
        raise TaskError(f"retrieval file {p} has no rows")
    pool: dict[str, int] = {}
    gold = [pool.setdefault(d, len(pool)) for d in docs]
    return RetrievalData(tuple(queries), tuple(pool), tuple(gold), str(p))


def split_pairs(data: RetrievalData, fraction: float, seed: int = 0) -> tuple[RetrievalData, RetrievalData]:
    """(train, valid): a seeded `fraction` of the queries held out (at least one each side), each side with the
    pool of its own queries' documents."""
    n = len(data)
    if n < 2:
        raise TaskError(f"{data.source} has {n} pair; a validation split needs at least 2 (or give --valid)")
    order = np.random.default_rng(seed).permutation(n)
    k = min(n - 1, max(1, round(fraction * n)))
    train, valid = subset_pairs(data, sorted(order[k:]), "train"), subset_pairs(data, sorted(order[:k]), "valid")
    return replace(train, whole=data.whole or data), valid


def retrieval_splits(task: str | Path, valid: str | Path | None, fraction: float, seed: int = 0
                     ) -> tuple[RetrievalData, RetrievalData]:
    """(train, valid) pairs: `task` and the `valid` file, or a seeded `fraction` of `task` held out (`split_pairs`);
    `TaskError` for a bad file or a `valid` that holds no retrieval pairs."""
    data = load_retrieval(task)
    if valid is None:
        return split_pairs(data, fraction, seed)
    if Path(valid).is_file() and not is_retrieval_file(valid):  # a missing file: load_retrieval says so
        raise TaskError(f"--valid {valid} is not a retrieval file (.jsonl of query/document pairs) as --task is")
    return data, load_retrieval(valid)


def subset_pairs(data: RetrievalData, rows: Sequence[int], part: str) -> RetrievalData:
    """The pairs of `rows` (in that order) with the pool of their own documents; `part` names them in the source."""
    pool: dict[str, int] = {}
    gold = [pool.setdefault(data.documents[data.gold[i]], len(pool)) for i in rows]
    return RetrievalData(tuple(data.queries[i] for i in rows), tuple(pool), tuple(gold), f"{data.source} ({part})")


def _ranks(q: np.ndarray, d: np.ndarray, gold: Sequence[int]) -> np.ndarray:
    """1-based rank of each query's gold document among all documents (ties count against it)."""
    sims = q @ d.T  # (nq, nd)
    g = np.asarray(gold)
    own = sims[np.arange(len(g)), g]
    return (sims > own[:, None]).sum(1) + 1


def retrieval_scores(q: np.ndarray, d: np.ndarray, gold: Sequence[int], ks: Sequence[int] = (1, 10)) -> dict[str, float]:
    """recall@k for each k and MRR, from (nq, e) query and (nd, e) document embeddings (normalised)."""
    ranks = _ranks(q, d, gold)
    out = {f"recall@{k}": float((ranks <= k).mean()) for k in ks}
    out["mrr"] = float((1.0 / ranks).mean())
    return out


def top_k(q: np.ndarray, d: np.ndarray, k: int = 10) -> np.ndarray:
    """(nq, k) indices of each query's k most similar documents, best first."""
    sims = q @ d.T
    k = min(k, sims.shape[1])
    part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(sims, part, 1).argsort(1)[:, ::-1]
    return np.take_along_axis(part, order, 1)


def ranking_loyalty(student_top: np.ndarray, teacher_top: np.ndarray) -> float:
    """Mean share of the teacher's top-k that the student's top-k also holds ((nq, k) index arrays)."""
    if student_top.shape != teacher_top.shape:
        raise ValueError(f"top-k shapes differ: {student_top.shape} vs {teacher_top.shape}")
    k = student_top.shape[1]
    return float(np.mean([len(set(s) & set(t)) / k for s, t in zip(student_top, teacher_top)]))


def teacher_comparison(q: np.ndarray, d: np.ndarray, tq: np.ndarray, td: np.ndarray, gold: Sequence[int],
                       mrr: float) -> dict[str, float | None]:
    """The teacher's scores (`teacher_*`) from its embeddings `tq`, `td`, the share of its MRR a student of MRR `mrr`
    keeps, and the ranking loyalty@10 of the student's embeddings `q`, `d` to it."""
    t = retrieval_scores(tq, td, gold)
    out: dict[str, float | None] = {f"teacher_{k}": v for k, v in t.items()}
    out["kept_mrr"] = mrr / t["mrr"] if t["mrr"] else None
    out["ranking_loyalty@10"] = ranking_loyalty(top_k(q, d, 10), top_k(tq, td, 10))
    return out


def tfidf_scores(data: RetrievalData, ks: Sequence[int] = (1, 10)) -> dict[str, float]:
    """The lexical baseline a user would try first: TF-IDF cosine (scikit-learn, fitted on the pool)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(sublinear_tf=True).fit(list(data.documents) + list(data.queries))
    d = vec.transform(data.documents)
    q = vec.transform(data.queries)
    return retrieval_scores(q.toarray().astype(np.float32), d.toarray().astype(np.float32), data.gold, ks)
