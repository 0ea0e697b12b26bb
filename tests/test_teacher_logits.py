"""The teacher-logit cache: hits for the same teacher files, rows and token limit; misses otherwise."""

from __future__ import annotations

import numpy as np

from nasbert_deploy.student.tasks import TaskData
from nasbert_deploy.student.teacher_logits import cache_key, cached_logits


def _teacher(folder, weights: bytes):
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "bert"}')
    (folder / "model.safetensors").write_bytes(weights)
    return folder


def test_cache_hits_only_for_the_same_teacher_rows_and_length(tmp_path):
    rows = TaskData(("a b", "c d e"), ("", ""))
    teacher = _teacher(tmp_path / "t", b"weights-1")
    calls, notes = [], []

    def compute():
        calls.append(1)
        return np.arange(6, dtype=np.float32).reshape(2, 3) + len(calls)

    first = cached_logits(teacher, rows, 64, compute, tmp_path / "cache", note=notes.append)
    again = cached_logits(teacher, rows, 64, compute, tmp_path / "cache", note=notes.append)
    assert len(calls) == 1 and np.array_equal(first, again) and "from the cache" in notes[-1]
    cached_logits(teacher, rows, 32, compute, tmp_path / "cache")  # another token limit
    cached_logits(teacher, TaskData(("a b", "c d f"), ("", "")), 64, compute, tmp_path / "cache")  # other rows
    cached_logits(teacher, TaskData(("a b", "c d e"), ("", ""), ("x", "y")), 64, compute, tmp_path / "cache")  # pairs
    _teacher(teacher, b"weights-2")  # the teacher was retrained in place
    cached_logits(teacher, rows, 64, compute, tmp_path / "cache")
    assert len(calls) == 5
    assert len({cache_key(teacher, rows, n) for n in (16, 32, 64)}) == 3


def test_damaged_or_unwritable_cache_only_costs_time(tmp_path):
    rows = TaskData(("a b",), ("",))
    teacher = _teacher(tmp_path / "t", b"w")
    cache = tmp_path / "cache"
    cached_logits(teacher, rows, 64, lambda: np.ones((1, 2), np.float32), cache)
    (entry,) = cache.glob("*.safetensors")
    entry.write_bytes(b"not safetensors")
    out = cached_logits(teacher, rows, 64, lambda: np.full((1, 2), 7, np.float32), cache)
    assert out[0, 0] == 7 and cached_logits(teacher, rows, 64, lambda: None, cache)[0, 0] == 7  # rewritten
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a cache "folder" that is a file: nothing can be written there
    assert cached_logits(teacher, rows, 64, lambda: np.zeros((1, 2), np.float32), blocker / "sub")[0, 0] == 0
    assert not list(tmp_path.glob("**/.*.tmp"))


def test_a_second_run_waits_for_the_first_and_reads_its_entry(tmp_path):
    """Two seeds started together: the one that finds the entry's lock held waits, says so, and computes nothing."""
    import threading
    import time

    from safetensors.numpy import save_file

    from nasbert_deploy.fileio import exclusive_lock

    rows = TaskData(("a b", "c d e"), ("", ""))
    teacher = _teacher(tmp_path / "t", b"w")
    cache = tmp_path / "cache"
    cache.mkdir()
    key = cache_key(teacher, rows, 64)
    calls, notes, got = [], [], []
    with exclusive_lock(cache / f".{key}.lock"):  # the first run, computing
        t = threading.Thread(target=lambda: got.append(cached_logits(
            teacher, rows, 64, lambda: calls.append(1) or np.zeros((2, 3), np.float32), cache, note=notes.append)))
        t.start()
        deadline = time.monotonic() + 30
        while not notes and time.monotonic() < deadline:
            time.sleep(0.01)
        assert notes and "waiting" in notes[0]
        save_file({"logits": np.full((2, 3), 5, np.float32)}, str(cache / f"{key}.safetensors"))
    t.join(30)
    assert not calls and got[0][0, 0] == 5 and "the other run wrote" in notes[-1]
