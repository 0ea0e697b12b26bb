"""`profile --fast`: the quick-start preset (settings and space chosen by the command; timing stubbed here, the
profiler itself runs for real in tests/test_profile.py, the preset's wall time and error are in docs/profiling.md)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from typer.testing import CliRunner

from nasbert_deploy.cli.app import app
from nasbert_deploy.profiling.settings import FAST, ProfileSettings, fast_settings


@pytest.fixture
def calls(monkeypatch):
    from nasbert_deploy.profiling import profiler
    from nasbert_deploy.profiling.table import LatencyTable, find_table

    seen = []

    def profile_device(spec, space, out, settings, progress):
        seen.append((spec.name, space.name, settings))
        table = LatencyTable.load(find_table("cpu-ort"))
        table.save(out)
        return table

    monkeypatch.setattr(profiler, "profile_device", profile_device)
    return seen


def test_the_preset_is_lighter_than_the_defaults():
    d, f = ProfileSettings(), fast_settings()
    assert f.rounds < d.rounds and f.model_rounds < d.model_rounds and f.validate < d.validate
    assert f.min_time_s < d.min_time_s and f.host_check_rounds < d.host_check_rounds
    assert f.model_rounds % 2 == 0  # the noise ceiling compares two equal halves
    assert replace(f, **{k: getattr(d, k) for k in FAST}) == d  # nothing else differs
    assert fast_settings(rounds=5).rounds == 5


def test_fast_profiles_the_shipped_supernets_space_with_the_preset(calls, tmp_path):
    res = CliRunner().invoke(app, ["profile", "--device", "cpu-ort", "--fast", "--out", str(tmp_path / "t.json")])
    assert res.exit_code == 0, res.output
    assert calls == [("cpu-ort", "minilm", fast_settings())]
    assert "fast profile (--fast): 12 fitting models" in res.stdout and "leave-one-out" in res.stdout


def test_explicit_options_override_the_preset(calls, tmp_path):
    args = ["profile", "--device", "cpu-ort", "--fast", "--out", str(tmp_path / "t.json"), "--rounds", "3", "--space", "tiny",
            "--min-time", "0.3", "--holdout", "5"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert calls == [("cpu-ort", "tiny", fast_settings(rounds=3, min_time_s=0.3, holdout=5))]
    res = CliRunner().invoke(app, ["profile", "--device", "cpu-ort", "--out", str(tmp_path / "d.json")])  # without --fast
    assert res.exit_code == 0, res.output
    assert calls[-1] == ("cpu-ort", "standard", ProfileSettings())
