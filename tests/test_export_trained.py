"""`export --model DIR`: a trained encoder or classifier folder through the whole export, and its misuse."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import ARCH, make_tokenizer_dir, one_line_error, write_word_task
from typer.testing import CliRunner

from nasbert_deploy.cli.app import app
from nasbert_deploy.model.modeling import NasBertConfig, NasBertForSequenceClassification, NasBertModel
from nasbert_deploy.space import TINY

runner = CliRunner()
LABELS = ["bug", "feature", "question"]


def _save(model, folder, tok, report: dict | None = None):
    from transformers import AutoTokenizer

    model.save_pretrained(str(folder), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(tok)).save_pretrained(str(folder))
    if report is not None:
        (folder / report.pop("_name")).write_text(json.dumps(report))
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 'distilled' encoder and a 'fine-tuned' classifier as `distill` / `finetune` leave them (random weights)."""
    root = tmp_path_factory.mktemp("trained")
    tok = make_tokenizer_dir(root)
    torch.manual_seed(0)
    enc = NasBertModel(NasBertConfig.from_arch(ARCH, TINY)).eval()
    enc_dir = _save(enc, root / "enc", tok, {"_name": "distill_report.json", "init": "supernet", "teacher": "tiny-teacher",
                                            "steps": 7, "config": {"corpus": "corpus.txt"}})
    cfg = NasBertConfig.from_arch(ARCH, TINY)
    cfg.num_labels, cfg.id2label, cfg.label2id = 3, dict(enumerate(LABELS)), {n: i for i, n in enumerate(LABELS)}
    clf = NasBertForSequenceClassification(cfg).eval()
    clf_dir = _save(clf, root / "clf", tok, {"_name": "finetune_report.json", "task": "issues.jsonl", "train_rows": 40,
                                            "transfer_rows": 0, "teacher_model": "teacher-ft"})
    return root, enc_dir, clf_dir


def _export(folder, out, *extra):
    res = runner.invoke(app, ["export", "--model", str(folder), "--out", str(out), "--no-memory", *extra])
    assert res.exit_code == 0, res.output
    return json.loads((out / "report.json").read_text())


@pytest.mark.slow
def test_trained_encoder_exports_with_its_report_and_card(trained):
    root, enc_dir, _ = trained
    out = root / "enc-export"
    report = _export(enc_dir, out, "--int8", "--no-timing")
    assert report["arch"] == ARCH and report["output"] == "last_hidden_state" and report["validation"]["passed"]
    w = report["weights"]
    assert w["init"] == "trained" and w["kind"] == "encoder" and w["training"]["distill_report.json"]["steps"] == 7
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {"onnx/model.onnx", "openvino/openvino_model.xml", "onnx/model_qint8.onnx", "modules.json"} <= names
    card = (out / "README.md").read_text()
    assert f"the trained encoder `{enc_dir}`" in card and "from the teacher `tiny-teacher`, 7 steps, on `corpus.txt`" in card
    assert "inherited from the supernet" not in card
    # the exported weights are the folder's: the reloaded model gives the same hidden states
    reloaded = NasBertModel.from_pretrained(str(out)).eval()
    ids = torch.randint(5, 60, (2, 9))
    with torch.inference_mode():
        a = NasBertModel.from_pretrained(str(enc_dir)).eval()(ids).last_hidden_state
        b = reloaded(ids).last_hidden_state
    assert torch.equal(a, b)


