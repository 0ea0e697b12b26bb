"""`prune` on a RoBERTa classifier: heads and FFN neurons removed, saved as `pruned_roberta`, exported and validated."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_vocab
from test_prune_cli import synthetic_table
from typer.testing import CliRunner

from nasbert_deploy.cli.app import app
from nasbert_deploy.student.tasks import load_task, sample_task_path

pytestmark = pytest.mark.usefixtures("one_thread")
TRAIN, VALID = sample_task_path("train"), sample_task_path("valid")


def tiny_roberta(folder):
    """A random RoBERTa classifier (hidden 48, 2 layers, 4 heads, FFN 96) over the tiny word-piece vocabulary."""
    from transformers import BertTokenizerFast, RobertaConfig, RobertaForSequenceClassification

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(tiny_vocab()) + "\n")
    tok = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    labels = load_task(TRAIN).label_names()
    cfg = RobertaConfig(vocab_size=1000, hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                        max_position_embeddings=40, pad_token_id=0, type_vocab_size=1, num_labels=len(labels),
                        id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    torch.manual_seed(0)
    RobertaForSequenceClassification(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_prune_a_roberta_classifier(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from nasbert_deploy.model.pruned_bert import register

    model = tiny_roberta(tmp_path / "roberta")
    table, t = synthetic_table(tmp_path / "table.json")
    low, full = t.bounds_ms(2)
    out = tmp_path / "pruned"
    r = CliRunner().invoke(app, ["prune", "--model", str(model), "--task", str(TRAIN), "--valid", str(VALID),
                                 "--device", "cpu-ort", "--max-latency-ms", str(round(low + 0.5 * (full - low), 3)),
                                 "--out", str(out), "--table", str(table), "--steps", "4", "--batch-size", "8",
                                 "--max-len", "32", "--seq-len", "32", "--finetune-epochs", "1"])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "prune_report.json").read_text())
    assert rep["validation"]["passed"] == rep["validation"]["checks"] > 0
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "pruned_roberta"
    assert config["auto_map"]["AutoModelForSequenceClassification"].endswith("PrunedRobertaForSequenceClassification")
    register()
    pruned = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    layers = pruned.roberta.encoder.layer
    assert [int(ly.attention.self.num_attention_heads) for ly in layers] == rep["kept"]["heads_per_layer"]
    assert [int(ly.intermediate.dense.out_features) for ly in layers] == rep["kept"]["ffn_per_layer"]
    assert rep["params"]["pruned"] < rep["params"]["unpruned"]
