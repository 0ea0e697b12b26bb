"""Frozen-embedding quality: retrieval metrics, ranking loyalty, the linear probe, the Embedder on runtimes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import make_tiny_teacher

from nasbert_deploy.errors import TaskError, TeacherError
from nasbert_deploy.student.embeddings import Embedder, linear_probe, mean_pool
from nasbert_deploy.student.quality import encoder_quality
from nasbert_deploy.student.retrieval import (
    is_retrieval_file,
    load_retrieval,
    ranking_loyalty,
    retrieval_scores,
    tfidf_scores,
    top_k,
)
from nasbert_deploy.student.tasks import SAMPLE_DIR

RETRIEVAL_SAMPLE = SAMPLE_DIR / "debian-retrieval-sample.jsonl"


def _unit(a):
    a = np.asarray(a, dtype=np.float32)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_retrieval_scores_count_ranks():
    d = _unit(np.eye(4))
    # query 0 finds doc 0 first; query 1 prefers doc 2 then its own doc 1; query 2 ranks its doc last
    q = _unit([[1, 0, 0, 0], [0, 0.5, 1, 0], [0.3, 0.3, 0.0, 1.0]])
    s = retrieval_scores(q, d, [0, 1, 2], ks=(1, 2))
    assert s["recall@1"] == pytest.approx(1 / 3)
    assert s["recall@2"] == pytest.approx(2 / 3)
    assert s["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 4) / 3)


def test_top_k_and_ranking_loyalty():
    rng = np.random.default_rng(0)
    q, d = _unit(rng.normal(size=(20, 8))), _unit(rng.normal(size=(50, 8)))
    top = top_k(q, d, 10)
    sims = q @ d.T
    assert top.shape == (20, 10) and np.array_equal(top[:, 0], sims.argmax(1))
    assert np.all(np.diff(np.take_along_axis(sims, top, 1), axis=1) <= 0)  # best first
    assert ranking_loyalty(top, top) == 1.0
    other = top_k(_unit(rng.normal(size=(20, 8))), d, 10)
    assert 0.0 <= ranking_loyalty(other, top) < 0.5


def test_load_retrieval_pool_and_errors(tmp_path):
    data = load_retrieval(RETRIEVAL_SAMPLE)
    assert len(data) == 200 and len(data.documents) <= 200 and max(data.gold) == len(data.documents) - 1
    assert is_retrieval_file(RETRIEVAL_SAMPLE) and not is_retrieval_file(SAMPLE_DIR / "debian-sections-sample-train.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"query": "a"}) + "\n")
    with pytest.raises(TaskError, match=r"bad.jsonl:1: missing or empty document"):
        load_retrieval(bad)
    bad.write_text(json.dumps({"query": " ", "document": "x"}) + "\n")
    with pytest.raises(TaskError, match="missing or empty query"):
        load_retrieval(bad)
    bad.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(TaskError, match="is binary, not text"):
        load_retrieval(bad)


def test_tfidf_baseline_finds_lexical_matches():
    s = tfidf_scores(load_retrieval(RETRIEVAL_SAMPLE))
    assert 0.5 < s["mrr"] <= 1.0 and s["recall@10"] >= s["recall@1"]


def test_mean_pool_ignores_padding():
    h = np.array([[[1.0, 0.0], [3.0, 0.0], [100.0, 100.0]]], dtype=np.float32)
    m = np.array([[1, 1, 0]])
    assert np.allclose(mean_pool(h, m, normalize=False), [[2.0, 0.0]])
    assert np.allclose(mean_pool(h, m), [[1.0, 0.0]])


def test_linear_probe_separates_clusters():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(3, 16)) * 3
    y = np.repeat(np.arange(3), 40)
    x = centres[y] + rng.normal(size=(120, 16))
    res = linear_probe(x[::2], y[::2], x[1::2], y[1::2])
    assert res.accuracy > 0.9 and res.probs.shape == (60, 3)


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    return make_tiny_teacher(tmp_path_factory.mktemp("enc") / "teacher")


def test_embedder_is_order_independent_and_normalised(tiny_encoder):
    e = Embedder(tiny_encoder, max_len=32, batch_size=3)
    texts = ["a short one", "a much longer text about python modules and functions", "x", "functions"]
    full = e.encode(texts)
    assert full.shape == (4, 48) and np.allclose(np.linalg.norm(full, axis=1), 1.0, atol=1e-5)
    assert np.allclose(e.encode(texts[1:2]), full[1:2], atol=1e-5)  # padding in a batch changes nothing


def test_encoder_quality_of_the_teacher_against_itself(tiny_encoder):
    cls = encoder_quality(
        tiny_encoder,
        SAMPLE_DIR / "wordnet-supersense-sample-valid.jsonl",
        train=SAMPLE_DIR / "wordnet-supersense-sample-train.jsonl",
        teacher_dir=tiny_encoder,
        max_len=32,
    )
    assert cls["kind"] == "classification" and cls["examples"] == 120
    assert cls["label_loyalty"] == 1.0 and cls["kept_accuracy"] == 1.0
    assert cls["cosine_to_teacher"] == pytest.approx(1.0, abs=1e-5)
    ret = encoder_quality(tiny_encoder, RETRIEVAL_SAMPLE, teacher_dir=tiny_encoder, max_len=32)
    assert ret["kind"] == "retrieval" and ret["ranking_loyalty@10"] == 1.0 and ret["kept_mrr"] == 1.0


def test_encoder_quality_refuses_bad_input(tiny_encoder, tmp_path):
    valid = SAMPLE_DIR / "wordnet-supersense-sample-valid.jsonl"
    with pytest.raises(TaskError, match="pass --train"):
        encoder_quality(tiny_encoder, valid)
    with pytest.raises(TeacherError, match="not a local Hugging Face model folder"):
        encoder_quality(tmp_path, RETRIEVAL_SAMPLE)
    other = tmp_path / "other.jsonl"
    rows = [{"text": "a thing", "label": "never-seen"}, {"text": "b", "label": "x"}]
    other.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(TaskError, match="labels that"):
        encoder_quality(tiny_encoder, other, train=SAMPLE_DIR / "wordnet-supersense-sample-train.jsonl")
    import shutil

    head = shutil.copytree(tiny_encoder, tmp_path / "classifier")  # a fine-tuned classifier: logits, no token states
    cfg = json.loads((head / "config.json").read_text())
    (head / "config.json").write_text(json.dumps({**cfg, "architectures": ["BertForSequenceClassification"]}))
    with pytest.raises(TaskError, match="is a task model .BertForSequenceClassification., not an encoder"):
        encoder_quality(head, RETRIEVAL_SAMPLE)
    with pytest.raises(TaskError, match="is a task model"):
        encoder_quality(tiny_encoder, RETRIEVAL_SAMPLE, teacher_dir=head)


def test_evaluate_command_scores_frozen_encoders(tiny_encoder, tmp_path):
    from typer.testing import CliRunner

    from nasbert_deploy.cli.app import app

    runner = CliRunner()
    out = tmp_path / "r.json"
    res = runner.invoke(app, ["evaluate", "--model", str(tiny_encoder), "--task", str(RETRIEVAL_SAMPLE),
                              "--teacher-model", str(tiny_encoder), "--max-len", "32", "--json", str(out)])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert report["kind"] == "retrieval" and report["ranking_loyalty@10"] == 1.0 and 0 < report["mrr"] <= 1
    res = runner.invoke(app, ["evaluate", "--model", str(tiny_encoder), "--max-len", "32",
                              "--task", str(SAMPLE_DIR / "debian-sections-sample-valid.jsonl"),
                              "--train", str(SAMPLE_DIR / "debian-sections-sample-train.jsonl")])
    assert res.exit_code == 0, res.output
    assert "probe_accuracy" in res.output
