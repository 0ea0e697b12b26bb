"""`nasbert-deploy supernet train/info` through typer's CliRunner, and the default-supernet helpers."""

from __future__ import annotations

import json

import pytest
from helpers import SAMPLE, make_sample_teacher
from typer.testing import CliRunner

from nasbert_deploy.cli.app import app
from nasbert_deploy.errors import CheckpointError

runner = CliRunner()


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    return make_sample_teacher(tmp_path_factory.mktemp("cli-teacher"), layers=2)


def _train_args(teacher_dir, out, *extra):
    return [
        "supernet", "train", "--teacher", str(teacher_dir), "--corpus", str(SAMPLE), "--out", str(out), "--space", "tiny",
        "--paragraphs", "40", "--val-size", "8", "--seq-len", "16", "--batch-size", "8", "--epochs", "2",
        "--steps-per-epoch", "3", "--bins", "2", "--per-bin", "8", "--keep", "3", "--warmup-epochs", "1", "--threads", "1",
        *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_train_then_info(tmp_path, teacher_dir):
    out = tmp_path / "run"
    res = runner.invoke(app, _train_args(teacher_dir, out))
    assert res.exit_code == 0, res.output
    assert "candidates.json written" in res.output
    meta = json.loads((out / "supernet.json").read_text())["metadata"]
    assert meta["space"] == "tiny" and meta["paragraphs"] == 40 and meta["steps"] == 6 and meta["latency_source"] == "flops"
    table = json.loads((out / "candidates.json").read_text())
    assert [len(b) for b in table["blocks"]] == [32, 32]  # 2 bins of 20, one shrink of E/2 = 4
    res = runner.invoke(app, ["supernet", "info", "--supernet", str(out)])
    assert res.exit_code == 0, res.output
    assert "tiny" in res.output and "candidates per block" in res.output and "32" in res.output
    # running again resumes a finished run: nothing to train, same table
    res = runner.invoke(app, _train_args(teacher_dir, out, "--resume"))
    assert res.exit_code == 0, res.output
    assert json.loads((out / "candidates.json").read_text())["blocks"] == table["blocks"]


def test_bad_input_exits_2_and_writes_nothing(tmp_path, teacher_dir):
    out = tmp_path / "bad"
    res = runner.invoke(app, _train_args(teacher_dir, out, "--blocks", "0,5"))
    assert res.exit_code == 2 and "valid block indices are 0..1" in res.output
    res = runner.invoke(app, _train_args(teacher_dir, out, "--resume"))
    assert res.exit_code == 2 and "has no checkpoint" in res.output
    res = runner.invoke(app, _train_args(teacher_dir, out, "--space", "minilm"))
    assert res.exit_code == 2 and "does not fit space 'minilm'" in res.output
    res = runner.invoke(app, _train_args(teacher_dir, out, "--init", "etd-impt"))  # tiny: heads of 16, teacher's of 12
    assert res.exit_code == 2 and "head_dim 16 is not a multiple of the teacher's head size 12" in res.output, res.output
    res = runner.invoke(app, _train_args(teacher_dir, out, "--corpus", str(tmp_path / "none.txt")))
    assert res.exit_code == 2 and "does not exist" in res.output
    assert not out.exists()
    res = runner.invoke(app, ["supernet", "info", "--supernet", str(tmp_path)])
    assert res.exit_code == 2 and "is not a trained supernet" in res.output


def test_default_supernet_helpers(tmp_path, monkeypatch):
    from nasbert_deploy.supernet import default as sd

    shipped = sd.default_supernet_dir()
    assert shipped.parts[-3:] == ("nasbert_deploy", "data", "supernet")
    monkeypatch.setattr(sd, "default_supernet_dir", lambda: tmp_path / "absent")
    with pytest.raises(CheckpointError, match="default supernet is not in this install"):
        sd.load_default_supernet()
    with pytest.raises(CheckpointError, match="--supernet DIR"):
        sd.default_candidates_path()


def test_shipped_default_supernet_is_consistent():
    from nasbert_deploy.space import MINILM
    from nasbert_deploy.supernet.candidates import CandidateTable
    from nasbert_deploy.supernet.default import default_candidates_path, default_supernet_dir, load_default_supernet

    assert (default_supernet_dir() / "supernet.json").is_file(), "the package ships the default supernet"
    net, meta = load_default_supernet()
    assert net.space.space_hash() == MINILM.space_hash() and meta["space"] == "minilm"
    table = CandidateTable.load(default_candidates_path(), MINILM)
    assert len(table.blocks) == 3 and all(len(b) >= 8 for b in table.blocks)
    assert sum(p.numel() for p in net.parameters()) == 21_597_888
