from __future__ import annotations

import json

import pytest
from search_helpers import SyntheticLatency, brute_force, feasible, random_table
from typer.testing import CliRunner

from nasbert_deploy.cli import app
from nasbert_deploy.commands import search_cmd
from nasbert_deploy.errors import CheckpointError
from nasbert_deploy.space import TINY

runner = CliRunner()


@pytest.fixture
def setup(tmp_path, monkeypatch):
    """A candidate table on disk and a synthetic latency table behind `--table` (tests only)."""
    table = random_table(TINY, 8, 3)
    cands = table.save(tmp_path / "candidates.json")
    lat = SyntheticLatency(TINY, 3)
    monkeypatch.setattr(search_cmd, "_load_latency_table", lambda path: lat)
    (tmp_path / "lat.json").write_text("{}")
    rows = brute_force(table, lat, 1, 16)
    return tmp_path, cands, rows


def _run(*args):
    return runner.invoke(app, ["search", *args])


def test_json_answer_equals_brute_force(setup):
    tmp, cands, rows = setup
    budget = sorted(r["latency_ms"] for r in rows)[len(rows) // 4]
    res = _run("--max-latency-ms", str(budget), "--candidates", str(cands), "--table", str(tmp / "lat.json"),
               "--seq-len", "16", "--top", "3", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    expected = sorted(r["loss"] for r in feasible(rows, budget))[:3]
    assert [b["loss"] for b in data["best"]] == expected
    assert data["budget"]["max_latency_ms"] == budget and data["precision"] == "fp32"
    assert all(b["latency_ms"] <= budget for b in data["best"])
    assert data["pareto_front"] and data["pareto_front"][-1]["loss"] == expected[0]


def test_table_output_and_plot(setup):
    tmp, cands, rows = setup
    budget = sorted(r["latency_ms"] for r in rows)[len(rows) // 4]
    png = tmp / "out" / "search.png"
    res = _run("--max-latency-ms", str(budget), "--candidates", str(cands), "--table", str(tmp / "lat.json"),
               "--seq-len", "16", "--max-params", "10M", "--plot", str(png))
    assert res.exit_code == 0, res.output
    assert "binding:" in res.stdout and "latency ms" in res.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


@pytest.mark.parametrize(
    "extra,fragment",
    [
        (["--max-params", "10Q"], "--max-params: '10Q' is not a count"),
        (["--max-memory-mb", "-3"], "--max-memory-mb must be a positive number"),
        (["--precision", "int4"], "int4"),
    ],
)
def test_bad_budget_strings_exit_2(setup, extra, fragment):
    tmp, cands, _ = setup
    res = _run("--max-latency-ms", "5", "--candidates", str(cands), "--table", str(tmp / "lat.json"), "--seq-len", "16", *extra)
    assert res.exit_code == 2
    assert fragment in res.output


def test_infeasible_budget_exit_2_names_fastest(setup):
    tmp, cands, rows = setup
    fastest = min(r["latency_ms"] for r in rows)
    res = _run("--max-latency-ms", str(fastest / 2), "--candidates", str(cands), "--table", str(tmp / "lat.json"),
               "--seq-len", "16")
    assert res.exit_code == 2
    assert f"the fastest takes {fastest:.3f} ms" in res.stderr and res.stdout == ""


def test_missing_tables_exit_2(setup, monkeypatch):
    tmp, cands, _ = setup

    def not_installed():
        raise CheckpointError("absent")

    monkeypatch.setattr("nasbert_deploy.supernet_default.default_candidates_path", not_installed)
    res = _run("--max-latency-ms", "5", "--table", str(tmp / "lat.json"))
    assert res.exit_code == 2 and search_cmd.NO_CANDIDATES in res.stderr.replace("\n", " ")
    res = _run("--max-latency-ms", "5", "--candidates", str(tmp / "nope.json"), "--table", str(tmp / "lat.json"))
    assert res.exit_code == 2 and "does not exist" in res.stderr
    res = _run("--max-latency-ms", "5", "--candidates", str(cands))
    assert res.exit_code == 2 and "pass --device NAME" in res.stderr
    spec = tmp / "mydev.toml"
    spec.write_text('name = "mydev-no-profile"\nruntime = "onnxruntime"\ntarget = "cpu"\n')
    res = _run("--max-latency-ms", "5", "--candidates", str(cands), "--device", str(spec))
    assert res.exit_code == 2 and "no latency table for device 'mydev-no-profile'" in res.stderr
    res = _run("--max-latency-ms", "5", "--candidates", str(cands), "--device", "no-such-device")
    assert res.exit_code == 2 and "unknown device 'no-such-device'" in res.stderr
    res = _run("--max-latency-ms", "100", "--supernet", str(tmp), "--table", str(tmp / "lat.json"), "--seq-len", "16")
    assert res.exit_code == 0, res.output  # tmp holds candidates.json: the supernet folder's table is used
    (tmp / "empty").mkdir()
    res = _run("--max-latency-ms", "100", "--supernet", str(tmp / "empty"), "--table", str(tmp / "lat.json"))
    assert res.exit_code == 2 and "has no candidates.json" in res.stderr


def test_device_precision_is_the_default(setup, tmp_path):
    tmp, cands, rows = setup
    spec = tmp / "int8dev.toml"
    spec.write_text('name = "int8dev"\nruntime = "onnxruntime"\ntarget = "cpu"\nprecision = "int8"\n')
    loose = max(r["latency_ms"] for r in rows)
    res = _run("--max-latency-ms", str(loose), "--candidates", str(cands), "--device", str(spec),
               "--table", str(tmp / "lat.json"), "--seq-len", "16", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["precision"] == "int8"
    best = data["best"][0]
    assert best["weights_mb"] < min(r["memory"] for r in rows) / 2**20  # int8 weights below any fp32 total
