"""A fine-tuned NAS-BERT teacher for task-specific distillation (`distill --teacher <finetune output>`)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import SAMPLE, loud_tiny_teacher
from typer.testing import CliRunner

from nasbert_deploy.cli.app import app
from nasbert_deploy.errors import TeacherError
from nasbert_deploy.model.etd import convert_teacher
from nasbert_deploy.model.teacher_view import load_any_teacher, load_nasbert_teacher
from nasbert_deploy.teacher import load_teacher, teacher_layers

TEXTS = [t for t in SAMPLE.read_text().splitlines() if t.strip()][:8]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return loud_tiny_teacher(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def converted(bert, tmp_path_factory):
    """The tiny BERT converted into NAS-BERT form (one 48:mha,ffn block per layer), saved as a folder."""
    d = tmp_path_factory.mktemp("converted")
    convert_teacher(bert.model).save_pretrained(d)
    bert.tokenizer.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def classifier(bert, tmp_path_factory):
    """A fine-tuned (1 epoch) mean-pooled teacher classifier, as `finetune` writes it."""
    from nasbert_deploy.student.finetune import FinetuneConfig, finetune_teacher
    from nasbert_deploy.student.tasks import load_task, sample_task_path

    src, root = tmp_path_factory.mktemp("bert-src"), tmp_path_factory.mktemp("clf")
    bert.model.save_pretrained(src)
    bert.tokenizer.save_pretrained(src)
    train = load_task(sample_task_path("train")).subset(range(32))
    valid = load_task(sample_task_path("valid")).subset(range(16))
    finetune_teacher(src, train, valid, root / "ft", FinetuneConfig(epochs=1, batch_size=8, max_len=32), pooling="mean")
    return root / "ft"


def _inputs(tokenizer):
    enc = tokenizer(TEXTS[:4], padding=True, truncation=True, max_length=32, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def test_a_converted_teacher_gives_the_berts_hidden_state_at_every_layer(bert, converted):
    t = load_nasbert_teacher(converted)
    assert (t.num_layers, t.hidden_size) == (2, 48) and teacher_layers(converted, nasbert=True) == 2
    ids, mask = _inputs(t.tokenizer)
    with torch.no_grad():
        want = bert.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        got = t.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    m = mask.bool()
    assert len(got.hidden_states) == len(want) == 3
    for g, w in zip(got.hidden_states, want, strict=True):
        assert torch.allclose(g[m], w[m], atol=1e-4)
    assert torch.equal(got.last_hidden_state, got.hidden_states[-1])
    assert not any(p.requires_grad and p.grad is not None for p in t.model.parameters())


def test_a_fine_tuned_classifier_teaches_with_its_own_encoder(classifier):
    from nasbert_deploy.student.finetune import load_classifier

    t = load_any_teacher(classifier)
    clf, _ = load_classifier(classifier)
    ids, mask = _inputs(t.tokenizer)
    with torch.no_grad():
        want = clf.nasbert(ids, mask).last_hidden_state
        got = t.model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.allclose(got, want, atol=1e-5)
    assert type(t.model).__name__ == "NasBertTeacher" and t.num_layers == 2


def test_only_distill_takes_a_nas_bert_teacher_and_a_narrow_one_is_refused(classifier, tmp_path):
    with pytest.raises(TeacherError, match="is a NAS-BERT model: it teaches only"):
        load_teacher(classifier)
    from nasbert_deploy.space import TINY
    from nasbert_deploy.student.distill import build_student

    narrow = tmp_path / "narrow"
    build_student("64:mha,ffn|32:sep3,id", init="random", space=TINY).model.save_pretrained(narrow)
    with pytest.raises(TeacherError, match=r"blocks of width \[32, 64\], not its output width 48"):
        load_nasbert_teacher(narrow)


def test_cli_distils_a_student_from_the_fine_tuned_teacher_block_by_block(classifier, tmp_path):
    from nasbert_deploy.space import TINY
    from nasbert_deploy.student.distill import build_student

    start = tmp_path / "start"  # a 2-block student at the teacher's width: block i regresses teacher layer i
    student = build_student("48:mha,ffn|48:sep3,id", init="random",
                            space=TINY.__class__(**{**TINY.to_dict(), "hidden_sizes": (48,)}))
    student.model.save_pretrained(start)
    base = ["distill", "--from-export", str(start), "--teacher", str(classifier), "--corpus", str(SAMPLE),
            "--steps", "3", "--batch-size", "4", "--seq-len", "16", "--threads", "1"]
    r = CliRunner().invoke(app, [*base, "--block-weight", "1", "--out", str(tmp_path / "s")])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "s" / "distill_report.json").read_text())
    assert report["teacher"] == str(classifier) and report["distill_layer_map"] == [1, 2] and report["steps"] == 3
    r = CliRunner().invoke(app, [*base, "--prediction-weight", "1", "--out", str(tmp_path / "p")])
    assert r.exit_code == 2 and "no masked-LM head" in r.stderr and not (tmp_path / "p").exists(), r.output
    r = CliRunner().invoke(app, ["distill", "--arch", "32:mha,ffn|64:sep3,id", "--init", "etd-impt", "--space", "tiny",
                                 "--teacher", str(classifier), "--corpus", str(SAMPLE), "--out", str(tmp_path / "e")])
    assert r.exit_code == 2 and "not --init etd-*" in r.stderr, r.output


def test_the_teachers_own_encoder_under_its_head_is_the_teacher(classifier, tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from teacher_head_probe import probe

    from nasbert_deploy.student.finetune import load_classifier
    from nasbert_deploy.student.tasks import sample_task_path

    clf, _ = load_classifier(classifier)
    own, other = tmp_path / "own", tmp_path / "other"
    clf.nasbert.save_pretrained(own)
    with torch.no_grad():
        for p in clf.nasbert.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    clf.nasbert.save_pretrained(other)
    known = set(clf.config.label2id)
    rows = [r for r in map(json.loads, sample_task_path("valid").read_text().splitlines()) if r["label"] in known]
    task = tmp_path / "valid.jsonl"
    task.write_text("".join(json.dumps(r) + "\n" for r in rows[:24]))
    res = probe(classifier, {"own": own, "other": other}, task, max_len=32)
    assert res["examples"] == min(24, len(rows)) and 0 <= res["teacher_accuracy"] <= 1
    assert res["models"]["own"]["label_loyalty"] == 1.0 and res["models"]["own"]["probability_loyalty"] > 0.999
    assert res["models"]["other"]["probability_loyalty"] < 0.99


def test_finetune_can_start_from_the_teachers_head(classifier, tmp_path):
    from nasbert_deploy.errors import TaskError
    from nasbert_deploy.space import TINY
    from nasbert_deploy.student.build import build_student
    from nasbert_deploy.student.finetune import FinetuneConfig, finetune, load_classifier
    from nasbert_deploy.student.tasks import load_task, sample_task_path

    start = tmp_path / "start"
    student = build_student("48:mha,ffn|48:sep3,id", init="random", space=TINY.__class__(**{**TINY.to_dict(),
                                                                                            "hidden_sizes": (48,)}))
    student.model.save_pretrained(start)
    load_classifier(classifier)[1].save_pretrained(start)
    teacher, _ = load_classifier(classifier)
    known = set(teacher.config.label2id)
    train = load_task(sample_task_path("train"))
    train = train.subset([i for i, label in enumerate(train.labels) if label in known][:16])
    cfg = FinetuneConfig(epochs=1, batch_size=8, max_len=32, lr=0.0)
    report = finetune(start, train, train, tmp_path / "ft", cfg, classifier, head_from_teacher=True)
    got, _ = load_classifier(tmp_path / "ft")
    assert torch.equal(got.classifier.weight, teacher.classifier.weight)  # lr 0: the head is the teacher's, as started
    assert report["head"] == "teacher"
    with pytest.raises(TaskError, match="give --teacher-model"):
        finetune(start, train, train, tmp_path / "a", cfg, None, head_from_teacher=True)
    narrow = tmp_path / "narrow"
    build_student("64:mha,ffn|32:sep3,id", init="random",
                  space=TINY.__class__(**{**TINY.to_dict(), "output_dim": 32})).model.save_pretrained(narrow)
    load_classifier(classifier)[1].save_pretrained(narrow)
    with pytest.raises(TaskError, match=r"output width 32 is not the teacher's 48"):
        finetune(narrow, train, train, tmp_path / "b", cfg, classifier, head_from_teacher=True)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