@pytest.mark.slow
def test_trained_classifier_exports_logits_that_match_torch(trained):
    import onnxruntime as ort
    import openvino as ov

    root, _, clf_dir = trained
    out = root / "clf-export"
    report = _export(clf_dir, out, "--device", "cpu-ort", "--int8")
    assert report["output"] == "logits" and report["weights"]["labels"] == LABELS
    assert set(report["validation"]["int8_deviation_from_fp32"]) == {"onnxruntime-int8", "openvino-int8"}
    assert report["validation"]["passed"] and {c["output"] for c in report["validation"]["checks"]} == {"logits"}
    assert report["latency"]["measured"]["median_ms"] > 0  # measured on the real runtime
    assert not (out / "modules.json").exists()  # sentence-transformers files are for encoders
    card = (out / "README.md").read_text()
    assert "pipeline_tag: text-classification" in card and "AutoModelForSequenceClassification" in card
    assert "labels (logit order): bug, feature, question" in card and "fine-tuned on `issues.jsonl`" in card

    model = NasBertForSequenceClassification.from_pretrained(str(clf_dir)).eval()
    ids = np.random.default_rng(1).integers(5, 60, size=(3, 11), dtype=np.int64)
    mask = np.ones_like(ids)
    mask[2, 6:] = 0
    with torch.inference_mode():
        ref = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
    feed = {"input_ids": ids, "attention_mask": mask}
    onnx_logits = ort.InferenceSession(str(out / "onnx" / "model.onnx")).run(["logits"], feed)[0]
    compiled = ov.Core().compile_model(str(out / "openvino" / "openvino_model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    ov_logits = compiled(feed)[0]
    assert onnx_logits.shape == (3, 3)
    np.testing.assert_allclose(onnx_logits, ref, atol=1e-4)
    np.testing.assert_allclose(ov_logits, ref, atol=1e-4)


def _fails(args, out, *needles):
    res = runner.invoke(app, ["export", *args, "--out", str(out)])
    one_line_error(res, *needles)
    assert not out.exists()


def test_model_refuses_options_that_choose_arch_or_weights(trained, tmp_path):
    _, enc_dir, _ = trained
    _fails(["--model", str(enc_dir), "--arch", ARCH], tmp_path / "o", "drop --arch")
    _fails(["--model", str(enc_dir), "--init", "random", "--supernet", str(tmp_path)], tmp_path / "o", "--supernet, --init")
    _fails(["--model", str(enc_dir), "--max-latency-ms", "3", "--device", "cpu-ort"], tmp_path / "o", "drop --max-latency-ms")


def test_model_folder_checks(trained, tmp_path):
    root, enc_dir, _ = trained
    _fails(["--model", str(tmp_path / "nope")], tmp_path / "o", "not a local Hugging Face model folder")
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertForSequenceClassification"]}))
    _fails(["--model", str(bert)], tmp_path / "o", "[CLS] pooler", "`finetune`'s default pooling")
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    _fails(["--model", str(bert)], tmp_path / "o", "no model.safetensors")
    (bert / "config.json").write_text(json.dumps({"model_type": "roberta", "architectures": ["RobertaModel"]}))
    _fails(["--model", str(bert)], tmp_path / "o", "model_type 'roberta'", "valid: a NAS-BERT folder")
    qa = tmp_path / "qa"
    qa.mkdir()
    (qa / "config.json").write_text(json.dumps({"model_type": "nasbert", "architectures": ["NasBertForQuestionAnswering"]}))
    _fails(["--model", str(qa)], tmp_path / "o", "extractive QA")
    empty = tmp_path / "noweights"
    empty.mkdir()
    (empty / "config.json").write_text((enc_dir / "config.json").read_text())
    _fails(["--model", str(empty)], tmp_path / "o", "no model.safetensors")
    res = runner.invoke(app, ["export", "--model", str(enc_dir), "--out", str(enc_dir), "--force"])
    one_line_error(res, "is the --model folder")
    assert (enc_dir / "model.safetensors").is_file()


@pytest.mark.slow
def test_a_plain_bert_encoder_is_converted_exactly_and_exported(tmp_path):
    """The teacher or `truncate`'s baseline: a BERT encoder folder exports as the NAS-BERT model it converts to
    exactly; the ONNX file's hidden states are the original BERT's."""
    import onnxruntime as ort
    from helpers import make_tiny_teacher
    from transformers import BertModel

    src = make_tiny_teacher(tmp_path / "bert")
    out = tmp_path / "x"
    report = _export(src, out, "--format", "onnx", "--no-timing")
    assert report["validation"]["passed"] and report["output"] == "last_hidden_state"
    assert report["weights"]["converted_from"] == "bert" and report["weights"]["kind"] == "encoder"
    assert "converted exactly from that BERT encoder" in (out / "README.md").read_text()
    ids = torch.randint(5, 900, (2, 11))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    with torch.inference_mode():
        want = BertModel.from_pretrained(str(src)).eval()(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()
    sess = ort.InferenceSession(str(out / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    got = sess.run(None, {i.name: feed[i.name] for i in sess.get_inputs()})[0]
    keep = mask.numpy().astype(bool)
    assert np.abs(got[keep] - want[keep]).max() < 1e-3


@pytest.mark.slow
def test_evaluate_scores_an_exported_classifiers_int8_files(trained, tmp_path):
    root, _, clf_dir = trained
    out = root / "clf-export-eval"
    _export(clf_dir, out, "--int8", "--no-timing")
    task = write_word_task(tmp_path / "valid.jsonl", 24, seed=3, labels="".join(x[0] for x in LABELS))
    rows = [json.loads(line) for line in task.read_text().splitlines()]
    task.write_text("".join(json.dumps({**r, "label": next(n for n in LABELS if n[0] == r["label"])}) + "\n" for r in rows))
    scores = {}
    for runtime in ("torch", "onnxruntime-int8", "openvino-int8"):
        js = tmp_path / f"{runtime}.json"
        res = runner.invoke(app, ["evaluate", "--model", str(out), "--task", str(task), "--runtime", runtime, "--json", str(js)])
        assert res.exit_code == 0, res.output
        scores[runtime] = json.loads(js.read_text())
    for runtime in ("onnxruntime-int8", "openvino-int8"):
        assert scores[runtime]["runtime"] == runtime and scores[runtime]["examples"] == 24
        assert scores[runtime]["prediction_agreement_vs_torch"] >= 0.75  # the INT8 file, not the fp32 one, ran
    card = (out / "README.md").read_text()
    assert "/ onnxruntime-int8 (" in card and "/ openvino-int8 (" in card  # each evaluation lands on the card
    # a folder without INT8 files: one line saying how to make them, before any work
    res = runner.invoke(app, ["evaluate", "--model", str(clf_dir), "--task", str(task), "--runtime", "onnxruntime-int8"])
    one_line_error(res, "has none (model_qint8.onnx)", "export --model DIR --int8")
