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


def test_teacher_stored_in_fp16_loads_and_runs_in_fp32(tmp_path):
    """A half-precision checkpoint (a teacher shipped small) still gives the fp32 teacher the recipes assume,
    whatever transformers' default dtype is (v5 loads a file's own dtype)."""
    import torch
    from safetensors.torch import load_file, save_file

    from nasbert_deploy.teacher import load_teacher

    folder = make_tiny_teacher(tmp_path / "t")
    weights = load_file(folder / "model.safetensors")
    save_file({k: v.half() if v.is_floating_point() else v for k, v in weights.items()}, folder / "model.safetensors")
    t = load_teacher(folder)
    assert {p.dtype for p in t.model.parameters()} == {torch.float32}
    ids = t.tokenizer("The os module provides functions.", return_tensors="pt")
    assert t.model(**ids).last_hidden_state.dtype == torch.float32


def test_task_heads_are_read_from_the_config():
    from nasbert_deploy.prune.latency import head_kind
    from nasbert_deploy.teacher import is_classifier, is_qa, task_head

    clf = {"architectures": ["BertForSequenceClassification"], "pooling": "mean"}
    qa = {"architectures": ["NasBertForQuestionAnswering"]}
    bare = {"architectures": ["BertModel"]}
    assert (task_head(clf), is_classifier(clf), is_qa(clf), head_kind(clf)) == (clf["architectures"][0], True, False, "mean")
    assert (is_classifier(qa), is_qa(qa), head_kind(qa)) == (False, True, "qa")
    assert task_head(bare) is None and not is_classifier(bare) and not is_qa(bare) and head_kind(bare) == "cls"
    assert not is_qa({"architectures": "BertForQuestionAnswering"})  # not a list: no head read from it
