"""Tiny teacher for the distillation / fine-tuning tests: BertModel 2 x 48 with a 1000-token WordPiece vocab.

Imported by the other test_distill* / test_finetune* modules (`from test_distill_fixtures import ...`).
"""

from __future__ import annotations

import collections
import re
from pathlib import Path

import pytest
import torch

from nasbert_deploy.space import TINY
from nasbert_deploy.student.tasks import load_task, sample_task_path

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_vocab(size: int = 1000) -> list[str]:
    """Specials, single characters (and their ## forms), then the commonest words of the shipped sample."""
    chars = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"()[]{}-_/*=+<>@#%&|\\`~$^"))
    vocab = SPECIALS + chars + ["##" + c for c in chars]
    words = collections.Counter()
    for text in load_task(sample_task_path("train")).texts:
        words.update(w for w in re.findall(r"[a-z]+", text.lower()) if len(w) > 1)
    for w, _ in words.most_common():
        if len(vocab) >= size:
            break
        if w not in vocab:
            vocab.append(w)
    return vocab[:size]


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models train fastest on one thread; more only fight over the shared cores."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def make_tiny_teacher(directory: Path, mlm: bool = False, seed: int = 0) -> Path:
    """Write a random tiny BERT (hidden 48, 2 layers, 4 heads, FFN 96, vocab 1000) and its tokenizer."""
    from transformers import BertConfig, BertForMaskedLM, BertModel, BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    vocab_file = directory / "vocab.txt"
    vocab_file.write_text("\n".join(tiny_vocab()) + "\n", encoding="utf-8")
    tok = BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True)
    cfg = BertConfig(
        vocab_size=1000,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=96,
        max_position_embeddings=TINY.max_positions,
    )
    torch.manual_seed(seed)
    model = (BertForMaskedLM if mlm else BertModel)(cfg)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def test_tiny_teacher_matches_tiny_space(tmp_path):
    from nasbert_deploy.teacher import load_teacher

    t = load_teacher(make_tiny_teacher(tmp_path / "t"))
    assert t.hidden_size == TINY.output_dim == 48
    assert len(t.tokenizer) == TINY.vocab_size == 1000
    ids = t.tokenizer("The os module provides functions.")["input_ids"]
    assert ids[0] == 2 and ids[-1] == 3 and 1 not in ids  # [CLS] ... [SEP], no [UNK]
