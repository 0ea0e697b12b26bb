from __future__ import annotations

import json
import random

import pytest
import torch
from search_helpers import SyntheticLatency
from typer.testing import CliRunner

from nasbert_deploy.cli.app import app
from nasbert_deploy.errors import TeacherError
from nasbert_deploy.search import run as search_run
from nasbert_deploy.search.rerank import heldout_mse, read_heldout, rerank
from nasbert_deploy.space import TINY
from nasbert_deploy.supernet.candidates import CandidateTable
from nasbert_deploy.supernet.network import Supernet
from nasbert_deploy.teacher import load_teacher

WORDS = [f"w{i}" for i in range(900)]
TEXTS = [" ".join(random.Random(i).choices(WORDS, k=5 + 3 * i)) for i in range(7)]


def _teacher(path, hidden=48):
    from transformers import BertConfig, BertModel, BertTokenizer

    path.mkdir(parents=True, exist_ok=True)
    vocab = path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizer(str(vocab)).save_pretrained(str(path))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=1000, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                     max_position_embeddings=64)
    BertModel(cfg).save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("rerank")
    torch.manual_seed(1)
    net = Supernet(TINY).eval()
    return root, net, load_teacher(_teacher(root / "teacher"))


def _reference_mse(net, teacher, arch, texts):
    enc = teacher.tokenizer(texts, max_length=64, truncation=True, padding=True, return_tensors="pt")
    with torch.no_grad():
        s = net.extract(arch)(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        t = teacher.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    m = enc["attention_mask"].bool()
    return float(((s - t)[m] ** 2).mean())


def test_heldout_mse_equals_whole_batch_reference(tiny):
    _, net, teacher = tiny
    archs = [TINY.random_arch(random.Random(i)) for i in range(3)]
    got = heldout_mse(archs, net, teacher, TEXTS, seq_len=64, batch_size=3)  # 3 uneven batches
    for a, g in zip(archs, got):
        assert g == pytest.approx(_reference_mse(net, teacher, a, TEXTS), rel=1e-5)
    ranked = rerank(archs, [0.3, 0.2, 0.1], net, teacher, TEXTS, seq_len=64)
    assert [r.heldout_mse for r in ranked] == pytest.approx(sorted(got), rel=1e-5)
    assert {str(r.arch): r.table_loss for r in ranked} == {str(a): x for a, x in zip(archs, [0.3, 0.2, 0.1])}


def test_incompatible_teacher(tiny, tmp_path):
    _, net, _ = tiny
    wide = load_teacher(_teacher(tmp_path / "t32", hidden=32))
    with pytest.raises(TeacherError, match="hidden size is 32"):
        heldout_mse([TINY.random_arch(random.Random(0))], net, wide, TEXTS)


def test_read_heldout_default_and_errors(tmp_path):
    lines = read_heldout(limit=50)
    assert len(lines) == 50 and all(lines)
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(Exception, match="has no paragraph"):
        read_heldout(tmp_path / "empty.txt")


@pytest.mark.slow
def test_cli_rerank_orders_by_heldout_mse(tiny, monkeypatch):
    root, net, teacher = tiny
    net.save(root / "supernet")
    rng = random.Random(0)
    losses = [{b: rng.random() for b in list(TINY.enumerate_blocks())[:6]} for _ in range(TINY.num_blocks)]
    CandidateTable.from_losses(TINY, losses).save(root / "supernet" / "candidates.json")
    monkeypatch.setattr(search_run, "load_latency_table", lambda path, space: SyntheticLatency(TINY, 0))
    (root / "heldout.txt").write_text("\n".join(TEXTS) + "\n")
    res = CliRunner().invoke(app, [
        "search", "--max-latency-ms", "1000", "--table", str(root / "lat.json"), "--supernet", str(root / "supernet"),
        "--teacher", str(root / "teacher"), "--heldout", str(root / "heldout.txt"), "--seq-len", "32",
        "--rerank", "4", "--top", "4", "--json",
    ])
    assert res.exit_code == 0, res.output
    best = json.loads(res.stdout)["best"]
    assert len(best) == 4 and [b["heldout_mse"] for b in best] == sorted(b["heldout_mse"] for b in best)
    arch = TINY.parse(best[0]["arch"])
    assert best[0]["heldout_mse"] == pytest.approx(_reference_mse(net, teacher, arch, TEXTS), rel=1e-5)
