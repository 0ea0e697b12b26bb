"""Atomic writes: nothing half-written on failure, and the final file honours the umask (not mkstemp's 0600)."""

from __future__ import annotations

import os
import stat

import pytest

from nasbert_deploy.fileio import atomic_path, write_json_atomic, write_text_atomic


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_written_file_honours_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        p = write_text_atomic(tmp_path / "a.txt", "x")
        q = write_json_atomic(tmp_path / "sub" / "b.json", {"k": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask
    assert stat.S_IMODE(q.stat().st_mode) == 0o666 & ~mask and q.read_text() == '{\n  "k": 1\n}\n'
    assert os.umask(old) == old  # the umask is left as it was


def test_failure_leaves_nothing_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "t.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["t.txt"]
