"""The tiny teacher the distillation / fine-tuning tests build (tests/helpers.py) fits the TINY space."""

from __future__ import annotations

from helpers import make_tiny_teacher

from nasbert_deploy.space import TINY


def test_tiny_teacher_matches_tiny_space(tmp_path):
    from nasbert_deploy.teacher import load_teacher

    t = load_teacher(make_tiny_teacher(tmp_path / "t"))
    assert t.hidden_size == TINY.output_dim == 48
    assert len(t.tokenizer) == TINY.vocab_size == 1000
    ids = t.tokenizer("The os module provides functions.")["input_ids"]
    assert ids[0] == 2 and ids[-1] == 3 and 1 not in ids  # [CLS] ... [SEP], no [UNK]
