"""Baselines a user would pick instead of a searched student: truncated teacher, uniform students; side-by-side latency."""

from __future__ import annotations

import pytest
from helpers import make_tiny_teacher

from nasbert_deploy.devices import load_device
from nasbert_deploy.errors import TeacherError
from nasbert_deploy.space import MINILM, TINY
from nasbert_deploy.student.baselines import measure_encoders, truncate_encoder, uniform_arch


def test_uniform_arch_spreads_pairs_over_blocks():
    a = uniform_arch(MINILM, 256, 4)
    assert str(a) == "256:mha,ffn,mha|256:ffn,mha,ffn|256:mha,ffn,id"
    assert str(uniform_arch(MINILM, 128, 3)) == "128:mha,ffn,id|128:mha,ffn,id|128:mha,ffn,id"
    with pytest.raises(ValueError):
        uniform_arch(MINILM, 384, 3)  # not a hidden size of the space
    with pytest.raises(ValueError):
        uniform_arch(TINY, 32, 5)  # 10 ops do not fit 2 blocks x 2 slots


def test_truncated_teacher_keeps_the_first_layers(tmp_path):
    import torch
    from transformers import AutoModel

    src = make_tiny_teacher(tmp_path / "t")
    out = truncate_encoder(src, 1, tmp_path / "t1")
    full = AutoModel.from_pretrained(src).eval()
    small = AutoModel.from_pretrained(out).eval()
    assert small.config.num_hidden_layers == 1 and (out / "tokenizer.json").is_file()
    ids = torch.tensor([[2, 40, 41, 3]])
    with torch.no_grad():
        ref = full(input_ids=ids, output_hidden_states=True).hidden_states[1]
        got = small(input_ids=ids).last_hidden_state
    assert torch.allclose(ref, got, atol=1e-6)
    with pytest.raises(TeacherError, match="valid: 1..2"):
        truncate_encoder(src, 3, tmp_path / "t3")


