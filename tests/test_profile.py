"""The profiler on a micro space with real runtimes: every entry, whole-model validation, resume after Ctrl-C."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from helpers import MICRO, SETTINGS

from nasbert_deploy.devices import load_device
from nasbert_deploy.profiling.items import op_items, validation_archs
from nasbert_deploy.profiling.profiler import profile_device, rounds_due
from nasbert_deploy.profiling.table import MANIFEST_KEYS, LatencyTable, table_keys
from nasbert_deploy.space import STANDARD, TINY


def test_items_cover_the_standard_space():
    items = op_items(STANDARD)
    assert len(items) == 61 and [i.key for i in items] == table_keys(STANDARD)
    archs = validation_archs(STANDARD, 20)
    params = [STANDARD.params(a) for a in archs]
    assert len({str(a) for a in archs}) == 20 and params == sorted(params)
    assert params[-1] > 3 * params[0]  # spread over the size range, not clustered


def test_rounds_are_spread_over_the_passes():
    assert [rounds_due(3, 5, r) for r in range(5)] == [1, 1, 2, 2, 3]  # passes 0, 2, 4
    assert [rounds_due(5, 5, r) for r in range(5)] == [1, 2, 3, 4, 5]
    assert [rounds_due(1, 5, r) for r in range(5)] == [1] * 5
    assert [rounds_due(2, 3, r) for r in range(3)] == [1, 1, 2]
    for k in range(1, 8):  # every round is due by the last pass, never more than one per pass
        due = [rounds_due(k, 7, r) for r in range(7)]
        assert due[-1] == k and all(0 <= b - a <= 1 for a, b in zip([0] + due, due))


class _Stop(Exception):
    pass


@pytest.mark.slow
def test_profiled_table_is_complete(micro_table):
    out, table = micro_table
    data = json.loads(out.read_text())
    assert set(MANIFEST_KEYS) <= set(data["manifest"])
    m = data["manifest"]
    assert m["device"]["name"] == "micro-ort" and "onnxruntime" in m["runtime_versions"] and m["cpu_model"]
    assert m["profiling_wall_s"] > 0 and m["space_hash"] == MICRO.space_hash()
    loaded = LatencyTable.load(out, space=MICRO)
    assert loaded.seq_lens == (8, 16) and loaded.batch_sizes == (1,)
    for key in table_keys(MICRO):
        for pk in ("b1s8", "b1s16"):
            e = loaded.entries[key][pk]
            assert e["median_ms"] > 0 and 2 <= e["rounds"] <= SETTINGS.max_rounds and e["runs"] >= 10  # 2 + adaptive
            assert e["rounds"] == len(e["rounds_ms"]) and e["min_ms"] == min(e["rounds_ms"])
    for pk in ("b1s8", "b1s16"):
        v = loaded.validation[pk]
        assert v["models"] == 3 and len(v["measured_ms"]) == 3 and 0 <= v["within_10pct"] <= 1 and v["mape_pct"] >= 0
        assert all(ms > 0 for ms in v["measured_ms"])
        assert len(v["round_spread_pct"]) == 3 and all(x >= 0 for x in v["round_spread_pct"])  # slowest/fastest round
        h = v["holdout"]  # timed in the same passes, never fitted
        assert h["models"] == 2 and not set(h["archs"]) & set(v["archs"]) and len(set(h["archs"])) == 2
        assert len(h["round_spread_pct"]) == 2
        assert h["predicted_ms"] == [loaded.predict(MICRO.parse(a), 1, int(pk[3:])).total_ms for a in h["archs"]]
        assert h["mape_pct"] == pytest.approx(sum(abs(p - m) / m for p, m in zip(h["predicted_ms"], h["measured_ms"])) * 50)
    bd = m["profiling_breakdown_s"]
    assert {"export_s", "timing_s", "holdout_export_s", "holdout_timing_s", "reference_s", "host_check_s", "fit_s"} <= set(bd)
    # exports: 7 parts exported, 3 + 2 models and the reference assembled from them (fewer if another test cached parts)
    assert m["exports"].get("exported", 0) <= 7 and m["exports"].get("assembled", 0) == 6
    host = m["host_check"]
    assert len(host["rounds_ms"]) == 3 and host["spread_pct"] >= 0 and host["point"] == "b1s8" and host["advice"]
    assert loaded.measurement["statistic"] in ("min", "fastest_half", "median", "trimmed")
    assert "fewer than 10" in loaded.measurement["chosen_by"]  # 3 fitting models: the default, raw lowest medians
    for pk in ("b1s8", "b1s16"):
        ref = loaded.reference["points"][pk]
        assert ref["median_ms"] > 0 and ref["timings"] >= 2 * SETTINGS.passes  # start and end of every pass
        ceiling = loaded.validation[pk]["noise_ceiling"]
        assert ceiling["models"] == 5 and 0 <= ceiling["within_10pct"] <= 1 and ceiling["mape_pct"] >= 0
        assert loaded.validation[pk]["holdout"]["limited_by"] in ("noise", "prediction")
        assert all("rel_ref" in loaded.entries[k][pk] for k in table_keys(MICRO))
    arch = MICRO.parse("32:mha,ffn|32:sep3,id")
    p = loaded.predict(arch, 1, 12)
    assert p.total_ms == sum(p.blocks_ms) + p.fixed_ms and p.total_ms > 0


def test_profile_refuses_seq_beyond_positions(tmp_path):
    from nasbert_deploy.errors import DeviceError

    spec = replace(load_device("cpu-ort"), seq_lens=(32, 128))
    with pytest.raises(DeviceError, match=r"seq_lens \[128\] exceed the space's 64 positions"):
        profile_device(spec, TINY, tmp_path / "t.json", SETTINGS)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_reference_retimed_now_rescales_the_table(micro_table):
    from nasbert_deploy.profiling.host import host_factor, time_reference

    _, table = micro_table
    spec = replace(load_device("cpu-ort"), name="micro-ort", seq_lens=(8, 16))
    meds = time_reference(spec, table, 1, 12, rounds=3)  # the reference comes from the export cache
    assert len(meds) == 3 and all(x > 0 for x in meds)
    f = host_factor(spec, table, 1, 12, rounds=3)
    assert 0.2 < f < 5.0  # the same host a minute later (a shared one: loose)
    arch = MICRO.parse("32:mha,ffn|32:sep3,id")
    assert table.rescaled(f).predict(arch, 1, 12).total_ms == pytest.approx(f * table.predict(arch, 1, 12).total_ms)


@pytest.mark.slow
def test_export_report_uses_the_table_statistic_and_rescales(micro_table, monkeypatch, tmp_path):
    from nasbert_deploy.export import measure as em
    from nasbert_deploy.profiling.cache import ExportCache, prepare_exports
    from nasbert_deploy.profiling.items import model_item

    _, table = micro_table
    spec = replace(load_device("cpu-ort"), name="micro-ort", seq_lens=(8, 16))
    arch = MICRO.parse("32:mha,ffn|32:sep3,id")
    files, _ = prepare_exports([[], [model_item(arch)]], spec, MICRO, ExportCache.at(), ExportCache(tmp_path))
    monkeypatch.setattr(em, "load_latency_table", lambda s, sp=None: table)
    out = em.measure_latency(files[model_item(arch).key], spec, MICRO, arch, 1, 12, MICRO.vocab_size,
                             {"warmup": 1, "runs": 5}, True, rescale=True)
    m = out["measured"]
    assert m["statistic"] == table.statistic and m["rounds"] == em.MEASURE_ROUNDS and m["min_ms"] <= m["median_ms"]
    assert out["host_factor"] > 0 and out["predicted_rescaled_ms"] == pytest.approx(out["predicted_ms"] * out["host_factor"])
