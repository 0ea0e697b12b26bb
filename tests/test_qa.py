"""Extractive QA: SQuAD files (checks), windows, official EM / F1 (v1.1 and v2.0), and the commands end to end
(`finetune-teacher`, `finetune`, `evaluate`, `prune`) on a tiny BERT and a tiny hand-made SQuAD file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import make_tiny_teacher, one_line_error
from qa_helpers import squad_doc, write_squad
from typer.testing import CliRunner

from nasbert_deploy.cli.app import app
from nasbert_deploy.errors import TaskError
from nasbert_deploy.qa.features import answers_from_logits, featurize
from nasbert_deploy.qa.metrics import answer_loyalty, exact_match, f1_score, normalize_answer, squad_scores
from nasbert_deploy.qa.squad import QAData, QAExample, load_squad

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()


def test_official_normalisation_exact_match_and_f1():
    assert normalize_answer("The  Cat, sat!") == "cat sat"
    assert exact_match("the Eiffel tower.", "Eiffel Tower") == 1.0
    assert f1_score("big red dog", "red dog") == pytest.approx(0.8)  # P 2/3, R 1
    assert f1_score("", "") == 1.0 and f1_score("dog", "") == 0.0 and f1_score("", "dog") == 0.0
    v2 = QAData((QAExample("a", "q", "ctx of a dog", (("a dog", 7),)), QAExample("b", "q", "ctx", (), True)), True)
    scores = squad_scores(v2, {"a": "dog", "b": "something"})
    assert scores["exact"] == 50.0 and scores["HasAns_exact"] == 100.0 and scores["NoAns_exact"] == 0.0
    assert scores["total"] == 2 and scores["HasAns_total"] == 1 and scores["NoAns_total"] == 1
    best_of_golds = QAData((QAExample("c", "q", "red dog", (("red dog", 0), ("dog", 4))),), False)
    assert squad_scores(best_of_golds, {"c": "dog"})["exact"] == 100.0
    assert answer_loyalty({"a": "the dog", "b": "cat"}, {"a": "dog", "b": "dog"})["answer_loyalty"] == 0.5


@pytest.mark.parametrize("version2", [False, True])
def test_gold_spans_survive_windows_and_come_back_exactly(tmp_path, version2):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(make_tiny_teacher(tmp_path / "enc")))
    data = load_squad(write_squad(tmp_path / "t.json", version2=version2))
    assert data.version2 is version2
    feats = featurize(tok, data, max_len=24, stride=8)  # contexts of ~24 tokens: several windows each
    assert len(feats) > len(data)
    n, t = feats.input_ids.shape
    start, end = np.full((n, t), -5.0, np.float32), np.full((n, t), -5.0, np.float32)
    start[np.arange(n), feats.start_positions] = 5.0
    end[np.arange(n), feats.end_positions] = 5.0
    preds = answers_from_logits(data, feats, start, end)
    assert squad_scores(data, preds)["exact"] == 100.0
    if version2:
        assert all(preds[e.id] == "" for e in data.examples if e.impossible)


@pytest.mark.parametrize(("edit", "needle"), [
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][0]["answers"][0].update(answer_start=3), "does not match its context"),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][0].update(answers=[]), "has no answer"),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][1].update(id="c0q0"), "appears twice"),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][0].update(question=" "), "empty question"),
    (lambda d: d.pop("data"), 'no "data" list'),
])
def test_bad_squad_files_get_one_line(tmp_path, edit, needle):
    doc = squad_doc()
    edit(doc)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(TaskError, match=needle):
        load_squad(path)


@pytest.fixture(scope="module")
def qa(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("qa")
    enc = make_tiny_teacher(root / "encoder")
    train = write_squad(root / "train.json", n_contexts=10, seed=1, version2=True)
    valid = write_squad(root / "valid.json", n_contexts=3, seed=2, version2=True)
    r = runner.invoke(app, ["finetune-teacher", "--teacher", str(enc), "--task", str(train), "--valid", str(valid),
                            "--out", str(root / "teacher"), "--epochs", "2", "--batch-size", "8", "--max-len", "48",
                            "--lr", "1e-3"])
    assert r.exit_code == 0, r.output
    return {"root": root, "encoder": enc, "train": train, "valid": valid, "teacher": root / "teacher"}


def test_finetune_teacher_evaluate_and_distil_a_qa_model(qa):
    from transformers import AutoModelForQuestionAnswering

    rep = json.loads((qa["teacher"] / "finetune_report.json").read_text())
    assert rep["task_kind"] == "extractive-qa" and rep["squad_v2"] and len(rep["history"]) == 2
    assert AutoModelForQuestionAnswering.from_pretrained(str(qa["teacher"])).config.architectures == ["BertForQuestionAnswering"]
    out = qa["root"] / "eval.json"
    r = runner.invoke(app, ["evaluate", "--model", str(qa["teacher"]), "--task", str(qa["valid"]), "--teacher-model",
                            str(qa["teacher"]), "--max-len", "48", "--json", str(out)])
    assert r.exit_code == 0, r.output
    report = json.loads(out.read_text())
    assert {"exact", "f1", "HasAns_f1", "NoAns_exact"} <= set(report)
    assert report["answer_loyalty"] == 1.0 and report["span_probability_loyalty"] == pytest.approx(1.0)
    r = runner.invoke(app, ["evaluate", "--model", str(qa["teacher"]), "--task", str(qa["valid"]), "--max-len", "48",
                            "--runtime", "onnxruntime", "--json", str(qa["root"] / "ort.json"), "--force"])
    assert r.exit_code == 0, r.output
    ort = json.loads((qa["root"] / "ort.json").read_text())
    assert ort["max_abs_logit_diff_vs_torch"] < 1e-3 and ort["f1"] == pytest.approx(report["f1"])
    student = qa["root"] / "student"  # the encoder again, distilled from the QA teacher under a fresh head
    r = runner.invoke(app, ["finetune", "--model", str(qa["encoder"]), "--task", str(qa["train"]), "--valid",
                            str(qa["valid"]), "--teacher-model", str(qa["teacher"]), "--out", str(student), "--epochs", "1",
                            "--batch-size", "8", "--max-len", "48", "--kd", "mse"])
    assert r.exit_code == 0, r.output
    rep = json.loads((student / "finetune_report.json").read_text())
    assert rep["distilled_from_teacher"] is True and rep["config"]["kd"] == "mse"  # the span loss, not ignored


def test_span_distillation_terms_see_only_real_tokens():
    import torch

    from nasbert_deploy.model.losses import soft_kl
    from nasbert_deploy.qa.train import span_kd

    s, t = torch.randn(2, 5), torch.randn(2, 6)  # the teacher's cached logits may be longer (its own padding)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).bool()
    noisy = s.clone()
    noisy[0, 3:] += 100.0  # padding logits must not count
    want = (((s[0, :3] - t[0, :3]) ** 2).mean() + ((s[1] - t[1, :5]) ** 2).mean()) / 2
    assert span_kd(noisy, t, mask, 3.0, "mse").item() == pytest.approx(want.item(), rel=1e-5)
    kl0 = soft_kl(s[:1, :3], t[:1, :3], 2.0)
    assert span_kd(noisy[:1], t[:1], mask[:1], 2.0).item() == pytest.approx(kl0.item(), rel=1e-4)
    with pytest.raises(ValueError, match="valid: kl, mse"):
        span_kd(s, t, mask, 1.0, "l1")


def test_prune_a_qa_model_end_to_end(qa):
    from test_prune_cli import synthetic_table, within_budget
    from transformers import AutoModelForQuestionAnswering

    table, _ = synthetic_table(qa["root"] / "table.json")
    out = qa["root"] / "pruned"
    r = runner.invoke(app, ["prune", "--model", str(qa["teacher"]), "--task", str(qa["train"]), "--valid", str(qa["valid"]),
                            "--device", "cpu-ort", "--max-latency-ms", "1.0", "--out", str(out), "--table", str(table),
                            "--steps", "4", "--batch-size", "8", "--max-len", "48", "--seq-len", "32",
                            "--finetune-epochs", "1"])
    assert r.exit_code == 0, r.output
    report = json.loads((out / "prune_report.json").read_text())
    assert report["task_kind"] == "extractive-qa"
    assert report["validation"]["passed"] == report["validation"]["checks"] > 0
    assert {"exact", "f1", "answer_loyalty"} <= set(report["quality"]["pruned"])
    assert within_budget(report, 1.0)
    model = AutoModelForQuestionAnswering.from_pretrained(str(out))
    assert type(model).__name__ == "PrunedBertForQuestionAnswering"
    assert (out / "onnx" / "model.onnx").is_file()


def test_qa_head_and_task_must_match(qa, tmp_path):
    from test_prune_cli import synthetic_table

    table, _ = synthetic_table(tmp_path / "table.json")
    classifier_task = tmp_path / "cls.jsonl"
    classifier_task.write_text("".join(json.dumps({"text": "a b", "label": x}) + "\n" for x in "xy"))
    base = ["--device", "cpu-ort", "--max-latency-ms", "1.0", "--table", str(table), "--steps", "2"]
    r = runner.invoke(app, ["prune", "--model", str(qa["teacher"]), "--task", str(classifier_task), "--valid",
                            str(classifier_task), "--out", str(tmp_path / "o1"), *base])
    one_line_error(r, "question-answering model", "SQuAD")
    r = runner.invoke(app, ["prune", "--model", str(qa["encoder"]), "--task", str(qa["train"]), "--out",
                            str(tmp_path / "o2"), *base])
    one_line_error(r, "not an extractive question-answering model")
    bad = tmp_path / "bad.json"
    doc = squad_doc()
    doc["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] += 1
    bad.write_text(json.dumps(doc))
    r = runner.invoke(app, ["evaluate", "--model", str(qa["teacher"]), "--task", str(bad)])
    one_line_error(r, "does not match its context")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_qa_training_resumes_after_an_interrupt(tmp_path):
    from nasbert_deploy.qa.train import finetune_qa
    from nasbert_deploy.student.task_training import FinetuneConfig

    enc = make_tiny_teacher(tmp_path / "enc")
    data = load_squad(write_squad(tmp_path / "t.json", n_contexts=6, seed=3))
    train, valid = data.split(0.3)
    cfg = FinetuneConfig(epochs=2, batch_size=4, max_len=48, lr=1e-3)

    def stop_at_3(done, total, values):
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune_qa(enc, train, valid, tmp_path / "qa", cfg, progress=stop_at_3, fresh_head=True)
    assert (tmp_path / "qa.ckpt").is_dir() and not (tmp_path / "qa").exists()
    notes = []
    report = finetune_qa(enc, train, valid, tmp_path / "qa", cfg, note=notes.append, fresh_head=True)
    assert any("resuming from step 3" in n for n in notes), notes
    assert len(report["history"]) == 2 and (tmp_path / "qa" / "model.safetensors").is_file()
    assert not (tmp_path / "qa.ckpt").exists()