@pytest.mark.slow
def test_truncate_command_writes_a_folder_and_checks_its_inputs_first(tmp_path):
    from helpers import one_line_error
    from typer.testing import CliRunner

    from nasbert_deploy.cli.app import app

    run = CliRunner().invoke
    src = make_tiny_teacher(tmp_path / "t")
    out = tmp_path / "t1"
    r = run(app, ["truncate", "--teacher", str(src), "--layers", "1", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "1 of 2" in r.output and (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    one_line_error(run(app, ["truncate", "--teacher", str(src), "--layers", "1", "--out", str(out)]), "--force")
    never = tmp_path / "never"
    one_line_error(run(app, ["truncate", "--teacher", str(src), "--layers", "3", "--out", str(never)]), "valid: 1..2")
    one_line_error(run(app, ["truncate", "--teacher", str(src), "--layers", "0", "--out", str(never)]), "valid: 1..2")
    one_line_error(run(app, ["truncate", "--teacher", str(tmp_path / "nope"), "--layers", "1", "--out", str(never)]),
                   "nope")
    assert not never.exists()


def test_measure_encoders_side_by_side(tmp_path):
    src = make_tiny_teacher(tmp_path / "t")
    one = truncate_encoder(src, 1, tmp_path / "t1")
    figs = measure_encoders({"full": src, "one": one}, load_device("cpu-ort"), seq_len=16, rounds=2, min_time_s=0.01, vocab=1000)
    assert figs["full"]["ratio_to_first"] == 1.0
    assert 0 < figs["one"]["median_ms"] and figs["one"]["lowest_ms"] <= figs["one"]["median_ms"]
    # speed itself is the benchmark's business (benchmarks/bench_quality.py); here: the ratio is the medians'
    # (a median of per-round ratios, so it lies between the rounds' extreme ratios; a unit slip would break it)
    assert 0.1 < figs["one"]["ratio_to_first"] < 10


@pytest.mark.slow
def test_a_truncated_teacher_fine_tunes_mean_pooled_and_exports(tmp_path):
    """`truncate` -> `finetune` -> `export --model`: the baseline trains under the students' mean-pooling head
    (converted exactly, so a fair comparison) and goes through the same export; `--pooling cls` keeps BERT's own
    [CLS] classifier; `--pooling mean` of a folder that is not a BERT encoder is one line, exit 2."""
    import json

    from helpers import one_line_error
    from typer.testing import CliRunner

    from nasbert_deploy.cli.app import app
    from nasbert_deploy.export.trained import check_trained_folder
    from nasbert_deploy.student.tasks import sample_task_path

    run = CliRunner().invoke
    one = truncate_encoder(make_tiny_teacher(tmp_path / "t"), 1, tmp_path / "t1")
    common = ["finetune", "--model", str(one), "--task", str(sample_task_path("train")), "--valid",
              str(sample_task_path("valid")), "--epochs", "1", "--batch-size", "16", "--max-len", "32"]
    r = run(app, [*common, "--out", str(tmp_path / "mean")])
    assert r.exit_code == 0, r.output
    assert "pooling: mean (auto: a BERT encoder, converted exactly)" in r.output
    assert json.loads((tmp_path / "mean" / "finetune_report.json").read_text())["pooling"] == "mean"
    assert check_trained_folder(tmp_path / "mean") == "classifier"
    r = run(app, ["export", "--model", str(tmp_path / "mean"), "--out", str(tmp_path / "x"), "--no-memory", "--no-timing"])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "x" / "report.json").read_text())
    assert report["output"] == "logits" and report["validation"]["passed"] and report["weights"]["kind"] == "classifier"
    r = run(app, [*common, "--pooling", "cls", "--out", str(tmp_path / "cls")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "cls" / "config.json").read_text())["architectures"] == ["BertForSequenceClassification"]
    one_line_error(run(app, [*common, "--model", str(tmp_path / "mean"), "--pooling", "mean", "--out",
                             str(tmp_path / "never")]), "valid for it: auto, cls")
    assert not (tmp_path / "never").exists()


@pytest.mark.slow
def test_a_truncated_teacher_distils_on_a_corpus_like_a_student(tmp_path):
    """`distill --from-export` takes `truncate`'s BERT folder (converted exactly): the truncated-teacher baseline gets
    the students' corpus recipe (sentence-level terms too); a folder whose weights do not load is one line, exit 2."""
    import json

    import torch
    from helpers import SAMPLE, one_line_error
    from typer.testing import CliRunner

    from nasbert_deploy.cli.app import app
    from nasbert_deploy.student.build import build_student
    from nasbert_deploy.teacher import load_teacher

    src = make_tiny_teacher(tmp_path / "t")
    one = truncate_encoder(src, 1, tmp_path / "t1")
    student = build_student(from_export=one)
    assert student.init == "encoder" and student.model.config.arch == "48:mha,ffn"
    bert = load_teacher(one)
    ids = torch.tensor([[2, 40, 41, 3]])
    with torch.no_grad():
        want = bert.model(input_ids=ids).last_hidden_state
        got = student.model.eval()(input_ids=ids).last_hidden_state
    assert torch.allclose(got, want, atol=1e-4)
    run = CliRunner().invoke
    args = ["distill", "--from-export", str(one), "--teacher", str(src), "--corpus", str(SAMPLE),
            "--steps", "2", "--batch-size", "4", "--seq-len", "16", "--embedding-weight", "1", "--similarity-weight", "1"]
    r = run(app, [*args, "--out", str(tmp_path / "d")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "d" / "distill_report.json").read_text())["init"] == "encoder"
    assert json.loads((tmp_path / "d" / "config.json").read_text())["model_type"] == "nasbert"
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text((one / "config.json").read_text())  # no weights, no tokenizer
    one_line_error(run(app, [*args[:1], "--from-export", str(tmp_path / "broken"), *args[3:], "--out",
                             str(tmp_path / "never")]), "--from-export")
    assert not (tmp_path / "never").exists()
