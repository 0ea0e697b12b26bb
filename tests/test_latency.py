"""LatencyTable: schema, exact additivity, interpolation, corrections, and clear errors (no runtimes)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from nasbert_deploy.errors import SpaceError, TableError
from nasbert_deploy.profiling.fit import fit_correction, fit_planes, held_out_errors
from nasbert_deploy.profiling.profiler import build_table, make_manifest, refit_table
from nasbert_deploy.profiling.table import (
    MANIFEST_KEYS,
    OVERHEAD_KEY,
    SCHEMA_VERSION,
    LatencyTable,
    boundary_key,
    embedding_key,
    head_key,
    op_key,
    point_key,
    table_keys,
)
from nasbert_deploy.space import STANDARD, TINY, Op


def _synthetic(space=TINY, seqs=(8, 16), overhead=0.01):
    """Entry ms = (index + 1) * seq / 8 (linear in seq), so interpolation is exact and sums are known."""
    entries = {}
    for i, key in enumerate(table_keys(space)):
        val = (lambda s: overhead) if key == OVERHEAD_KEY else (lambda s, i=i: overhead + (i + 1) * s / 8)
        entries[key] = {point_key(1, s): {"median_ms": val(s), "p90_ms": val(s), "mean_ms": val(s), "cv": 0.0, "runs": 3}
                        for s in seqs}
    corr = {point_key(1, s): {"planes": [{"scale": 0.9, "ms_per_mparam": 0.25, "offset_ms": -0.5}]} for s in seqs}
    manifest = make_manifest({"name": "synthetic"}, {}, 1.0, "test")
    return LatencyTable(space, {"name": "synthetic"}, entries, corr, {}, manifest)


def test_keys_count_standard_space():
    keys = table_keys(STANDARD)
    assert len(keys) == 25 + 25 + 5 + 5 + 1
    assert "mha@h256" in keys and "sep5@h128" in keys and "boundary@h128>h256" in keys
    assert "embedding@h192" in keys and "head@h512" in keys and len(set(keys)) == len(keys)


def test_schema_roundtrip(tmp_path):
    t = _synthetic()
    p = t.save(tmp_path / "t.json")
    data = json.loads(p.read_text())
    assert data["schema_version"] == SCHEMA_VERSION == 4 and data["corrections"]["b1s8"]["planes"][0]["ms_per_mparam"] == 0.25
    assert set(MANIFEST_KEYS) <= set(data["manifest"])
    assert data["manifest"]["space_hash"] == TINY.space_hash() and data["manifest"]["space"]["hidden_sizes"] == [32, 64]
    assert data["batch_sizes"] == [1] and data["seq_lens"] == [8, 16]
    for key in table_keys(TINY):
        assert set(data["entries"][key]["b1s8"]) >= {"median_ms", "p90_ms", "cv", "runs"}
    t2 = LatencyTable.load(p, space=TINY)
    a = TINY.parse("32:mha,ffn|64:sep3,id")
    assert t2.predict(a, 1, 16) == t.predict(a, 1, 16)


def test_predict_is_manual_sum_and_exactly_additive():
    t = _synthetic()
    a = TINY.parse("32:mha,sep5|64:ffn,id")
    s = 16

    def part(key):
        return t.entries[key][point_key(1, s)]["median_ms"] - 0.01

    # weights (parameters) of each part, by hand: TINY has embed_dim 16, output_dim 48, ffn_ratio 4
    assert (TINY.embed_dim, TINY.output_dim, TINY.ffn_ratio) == (16, 48, 4)
    w_mha32 = 4 * (32 * 32 + 32) + 2 * 32
    w_sep5_32 = 32 * 5 + 32 + 32 * 32 + 32 + 2 * 32
    w_ffn64 = 64 * 256 + 256 + 256 * 64 + 64 + 2 * 64
    w_fixed = (2 * 16 + 16 * 32 + 32) + (32 * 64 + 64) + (64 * 48 + 48)
    blocks = [0.9 * (part(op_key(Op("mha"), 32)) + part(op_key(Op("sep", 5), 32))) + 0.25e-6 * (w_mha32 + w_sep5_32),
              0.9 * part(op_key(Op("ffn"), 64)) + 0.25e-6 * w_ffn64]
    fixed = 0.9 * (part(embedding_key(32)) + part(boundary_key(32, 64)) + part(head_key(64))) + 0.25e-6 * w_fixed - 0.5
    p = t.predict(a, 1, s)
    assert p.blocks_ms == pytest.approx(blocks, rel=1e-12)
    assert p.fixed_ms == pytest.approx(fixed, rel=1e-12)
    assert p.total_ms == sum(p.blocks_ms) + p.fixed_ms  # exact: the search relies on it
    assert p.total_ms == sum(t.block_ms(b, 1, s) for b in a.blocks) + t.fixed_ms(a.hiddens, 1, s)
    assert p.fixed_ms == p.embedding_ms + p.boundaries_ms + p.head_ms + p.offset_ms and p.offset_ms == -0.5
    assert t.weight_mparams(a) * 1e6 == pytest.approx(w_mha32 + w_sep5_32 + w_ffn64 + w_fixed)


def test_interpolation_in_seq_len():
    t = _synthetic()
    k = op_key(Op("mha"), 64)
    assert t.entry_ms(k, 1, 12) == pytest.approx((t.entry_ms(k, 1, 8) + t.entry_ms(k, 1, 16)) / 2)
    assert t.entry_ms(k, 1, 10) == pytest.approx(0.75 * t.entry_ms(k, 1, 8) + 0.25 * t.entry_ms(k, 1, 16))
    with pytest.raises(TableError, match=r"outside the profiled range 8\.\.16"):
        t.entry_ms(k, 1, 32)
    with pytest.raises(TableError, match=r"batch 4 was not profiled; profiled batch sizes: \[1\]"):
        t.entry_ms(k, 4, 8)


def test_missing_entry_is_an_error_not_a_partial_sum():
    t = _synthetic()
    del t.entries[op_key(Op("ffn"), 64)]
    with pytest.raises(TableError, match="ffn@h64"):
        t.predict(TINY.parse("32:mha,id|64:mha,ffn"), 1, 8)
    del t.entries[head_key(32)]["b1s16"]
    with pytest.raises(TableError, match=r"head@h32.*b1s16"):
        t.fixed_ms((64, 32), 1, 16)


def test_other_space_and_schema_fail_clearly(tmp_path):
    p = _synthetic().save(tmp_path / "t.json")
    with pytest.raises(SpaceError, match="does not cover space 'standard'.*profile --space standard"):
        LatencyTable.load(p, space=STANDARD)
    unnamed = dataclasses.replace(STANDARD, name="teacher")  # e.g. a converted teacher: no `profile --space` for it
    with pytest.raises(SpaceError, match="is no named space .*measured, not predicted"):
        LatencyTable.load(p, space=unnamed)
    data = json.loads(p.read_text())
    for old in (1, 99):  # version 1 tables (affine correction only) must be re-profiled
        data["schema_version"] = old
        (tmp_path / "v.json").write_text(json.dumps(data))
        with pytest.raises(TableError, match=rf"schema version {old}; this build reads versions 2, 3, 4; re-profile"):
            LatencyTable.load(tmp_path / "v.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(TableError, match="not valid JSON"):
        LatencyTable.load(tmp_path / "bad.json")


def test_fit_correction_recovers_weights_term_and_held_out_errors():
    parts = [1.0, 2.0, 3.0, 5.0, 8.0, 4.0]
    mparams = [0.5, 3.0, 1.0, 6.0, 2.0, 9.0]  # not proportional to parts: the two terms are separable
    measured = [0.8 * x + 0.1 * w + 0.2 for x, w in zip(parts, mparams)]
    a, m, c = fit_correction(parts, mparams, measured)
    assert (a, m, c) == pytest.approx((0.8, 0.1, 0.2))
    e = held_out_errors(parts, mparams, measured)
    assert e["mape_pct"] == pytest.approx(0.0, abs=1e-9) and e["within_10pct"] == 1.0 and e["models"] == 6
    noisy = [y * f for y, f in zip(measured, (1.0, 1.3, 1.0, 1.0, 1.0, 1.0))]
    e2 = held_out_errors(parts, mparams, noisy)
    assert e2["max_abs_pct"] > 10 and e2["within_10pct"] < 1.0
    assert fit_correction(parts, mparams, noisy) == pytest.approx((0.8, 0.1, 0.2))  # the outlier is dropped (robust refit)


def test_fit_correction_is_non_negative():
    parts = [1.0, 2.0, 4.0, 8.0]
    mparams = [1.0, 1.0, 1.0, 1.0]
    measured = [0.5 * x - 0.3 for x in parts]  # the unconstrained fit would need a negative offset
    a, m, c = fit_correction(parts, mparams, measured, robust=False)
    r = [x / y for x, y in zip(parts, measured)]  # scale alone: minimises sum((a * r - 1)^2)
    assert (a, m, c) == pytest.approx((sum(r) / sum(v * v for v in r), 0.0, 0.0))


def test_build_table_fits_correction_from_whole_models():
    t = _synthetic(seqs=(8,))
    results = {k: {pk: [v, {**v, "median_ms": v["median_ms"] * 2}]} for k, d in t.entries.items() for pk, v in d.items()}
    texts = ("32:mha,id|32:ffn,id", "64:mha,ffn|64:sep3,sep5", "32:sep3,id|64:mha,ffn", "64:ffn,id|32:mha,id")
    archs = [TINY.parse(s) for s in texts]
    raw = LatencyTable(TINY, {}, {k: {"b1s8": v} for k, d in t.entries.items() for v in d.values()})
    for a in archs:  # whole models take exactly 0.7 * parts + 2 ms per million weights + 0.3
        ms = 0.7 * raw.raw_sum_ms(a, 1, 8) + 2.0 * raw.weight_mparams(a) + 0.3
        results[f"model:{a}"] = {"b1s8": [{"median_ms": ms, "p90_ms": 0, "mean_ms": 0, "cv": 0, "runs": 3}]}
    table = build_table(TINY, {"name": "x"}, results, archs, [(1, 8)], {})
    assert table.entries[OVERHEAD_KEY]["b1s8"]["rounds"] == 2  # lowest-median round kept
    assert table.corrections["b1s8"]["split_mparams"] is None  # 4 models: one plane
    corr = table.corrections["b1s8"]["planes"][0]
    assert corr["scale"] == pytest.approx(0.7) and corr["offset_ms"] == pytest.approx(0.3)
    assert corr["ms_per_mparam"] == pytest.approx(2.0)
    v = table.validation["b1s8"]
    assert len(v["weight_mparams"]) == 4 and v["models"] == 4
    assert v["mape_pct"] == pytest.approx(0, abs=1e-6) and v["uncorrected_mape_pct"] > 5
    assert table.predict(archs[1], 1, 8).total_ms == pytest.approx(results[f"model:{archs[1]}"]["b1s8"][0]["median_ms"])
    del results[f"model:{archs[0]}"]
    with pytest.raises(TableError, match="validation models are missing"):
        build_table(TINY, {"name": "x"}, results, archs, [(1, 8)], {})


def _step_models(n=40, seed=0, noise=0.02, step=True):
    """Whole models take max(parts + 0.1 ms/Mparam + 0.05, 1.4 * parts + 0.5 ms/Mparam - 2.0): the second plane
    (weights streamed from DRAM) takes over for big models; multiplicative noise."""
    import random

    rng = random.Random(seed)
    parts = [rng.uniform(0.3, 4.0) for _ in range(n)]
    mparams = [0.5 + 7.5 * i / (n - 1) for i in range(n)]
    rng.shuffle(mparams)
    true = [max(p + 0.1 * w + 0.05, (1.4 * p + 0.5 * w - 2.0) if step else 0.0) for p, w in zip(parts, mparams)]
    return parts, mparams, [y * (1 + rng.uniform(-noise, noise)) for y in true]


def test_fit_planes_finds_a_cache_step_and_keeps_one_plane_without_one():
    parts, mparams, measured = _step_models()
    planes, split = fit_planes(parts, mparams, measured)
    assert len(planes) == 2 and split is not None and 0.5 < split < 8.0
    assert planes[0][2] >= 0 > planes[1][2]  # the upper plane starts below the lower one: a step, not a shift
    assert held_out_errors(parts, mparams, measured)["mape_pct"] < 2.5
    one = held_out_errors(parts, mparams, measured, max_planes=1)
    assert one["mape_pct"] > 2 * held_out_errors(parts, mparams, measured)["mape_pct"]  # one plane cannot follow the step
    parts, mparams, measured = _step_models(step=False)
    planes, split = fit_planes(parts, mparams, measured)
    assert len(planes) == 1 and split is None  # no step: BIC keeps one plane
    assert planes[0] == pytest.approx(fit_correction(parts, mparams, measured))
    assert fit_planes(parts[:9], mparams[:9], measured[:9]) == ([fit_correction(parts[:9], mparams[:9], measured[:9])], None)


def _two_plane(t):
    """`t` with the correction at seq 16 replaced by two planes (the second binds for big models)."""
    t.corrections["b1s16"] = {"planes": [{"scale": 0.9, "ms_per_mparam": 0.25, "offset_ms": -0.5},
                                         {"scale": 0.9, "ms_per_mparam": 1000.0, "offset_ms": -50.0}], "split_mparams": 0.05}
    return t


def test_two_planes_predict_the_largest_exactly_additively_and_interpolate():
    t = _two_plane(_synthetic())
    small, big = TINY.parse("32:sep3,id|32:sep3,id"), TINY.parse("64:mha,ffn|64:ffn,ffn")
    assert t.n_planes(1, 16) == 2 and t.n_planes(1, 8) == 1 and t.n_planes(1, 12) == 2
    for a in (small, big):
        per_plane = [sum(t.block_ms(b, 1, 16, i) for b in a.blocks) + t.fixed_ms(a.hiddens, 1, 16, i) for i in range(2)]
        p = t.predict(a, 1, 16)
        assert p.total_ms == max(per_plane) and p.total_ms == sum(p.blocks_ms) + p.fixed_ms
        # between the points: each pair of the two points' planes, interpolated (entries are interpolated too)
        mid = [sum(t.block_ms(b, 1, 12, i) for b in a.blocks) + t.fixed_ms(a.hiddens, 1, 12, i) for i in range(2)]
        assert t.predict(a, 1, 12).total_ms == max(mid)
    lo, hi = t.planes(1, 8)[0], t.planes(1, 16)
    assert t.planes(1, 12) == [pytest.approx(tuple((x + y) / 2 for x, y in zip(lo, h)), rel=1e-12) for h in hi]
    plane = [max(range(2), key=lambda i, a=a: sum(t.block_ms(b, 1, 16, i) for b in a.blocks) + t.fixed_ms(a.hiddens, 1, 16, i))
             for a in (small, big)]
    assert plane == [0, 1]  # each plane decides one of them


def test_schema_2_tables_load_as_one_plane_and_refit(tmp_path):
    t = _synthetic(seqs=(8,))
    parts, mparams, measured = _step_models()
    t.validation["b1s8"] = {"archs": ["x"] * 40, "params": [1] * 40, "parts_ms": parts, "weight_mparams": mparams,
                            "measured_ms": measured}
    data = t.to_dict()
    data["schema_version"] = 2
    data["corrections"] = {"b1s8": {"scale": 0.9, "ms_per_mparam": 0.25, "offset_ms": -0.5}}
    (tmp_path / "v2.json").write_text(json.dumps(data))
    old = LatencyTable.load(tmp_path / "v2.json", space=TINY)
    assert old.planes(1, 8) == [(0.9, 0.25, -0.5)]
    a = TINY.parse("32:mha,ffn|64:sep3,id")
    assert old.predict(a, 1, 8) == t.predict(a, 1, 8)
    new = refit_table(old)
    assert len(new.planes(1, 8)) == 2 and new.validation["b1s8"]["mape_pct"] < 2.5 and "refitted" in new.manifest
    del new.validation["b1s8"]["parts_ms"]
    with pytest.raises(TableError, match="lacks the whole-model data to refit"):
        refit_table(new)


def test_refit_cli_upgrades_a_table_and_refuses_bad_files(tmp_path):
    from typer.testing import CliRunner

    from nasbert_deploy.cli.app import app

    t = _synthetic(seqs=(8,))
    parts, mparams, measured = _step_models()
    t.validation["b1s8"] = {"archs": ["x"] * 40, "params": [1] * 40, "parts_ms": parts, "weight_mparams": mparams,
                            "measured_ms": measured, "round_spread_pct": [2.0] * 38 + [15.0, 30.0]}
    src = t.save(tmp_path / "old.json")
    runner = CliRunner()
    res = runner.invoke(app, ["profile", "--refit", str(src), "--out", str(tmp_path / "new.json")])
    assert res.exit_code == 0, res.output
    assert "leave-one-out" in res.stdout and len(LatencyTable.load(tmp_path / "new.json").planes(1, 8)) == 2
    assert "median 2.0%, max 30%, 2 of 40 above 10%" in " ".join(res.stdout.split())  # round-to-round spread, kept
    assert LatencyTable.load(tmp_path / "new.json").validation["b1s8"]["round_spread_pct"][-1] == 30.0
    res = runner.invoke(app, ["profile", "--refit", str(tmp_path / "missing.json")])
    assert res.exit_code == 2 and "latency table" in res.stderr and "does not exist" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.json", "old.json"]


def test_spread_near_reports_how_much_models_of_that_size_varied(tmp_path):
    from typer.testing import CliRunner

    from nasbert_deploy.cli.app import app

    t = _synthetic()
    small, big, other = "32:mha,id|32:ffn,id", "64:mha,ffn|64:sep3,sep5", "64:ffn,ffn|64:ffn,ffn"
    t.validation["b1s16"] = {"archs": [small, big], "round_spread_pct": [3.0, 40.0], "holdout": {"archs": [other],
                                                                                                  "round_spread_pct": [12.0]}}
    a = TINY.parse(big)
    assert t.spread_near(a, 1, 16) == (1, 40.0)  # only `big` is within +-20% of its own weights
    assert t.spread_near(a, 1, 14) == (1, 40.0)  # nearest profiled seq_len (16) is used
    assert t.spread_near(TINY.parse(other), 1, 16, within=10.0) == (3, 40.0)  # every model near with a wide margin
    assert t.spread_near(a, 1, 8) is None  # no validation data at seq 8
    path = t.save(tmp_path / "t.json")
    r = CliRunner().invoke(app, ["predict", big, "--space", "tiny", "--table", str(path), "--seq-len", "16"])
    assert r.exit_code == 0 and "varied by up to 40%" in " ".join(r.stdout.split())
    r = CliRunner().invoke(app, ["predict", small, "--space", "tiny", "--table", str(path), "--seq-len", "16"])
    assert r.exit_code == 0 and "varied" not in r.stdout  # 3%: no note
