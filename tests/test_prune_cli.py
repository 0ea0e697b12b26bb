"""`nasbert-deploy prune`: one-line errors before any work, an end-to-end run on a tiny classifier, resume."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import make_tiny_teacher, one_line_error
from typer.testing import CliRunner

from nasbert_deploy.cli.app import app
from nasbert_deploy.prune.calibration import CALIBRATION_SLACK
from nasbert_deploy.prune.latency import PruneLatencyTable
from nasbert_deploy.student.tasks import sample_task_path

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
TRAIN, VALID = sample_task_path("train"), sample_task_path("valid")


def within_budget(report: dict, budget: float) -> bool:
    """The pruned model is within the budget as the table predicts it, or as the calibration measured it when it gave
    capacity back (these tests' tables are synthetic: tiny models measure far under them)."""
    predicted = report["latency"]["models"]["pruned"]["table_ms"]
    return predicted <= budget + 1e-9 or any(r["measured_ms"] <= CALIBRATION_SLACK * budget
                                             and r["predicted_ms"] == pytest.approx(predicted)
                                             for r in report["gates"]["calibration"])


def synthetic_table(path, device: str = "cpu-ort"):
    """A table for the tiny model (hidden 48, 4 heads, FFN 96), latency linear in heads and neurons."""
    manifest = {"name": "tiny", "device": device, "hidden": 48, "heads": 4, "ffn": 96, "layers": 2, "batch": 1, "seq_len": 32}
    t = PruneLatencyTable(manifest, {k: 0.1 + 0.05 * k for k in range(1, 5)}, {w: 0.05 + 0.002 * w for w in (1, 48, 96)},
                          rest_ms=0.2, call_ms=0.02)
    return t.save(path), t


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, one_thread):
    from nasbert_deploy.student.finetune import load_classifier
    from nasbert_deploy.student.tasks import load_task

    root = tmp_path_factory.mktemp("prune-cli")
    enc = make_tiny_teacher(root / "encoder")
    model, tok = load_classifier(enc, load_task(TRAIN).label_names())
    model.save_pretrained(root / "cls")
    tok.save_pretrained(root / "cls")
    table, t = synthetic_table(root / "table.json")
    return {"root": root, "encoder": enc, "cls": root / "cls", "table": table, "t": t}


def _run(*args):
    return runner.invoke(app, ["prune", *map(str, args)])


def _base(tiny, out, **kw):
    opts = {"--model": tiny["cls"], "--task": TRAIN, "--valid": VALID, "--device": "cpu-ort", "--max-latency-ms": 1.0,
            "--out": out, "--table": tiny["table"], "--steps": 4, "--batch-size": 8, "--max-len": 32, "--seq-len": 32,
            "--finetune-epochs": 0, **kw}
    return [x for k, v in opts.items() for x in (k, v)]


def test_errors_are_one_line_before_any_work(tiny, tmp_path):
    out = tmp_path / "out"
    one_line_error(_run(*_base(tiny, out, **{"--model": tiny["encoder"]})), "is not a classifier")
    task = tmp_path / "task.jsonl"
    task.write_text("".join(json.dumps({"text": f"row {i}", "label": ["nope", "howto"][i % 2]}) + "\n" for i in range(20)))
    one_line_error(_run(*_base(tiny, out, **{"--task": task, "--valid": task})), "labels the model does not know", "nope")
    one_line_error(_run(*_base(tiny, out, **{"--device": "tpu-9000"})), "unknown device", "cpu-ort")
    one_line_error(_run(*_base(tiny, "/proc/nasbert-prune/out")), "cannot write")
    low, _ = tiny["t"].bounds_ms(2)
    one_line_error(_run(*_base(tiny, out, **{"--max-latency-ms": round(low * 0.5, 3)})), f"give at least {low:.2f}")
    one_line_error(_run(*_base(tiny, out, **{"--max-latency-ms": 0})), "--max-latency-ms")
    one_line_error(_run(*_base(tiny, out, **{"--seq-len": 128})), "--seq-len 128", "give --seq-len 64 or less")
    other = tmp_path / "distilbert"  # BERT and RoBERTa are pruned (tests/test_prune_roberta.py); DistilBERT is not
    other.mkdir()
    cfg = json.loads((tiny["cls"] / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "model_type": "distilbert",
                                                   "architectures": ["DistilBertForSequenceClassification"]}))
    one_line_error(_run(*_base(tiny, out, **{"--model": other})), "'distilbert'", "bert", "roberta")
    assert not out.exists() and not (tmp_path / "out.work").exists()


