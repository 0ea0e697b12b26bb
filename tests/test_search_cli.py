from __future__ import annotations

import json

import pytest
from search_helpers import SyntheticLatency, brute_force, feasible, random_table
from typer.testing import CliRunner

from nasbert_deploy.cli.app import app
from nasbert_deploy.errors import CheckpointError
from nasbert_deploy.search import run as search_run
from nasbert_deploy.space import TINY

runner = CliRunner()


@pytest.fixture
def setup(tmp_path, monkeypatch):
    """A candidate table on disk and a synthetic latency table behind `--table` (tests only)."""
    table = random_table(TINY, 8, 3)
    cands = table.save(tmp_path / "candidates.json")
    lat = SyntheticLatency(TINY, 3)
    monkeypatch.setattr(search_run, "load_latency_table", lambda path, space: lat)
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
        (["--precision", "int2"], "int2"),
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

    monkeypatch.setattr("nasbert_deploy.supernet.default.default_candidates_path", not_installed)
    res = _run("--max-latency-ms", "5", "--table", str(tmp / "lat.json"))
    assert res.exit_code == 2 and search_run.NO_CANDIDATES in res.stderr.replace("\n", " ")
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


def _real_table(space, path, seed=0):
    """A `latency.LatencyTable` on disk with synthetic entries (1/64 ms grid) at batch 1, seq 16 and 32; the
    correction at seq 32 is the maximum of two planes (a cache step), at seq 16 one plane."""
    import random

    from nasbert_deploy.profiling.table import LatencyTable, point_key, table_keys

    rng = random.Random(seed)
    entries = {
        key: {point_key(1, s): {"median_ms": rng.randint(1, 64) / 64 * s / 16} for s in (16, 32)} for key in table_keys(space)
    }
    entries["overhead"] = {point_key(1, s): {"median_ms": 0.0} for s in (16, 32)}
    corrections = {
        point_key(1, 16): {"planes": [{"scale": 1.0, "offset_ms": 0.125}]},
        point_key(1, 32): {"planes": [{"scale": 1.0, "ms_per_mparam": 0.0, "offset_ms": 0.0},
                                      {"scale": 1.5, "ms_per_mparam": 4.0, "offset_ms": -1.0}], "split_mparams": 0.1},
    }
    table = LatencyTable(space, {"name": "synthetic-test", "precision": "fp16"}, entries, corrections, {}, {})
    table.save(path)
    return LatencyTable.load(path, space)


def test_with_a_real_latency_table(tmp_path):
    table = random_table(TINY, 8, 9)
    cands = table.save(tmp_path / "candidates.json")
    lat = _real_table(TINY, tmp_path / "lat.json")
    assert [lat.n_planes(1, s) for s in (16, 24, 32)] == [1, 2, 2]
    for seq in (16, 24, 32):  # 24 interpolates between the profiled 16 and 32
        rows = brute_force(table, lat, 1, seq, "fp16")
        budget = sorted(r["latency_ms"] for r in rows)[len(rows) // 3]
        res = _run("--max-latency-ms", repr(budget), "--candidates", str(cands), "--table", str(tmp_path / "lat.json"),
                   "--seq-len", str(seq), "--top", "2", "--json")
        assert res.exit_code == 0, res.output
        data = json.loads(res.stdout)
        assert data["precision"] == "fp16"  # from the table's device when neither --precision nor --device is given
        assert [b["loss"] for b in data["best"]] == sorted(r["loss"] for r in feasible(rows, budget))[:2]
        for b in data["best"]:
            pred = lat.predict(TINY.parse(b["arch"]), 1, seq)
            assert b["latency_ms"] == pytest.approx(pred.total_ms, rel=1e-12)
            assert b["block_ms"] == pytest.approx(pred.blocks_ms, rel=1e-12)
    res = _run("--max-latency-ms", "5", "--candidates", str(cands), "--table", str(tmp_path / "lat.json"), "--batch", "4",
               "--seq-len", "16")
    assert res.exit_code == 2 and "batch 4 was not profiled" in res.stderr
    res = _run("--max-latency-ms", "5", "--candidates", str(cands), "--table", str(tmp_path / "lat.json"), "--seq-len", "64")
    assert res.exit_code == 2 and "outside the profiled range" in res.stderr


def test_table_for_another_space_exit_2(tmp_path):
    from nasbert_deploy.space import SearchSpace

    other = SearchSpace(name="other", num_blocks=2, layers_per_block=2, hidden_sizes=(32,), conv_kernels=(3,), head_dim=16,
                        embed_dim=16, output_dim=48, vocab_size=1000, max_positions=64)
    _real_table(other, tmp_path / "lat.json")
    cands = random_table(TINY, 4, 0).save(tmp_path / "candidates.json")
    res = _run("--max-latency-ms", "5", "--candidates", str(cands), "--table", str(tmp_path / "lat.json"), "--seq-len", "16")
    assert res.exit_code == 2 and "does not cover space 'tiny'" in res.stderr.replace("\n", " ")
