"""benchmarks/bench_supernet_frozen.py: supernets compared by the frozen quality of the models they give; bad
arguments are one line and exit 2 before any model loads; the shipped samples score the shipped pick end to end."""

from __future__ import annotations

import json
import subprocess

import pytest
from helpers import run_benchmark


def _bench(*args: object) -> subprocess.CompletedProcess:
    return run_benchmark("bench_supernet_frozen.py", *args)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--supernet", "nowhere=/nonexistent/sn"), "is not a trained supernet"),
        (("--supernet", "noequals"), "use NAME=DIR"),
        (("--supernet", "a=default", "--supernet", "a=default"), "a new NAME each time"),
        (("--budgets", "fast"), "milliseconds separated by commas"),
        (("--budgets", "0"), "positive number of milliseconds"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(args, says, tmp_path):
    out = tmp_path / "rows.json"
    res = _bench(*args, "--out", out)
    assert res.returncode == 2, res.stdout + res.stderr
    assert says in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.slow
def test_smoke_scores_the_shipped_pick_and_resumes(tmp_path):
    out = tmp_path / "rows.json"
    res = _bench("--smoke", "--out", out)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["supernet"] for r in rows] == ["shipped"] and rows[0]["kind"] == "pick 3 ms"
    assert 0 < rows[0]["quality"] <= 1 and rows[0]["predicted_ms"] <= 3.0
    again = _bench("--smoke", "--out", out)
    assert again.returncode == 0 and "resuming: 1 rows already scored" in again.stdout
