"""`prune` on mean-pooled NAS-BERT classifiers (finetune-teacher's output, ETD students): carried over exactly into
the `pruned_bert` form (embedding projection, block boundaries, head folded into the classifier), then pruned."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import make_tiny_teacher, one_line_error
from test_prune_cli import TRAIN, VALID, _run, synthetic_table

from nasbert_deploy.model.modeling import NasBertConfig, NasBertForSequenceClassification
from nasbert_deploy.model.pruned_bert import register
from nasbert_deploy.prune.from_nasbert import bert_view, to_pruned_bert, unsupported_reason
from nasbert_deploy.space import SearchSpace

pytestmark = pytest.mark.usefixtures("one_thread")
# the tiny teacher's geometry (hidden 48, 4 heads of 12, FFN 96, vocab 1000) as a one-width space
SPACE = SearchSpace(name="teacher", num_blocks=2, layers_per_block=4, hidden_sizes=(48,), conv_kernels=(3,), head_dim=12,
                    ffn_ratio=2, embed_dim=48, output_dim=40, vocab_size=1000, max_positions=64)


def nasbert_classifier(arch: str, labels: list[str], seed: int = 0) -> NasBertForSequenceClassification:
    """Random weights everywhere: boundaries, embedding projection and token head far from the identity."""
    cfg = NasBertConfig.from_arch(arch, SPACE, num_labels=len(labels), id2label=dict(enumerate(labels)),
                                  label2id={n: i for i, n in enumerate(labels)})
    torch.manual_seed(seed)
    return NasBertForSequenceClassification(cfg).eval()


def _batch(n: int = 3, t: int = 10):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 1000, (n, t), generator=g)
    mask = torch.ones(n, t, dtype=torch.long)
    mask[1, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("arch", ["48:mha,ffn,mha,ffn|48:mha,ffn,id,id", "48:mha,ffn,id,id|48:mha,ffn,id,id"])
def test_carried_over_exactly_and_reloads(arch, tmp_path):
    model = nasbert_classifier(arch, ["a", "b", "c"])
    bert = to_pruned_bert(model)
    geo = bert_view(model.config.to_dict())
    layers = 3 if arch.count("mha") == 3 else 2
    assert (geo["num_hidden_layers"], geo["num_attention_heads"], geo["intermediate_size"]) == (layers, 4, 96)
    assert bert.config.layer_projections == [layers - 1] and bert.config.pooling == "mean"
    batch = _batch()
    with torch.no_grad():
        want = model(**batch)
        got = bert(**batch, output_hidden_states=True)
        ref = model(**batch, output_hidden_states=True)
    torch.testing.assert_close(got.logits, want.logits, atol=1e-5, rtol=1e-5)
    # BERT's last hidden state is the last FFN's output: what NAS-BERT reports last (before its folded head)
    m = batch["attention_mask"].bool()
    torch.testing.assert_close(got.hidden_states[-1][m], ref.hidden_states[-1][m], atol=1e-5, rtol=1e-5)
    # gating by head_mask (how prune's gates act) of all ones changes nothing
    with torch.no_grad():
        gated = bert(**batch, head_mask=torch.ones(layers, 4)).logits
    torch.testing.assert_close(gated, want.logits, atol=1e-5, rtol=1e-5)
    register()
    from transformers import AutoModelForSequenceClassification

    bert.save_pretrained(tmp_path / "m")
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).logits, want.logits, atol=1e-5, rtol=1e-5)


def test_a_converted_teacher_without_projections_carries_over_without_them():
    """finetune-teacher's form (`identity_projections`): no embedding projection, no boundary, the classifier as is."""
    space = SearchSpace.from_dict({**SPACE.to_dict(), "output_dim": 48})
    cfg = NasBertConfig.from_arch("48:mha,ffn,mha,ffn|48:mha,ffn,id,id", space, num_labels=2, id2label={0: "a", 1: "b"},
                                  label2id={"a": 0, "b": 1}, identity_projections=True)
    torch.manual_seed(0)
    model = NasBertForSequenceClassification(cfg).eval()
    bert = to_pruned_bert(model)
    assert not bert.config.embedding_projection and bert.config.layer_projections == []
    batch = _batch()
    with torch.no_grad():
        torch.testing.assert_close(bert(**batch).logits, model(**batch).logits, atol=1e-5, rtol=1e-5)


