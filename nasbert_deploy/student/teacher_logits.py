"""The teacher's logits on task or transfer rows (or its embeddings of retrieval pairs), computed once and cached
across runs.

Task distillation needs the fine-tuned teacher's logits on every training row, and a transfer set
(`finetune --transfer`) on tens of thousands more; retrieval distillation its embeddings of every training query and
document: minutes of teacher inference that every seed, every student and every resumed run would otherwise
repeat. They are cached in `$NASBERT_DEPLOY_LOGITS_CACHE` (default
`~/.cache/nasbert-deploy/teacher-logits`) as safetensors, keyed by the SHA-256 of the teacher's config and
weight files, the rows (texts and pairs) and the token limit, so any change to either misses the cache.
Written atomically (by rank 0 under torchrun); a damaged entry is recomputed. Two runs that miss the same entry at
once (two seeds started together) do not both compute it: the second waits on a lock file beside the entry, says so,
and reads what the first wrote.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from nasbert_deploy.fileio import atomic_path, exclusive_lock, file_digest
from nasbert_deploy.student.tasks import TaskData

CACHE_ENV = "NASBERT_DEPLOY_LOGITS_CACHE"
FORMAT = 1
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "config.json")


def default_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "nasbert-deploy" / "teacher-logits"


@functools.lru_cache(maxsize=8)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    """`file_digest`, once per (file, size, modification time): one run asks for the same teacher twice."""
    return file_digest(path)


def cache_key(teacher_dir: str | Path, rows: TaskData, max_len: int, kind: str = "logits") -> str:
    """Hex key of (teacher files' contents, rows, max_len, cache format, and `kind` when it is not "logits")."""
    folder = Path(teacher_dir)
    stats = {n: (folder / n).stat() for n in WEIGHT_FILES if (folder / n).is_file()}
    files = {n: _digest(str(folder / n), st.st_size, st.st_mtime_ns) for n, st in stats.items()}
    head = {"format": FORMAT, "files": files, "max_len": max_len, **({"kind": kind} if kind != "logits" else {})}
    h = hashlib.sha256(json.dumps(head, sort_keys=True).encode())
    for i, text in enumerate(rows.texts):
        h.update(text.encode())
        h.update(b"\x00" + (rows.pairs[i].encode() if rows.pairs is not None else b"") + b"\x01")
    return h.hexdigest()


def cached_logits(
    teacher_dir: str | Path,
    rows: TaskData,
    max_len: int,
    compute: Callable[[], np.ndarray],
    cache_dir: Path | None = None,
    note: Callable[[str], None] | None = None,
    write: bool = True,
    kind: str = "logits",
) -> np.ndarray:
    """The logits `compute()` returns for `rows`, from the cache when an entry for (teacher, rows, max_len) exists.
    `write=False` (ranks other than 0 under torchrun) reads but never writes. `kind` names what is cached (keys of
    other kinds than "logits" differ, e.g. "embeddings")."""
    from nasbert_deploy.model.distributed import gather_objects, world_info

    root = cache_dir or default_dir()
    path = root / f"{cache_key(teacher_dir, rows, max_len, kind)}.safetensors"
    logits = _read(path, len(rows))
    if all(hit for hit in gather_objects(logits is not None)):  # under torchrun: a miss on any rank computes on all
        if note is not None:
            note(f"teacher {kind} of {len(rows):,} rows from the cache ({path.parent})")
        return logits  # type: ignore[return-value]
    if not write or world_info()[1] > 1:  # torchrun: every rank computes, rank 0 writes
        return _compute_and_write(path, compute, write)
    lock = root / f".{path.stem}.lock"
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock.touch()
    except OSError:  # a read-only home: no cache, no lock
        return compute()
    waited = None if note is None else lambda: note(f"another run is computing these teacher {kind}; waiting for it")
    with exclusive_lock(lock, on_wait=waited):
        logits = _read(path, len(rows))  # written while this run waited
        if logits is not None:
            if note is not None:
                note(f"teacher {kind} of {len(rows):,} rows from the cache the other run wrote ({path.parent})")
            return logits
        return _compute_and_write(path, compute, write)


def _read(path: Path, rows: int) -> np.ndarray | None:
    """A cache entry's array, or None when it is missing, damaged or of another length."""
    from safetensors.numpy import load_file

    if not path.is_file():
        return None
    try:
        logits = load_file(str(path))["logits"]
    except Exception:  # noqa: BLE001  (safetensors raises its own error type for a damaged file)
        return None
    return logits if logits.shape[0] == rows else None


def _compute_and_write(path: Path, compute: Callable[[], np.ndarray], write: bool) -> np.ndarray:
    from safetensors.numpy import save_file

    logits = compute()
    if write:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                save_file({"logits": np.ascontiguousarray(logits, dtype=np.float32)}, str(tmp))
        except OSError:  # a read-only home: the cache only saves time
            pass
    return logits