@pytest.mark.slow
def test_prune_end_to_end_and_resume(tiny, tmp_path):
    from nasbert_deploy.devices import load_device
    from nasbert_deploy.prune.profile import PruneProfileSettings
    from nasbert_deploy.prune.run import REPORT_NAME, PruneRequest, prune
    from nasbert_deploy.prune.train import GateConfig
    from nasbert_deploy.student.finetune import load_classifier
    from nasbert_deploy.student.tasks import load_task

    low, full = tiny["t"].bounds_ms(2)
    budget = round(low + 0.5 * (full - low), 3)
    out = tmp_path / "pruned"
    # interrupted in gate training, then resumed from its checkpoint
    req = PruneRequest(model=tiny["cls"], train=load_task(TRAIN), valid=load_task(VALID), out=out,
                       spec=load_device("cpu-ort"), max_latency_ms=budget, table_path=tiny["table"],
                       gates=GateConfig(steps=6, batch_size=8, max_len=32, checkpoint_every=2), finetune_epochs=0,
                       profile=PruneProfileSettings(seq_len=32))

    def stop_at_3(done, total, values):
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prune(req, stop_at_3)
    assert (tmp_path / "pruned.work" / "gates.ckpt").is_dir() and not out.exists()
    notes = []
    shutil.rmtree(tmp_path / "unused", ignore_errors=True)
    r = _run(*_base(tiny, out, **{"--max-latency-ms": budget, "--steps": 6, "--checkpoint-every": 2,
                                  "--finetune-epochs": 1}))
    assert r.exit_code == 0, r.output
    assert "resuming from step 3 of 6" in r.output
    notes.append(r.output)
    rep = json.loads((out / REPORT_NAME).read_text())
    kept = rep["kept"]
    assert within_budget(rep, budget)
    scale = rep["gates"]["device_scale"]  # the gates aimed at the budget in this machine's milliseconds
    assert scale["unpruned_measured_ms"] > 0 and rep["gates"]["calibration"][0]["target_ms"] == scale["target_ms"]
    assert scale["target_ms"] == pytest.approx(min(budget / scale["factor"], 0.999 * full))
    assert rep["latency"]["models"]["unpruned"]["table_ms"] == pytest.approx(full)
    assert rep["latency"]["models"]["unpruned"]["predicted_ms"] == pytest.approx(full * scale["factor"])
    assert kept["heads_per_layer"] != [4, 4] or kept["ffn_per_layer"] != [96, 96]
    assert rep["params"]["pruned"] < rep["params"]["unpruned"]
    assert rep["validation"]["passed"] == rep["validation"]["checks"] > 0
    q = rep["quality"]["pruned"]
    assert 0.0 <= q["accuracy"] <= 1.0 and q["label_loyalty"] is not None and rep["finetune"] is not None
    assert rep["machine"] and rep["latency"]["models"]["pruned"]["measured_ms"] > 0
    for f in ("config.json", "model.safetensors", "modeling_pruned_bert.py", "onnx/model.onnx", "openvino/openvino_model.xml",
              "tokenizer.json"):
        assert (out / f).is_file(), f
    assert not (tmp_path / "pruned.work").exists()
    model, _ = load_classifier(out)
    layers = model.bert.encoder.layer
    assert [int(ly.attention.self.num_attention_heads) for ly in layers] == kept["heads_per_layer"]
    assert [int(ly.intermediate.dense.out_features) for ly in layers] == kept["ffn_per_layer"]
    assert "measured speed-up" in r.output and "heads per layer" in r.output
    assert "latency table scaled to this machine" in r.output and "resuming with the table scaled" in r.output
    # a second run into the same folder needs --force
    one_line_error(_run(*_base(tiny, out, **{"--max-latency-ms": budget})), "--force")
