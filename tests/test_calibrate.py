"""`--calibrate`: one whole model timed on this machine scales a table's predictions (search, export report).

Real timings on the micro table (tests/conftest.py); the assertions are on how the figures are combined, never on
how fast anything is.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from helpers import MICRO
from search_helpers import random_table
from typer.testing import CliRunner

from nasbert_deploy.cli.app import app
from nasbert_deploy.devices import load_device
from nasbert_deploy.profiling.host import calibrate
from nasbert_deploy.profiling.items import reference_arch
from nasbert_deploy.search.problem import Budget
from nasbert_deploy.search.run import SearchRequest, run_search

pytestmark = pytest.mark.slow
SPEC_TOML = """name = "micro-ort"
runtime = "onnxruntime"
target = "cpu"
precision = "fp32"
threads = 1
batch_sizes = [1]
seq_lens = [8, 16]
"""


def _spec():
    return replace(load_device("cpu-ort"), name="micro-ort", seq_lens=(8, 16))


def test_calibration_is_measured_over_predicted_for_the_reference_model(micro_table):
    _, table = micro_table
    cal = calibrate(_spec(), table, MICRO, 1, 12, rounds=2)
    ref = reference_arch(MICRO)
    assert cal.arch == str(ref) == table.reference["arch"]  # the table's own reference model
    assert len(cal.rounds_ms) == 2 and all(x > 0 for x in cal.rounds_ms)
    assert min(cal.rounds_ms) <= cal.measured_ms <= max(cal.rounds_ms)  # rounds combined by the table's statistic
    assert cal.predicted_ms == pytest.approx(table.predict(ref, 1, 12).total_ms)
    assert cal.factor == pytest.approx(cal.measured_ms / cal.predicted_ms)
    assert table.rescaled(cal.factor).predict(ref, 1, 12).total_ms == pytest.approx(cal.measured_ms)
    assert "micro-ort" in cal.line() and f"x {cal.factor:.2f}" in cal.line() and "\n" not in cal.line()
    # a table without a stored reference (schema 3, the shipped ones) is calibrated the same way
    bare = replace(table, reference={})
    assert calibrate(_spec(), bare, MICRO, 1, 12, rounds=1).predicted_ms == pytest.approx(cal.predicted_ms)


def test_search_with_calibrate_searches_the_scaled_table(micro_table, tmp_path):
    path, table = micro_table
    cands = tmp_path / "cands.json"
    random_table(MICRO, 6, seed=3).save(cands)
    notes = []
    budget = Budget.per_device([1e6], None, None)
    request = SearchRequest(budget, _spec(), path, cands, batch=1, seq_len=12, top=3, calibrate=True)
    out = run_search(request, lambda line, warning: notes.append((line, warning)))
    assert len(out.calibrations) == 1
    f = out.calibrations[0].factor
    assert [(n, w) for n, w in notes if not w] == [(out.calibrations[0].line(), False)]  # one line, not a warning
    plain = run_search(replace(request, calibrate=False))
    assert [str(s.arch) for s in out.result.best] == [str(s.arch) for s in plain.result.best]  # the order holds
    for cal, raw in zip(out.result.best, plain.result.best):
        assert cal.latency_ms == pytest.approx(f * raw.latency_ms)
        assert cal.latency_ms == pytest.approx(table.rescaled(f).predict(cal.arch, 1, 12).total_ms)
    assert out.to_dict()["calibration"][0]["factor"] == pytest.approx(f)


def test_search_cli_calibrate(micro_table, tmp_path):
    path, _ = micro_table
    cands, spec = tmp_path / "cands.json", tmp_path / "micro-ort.toml"
    random_table(MICRO, 4, seed=1).save(cands)
    spec.write_text(SPEC_TOML)
    common = ["search", "--table", str(path), "--candidates", str(cands), "--seq-len", "12", "--max-latency-ms", "1000"]
    res = CliRunner().invoke(app, [*common, "--device", str(spec), "--calibrate", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)  # the calibration line is on stderr: stdout stays JSON
    assert data["calibration"][0]["device"] == "micro-ort" and "calibrated micro-ort" in res.stderr
    res = CliRunner().invoke(app, [*common, "--calibrate"])  # nothing to time on
    assert res.exit_code == 2 and "--calibrate times a model on the device" in res.output


def test_export_report_prediction_uses_the_calibration(micro_table, monkeypatch, tmp_path):
    from nasbert_deploy.export import measure as em
    from nasbert_deploy.profiling.cache import ExportCache, prepare_exports
    from nasbert_deploy.profiling.items import model_item

    _, table = micro_table
    arch = MICRO.parse("32:mha,ffn|32:sep3,id")
    files, _ = prepare_exports([[], [model_item(arch)]], _spec(), MICRO, ExportCache.at(), ExportCache(tmp_path))
    monkeypatch.setattr(em, "load_latency_table", lambda s, sp=None: table)
    out = em.measure_latency(files[model_item(arch).key], _spec(), MICRO, arch, 1, 12, MICRO.vocab_size, {}, False,
                             factor=1.5)
    assert out["calibration_factor"] == 1.5
    assert out["predicted_ms"] == pytest.approx(1.5 * table.predict(arch, 1, 12).total_ms)


def test_export_calibrates_each_device_and_reports_with_the_factor(micro_table, monkeypatch, tmp_path):
    from nasbert_deploy.export import measure as em
    from nasbert_deploy.export.pipeline import ExportOptions
    from nasbert_deploy.export.run import ExportRequest, device_tables

    _, table = micro_table
    monkeypatch.setattr(em, "load_latency_table", lambda s, sp=None: table)
    notes = []
    request = ExportRequest(tmp_path / "m", ExportOptions(formats=("onnx",), seq_len=12), _spec(), "32:mha,ffn|32:sep3,id",
                            calibrate=True, more_specs=(replace(_spec(), name="micro-ort-2"),))
    tables, cals = device_tables(request, MICRO, 12, lambda line, warning: notes.append(line))
    assert [c.device for c in cals] == ["micro-ort", "micro-ort-2"] and len(notes) == 2
    ref = reference_arch(MICRO)
    for t, c in zip(tables, cals):
        assert t.predict(ref, 1, 12).total_ms == pytest.approx(c.measured_ms)
    plain, none = device_tables(replace(request, calibrate=False), MICRO, 12)
    assert none == [] and plain == [table, table]
