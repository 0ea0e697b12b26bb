"""benchmarks/make_corpus.py: the mixed corpus is the same file for the same seed, a larger count extends it, short
lines are dropped; a missing corpus folder or an existing output is one line and exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FILES = ("debian-descriptions.txt", "wordnet-glosses.txt", "pydoc-train.txt", "manpages.txt")


def _shared(tmp_path: Path) -> Path:
    shared = tmp_path / "shared"
    (shared / "corpus").mkdir(parents=True)
    for i, name in enumerate(FILES):
        lines = [f"paragraph {j} of file number {i} here" for j in range(10)] + ["too short"]
        (shared / "corpus" / name).write_text("\n".join(lines) + "\n")
    return shared


def _run(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "make_corpus.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_same_seed_same_file_and_a_prefix(tmp_path):
    shared = _shared(tmp_path)
    a, b, c = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "c.txt"
    for out, n in ((a, 12), (b, 12), (c, 30)):
        res = _run("--shared", shared, "--paragraphs", n, "--out", out)
        assert res.returncode == 0, res.stderr
    lines = a.read_text().splitlines()
    assert a.read_text() == b.read_text() and len(lines) == 12
    assert c.read_text().splitlines()[:12] == lines and len(c.read_text().splitlines()) == 30
    assert "too short" not in c.read_text() and len({ln.split()[-2] for ln in lines}) > 1  # shuffled across files


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    out = tmp_path / "x.txt"
    res = _run("--shared", tmp_path / "nowhere", "--paragraphs", 5, "--out", out)
    assert res.returncode == 2 and "lacks" in res.stderr and len(res.stderr.splitlines()) == 1 and not out.exists()
    out.write_text("keep me\n")
    res = _run("--shared", _shared(tmp_path), "--paragraphs", 5, "--out", out)
    assert res.returncode == 2 and "exists" in res.stderr and out.read_text() == "keep me\n"
