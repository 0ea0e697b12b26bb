"""benchmarks/score_frozen.py: frozen quality of encoder folders and their latency beside the teacher's; bad arguments
are one line and exit 2 before any model loads; a second run skips what the first scored."""

from __future__ import annotations

import json
import subprocess
from importlib import resources

import pytest
from helpers import make_tiny_teacher, run_benchmark

from nasbert_deploy.student.baselines import truncate_encoder
from nasbert_deploy.student.retrieval import load_retrieval, split_pairs
from nasbert_deploy.student.retrieval_training import RetrievalConfig, finetune_retrieval


def _bench(*args: object) -> subprocess.CompletedProcess:
    return run_benchmark("score_frozen.py", *args)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--model", "a=/nonexistent"), "give NAME=DIR"),
        (("--model", "noequals"), "give NAME=DIR"),
        (("--model", "teacher={here}"), "reserved"),
        (("--model", "a={here}", "--model", "a={here}"), "given twice"),
        ((), "no --model given"),
        (("--model", "a={here}", "--time"), "--latency-out"),
        (("--model", "a={here}", "--devices", "cpu-nope"), "--devices"),
        (("--model", "a={here}", "--time", "--latency-out", "/nonexistent/lat.json"), "folder does not exist"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(args, says, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    out = tmp_path / "rows.jsonl"
    res = _bench(*(a.format(here=tmp_path) for a in args), "--smoke", "--results", out)
    assert res.returncode == 2, res.stdout + res.stderr
    assert says in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.slow
def test_smoke_scores_times_and_resumes(tmp_path):
    teacher = make_tiny_teacher(tmp_path / "t")
    one = truncate_encoder(teacher, 1, tmp_path / "t1")
    pairs = load_retrieval(resources.files("nasbert_deploy.data.tasks") / "debian-retrieval-sample.jsonl", limit=64)
    train, valid = split_pairs(pairs, 0.25)
    finetune_retrieval(one, train, valid, tmp_path / "r1", RetrievalConfig(epochs=1, batch_size=16, max_len=32))
    out, lat = tmp_path / "rows.jsonl", tmp_path / "lat.json"
    args = ("--smoke", "--teacher", teacher, "--model", f"L1={one}", "--model", f"R1={tmp_path / 'r1'}", "--results",
            out, "--max-len", 32)
    res = _bench(*args, "--time", "--devices", "cpu-ort", "--rounds", "1", "--clock", "wall", "--latency-out", lat)
    assert res.returncode == 0, res.stdout + res.stderr
    row, tuned = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["name"] == "L1" and row["machine"]["family"] is not None and "retrieval_finetune" not in row
    assert 0 <= row["frozen"]["debian-sections"] <= 1 and 0 < row["frozen"]["mrr"] <= 1
    assert tuned["name"] == "R1" and tuned["retrieval_finetune"]["valid_rows"] == 16  # how it was made, kept
    assert tuned["retrieval_finetune"]["best"]["epoch"] == 1 and tuned["retrieval_finetune"]["model"] == str(one)
    figs = json.loads(lat.read_text())["cpu-ort"]
    assert set(figs) == {"teacher", "L1", "R1"} and figs["teacher"]["speedup"] == 1.0 and figs["L1"]["median_ms"] > 0
    again = _bench(*args)
    assert again.returncode == 0 and "L1: already in" in again.stdout
    assert len(out.read_text().splitlines()) == 2