def test_unsupported_shapes_say_why():
    base = nasbert_classifier("48:mha,ffn,id,id|48:mha,ffn,id,id", ["a", "b"]).config.to_dict()
    assert unsupported_reason(base) is None
    assert "not attention/FFN pairs" in unsupported_reason({**base, "arch": "48:mha,sep3,id,id|48:mha,ffn,id,id"})
    assert "not attention/FFN pairs" in unsupported_reason({**base, "arch": "48:ffn,mha,id,id|48:mha,ffn,id,id"})
    assert "different widths" in unsupported_reason({**base, "arch": "48:mha,ffn,id,id|24:mha,ffn,id,id"})
    assert "embeddings are 32 wide" in unsupported_reason({**base, "space": {**base["space"], "embed_dim": 32}})


@pytest.fixture(scope="module")
def saved(tmp_path_factory, one_thread):
    """A saved NAS-BERT classifier (tiny tokenizer) with the sample task's labels, and a table of its geometry."""
    from transformers import AutoTokenizer

    from nasbert_deploy.student.tasks import load_task

    root = tmp_path_factory.mktemp("prune-nasbert")
    tok = AutoTokenizer.from_pretrained(make_tiny_teacher(root / "encoder"))
    model = nasbert_classifier("48:mha,ffn,id,id|48:mha,ffn,id,id", load_task(TRAIN).label_names())
    model.save_pretrained(root / "cls")
    tok.save_pretrained(root / "cls")
    table, t = synthetic_table(root / "table.json")
    return {"root": root, "cls": root / "cls", "table": table, "t": t}


def _args(saved, out, **kw):
    opts = {"--model": saved["cls"], "--task": TRAIN, "--valid": VALID, "--device": "cpu-ort", "--out": out,
            "--table": saved["table"], "--steps": 4, "--batch-size": 8, "--max-len": 32, "--seq-len": 32,
            "--finetune-epochs": 0, **kw}
    return [x for k, v in opts.items() for x in (k, v)]


@pytest.mark.slow
def test_prune_a_nasbert_classifier_end_to_end(saved, tmp_path):
    low, full = saved["t"].bounds_ms(2)
    out = tmp_path / "out"
    r = _run(*_args(saved, out, **{"--max-latency-ms": round((low + full) / 2, 3)}))
    assert r.exit_code == 0, r.output
    assert "carried over into its BERT form" in r.output
    report = json.loads((out / "prune_report.json").read_text())
    assert report["quality"]["unpruned"]["examples"] > 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "pruned_bert" and cfg["pooling"] == "mean" and cfg["layer_projections"] == [1]
    assert cfg["embedding_projection"] is True and len(cfg["intermediate_sizes"]) == 2
    # the folder loads without nasbert-deploy's registration (remote code copied beside the weights)
    from transformers import AutoModelForSequenceClassification

    m = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True).eval()
    assert type(m).__name__ == "PrunedBertForSequenceClassification" and m.config.pooling == "mean"


def test_a_nasbert_model_with_convolutions_is_a_one_line_error(saved, tmp_path):
    bad = tmp_path / "conv"
    bad.mkdir()
    cfg = json.loads((saved["cls"] / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "arch": "48:mha,sep3,id,id|48:mha,ffn,id,id"}))
    one_line_error(_run(*_args(saved, tmp_path / "out", **{"--model": bad, "--max-latency-ms": 1.0})),
                    "NAS-BERT model that prune cannot carry over", "convolutions")
    assert not (tmp_path / "out").exists()


def test_profile_table_of_a_carried_over_model_times_its_projections():
    """The table's "rest" of a mean-pooled model holds the embedding projection and the boundary Linears (they
    stay whole when units are pruned); its name says mean; whole pruned models validate as for BERT."""
    from nasbert_deploy.devices import load_device
    from nasbert_deploy.prune.profile import PruneProfileSettings, _MeanPooledRest, profile_table

    bert = to_pruned_bert(nasbert_classifier("48:mha,ffn,id,id|48:mha,ffn,id,id", ["a", "b", "c"]))
    rest = _MeanPooledRest(bert.config)
    assert len(rest.projections) == 1 and hasattr(rest.model.bert.embeddings, "projection")
    s = PruneProfileSettings(seq_len=16, ffn_points=3, rounds=2, warmup=1, runs=3, min_time_s=0.0, validate=2, holdout=0)
    t = profile_table(bert.config, load_device("cpu-torch"), s)
    assert t.manifest["name"].endswith("-mean") and t.rest_ms > 0 and t.scale > 0
    assert all(v["measured_ms"] > 0 and v["predicted_ms"] > 0 for v in t.validation)
