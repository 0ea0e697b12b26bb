"""Corpus reading, the teacher-state cache and the embedding init; also the tiny-teacher builder the
other `test_train_*` modules import."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import SAMPLE, make_sample_teacher

from nasbert_deploy.errors import CorpusError, SpaceError
from nasbert_deploy.space import TINY
from nasbert_deploy.supernet.network import Supernet
from nasbert_deploy.supernet.teacher_cache import build_teacher_cache, init_embeddings_from_teacher, read_paragraphs
from nasbert_deploy.teacher import load_teacher


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory) -> Path:
    return make_sample_teacher(tmp_path_factory.mktemp("teacher"))


def test_read_paragraphs(tmp_path):
    paras = read_paragraphs(SAMPLE, limit=50)
    assert len(paras) == 50 and all(p.strip() == p and p for p in paras)
    assert len(read_paragraphs(SAMPLE)) == 200
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(CorpusError, match="no paragraph"):
        read_paragraphs(tmp_path / "empty.txt")
    with pytest.raises(CorpusError, match="does not exist"):
        read_paragraphs(tmp_path / "missing.txt")


def test_cache_matches_teacher_and_resumes(tmp_path, tiny_teacher_dir):
    teacher = load_teacher(tiny_teacher_dir)
    paras = read_paragraphs(SAMPLE, limit=40)
    cache = build_teacher_cache(teacher, paras, seq_len=24, num_blocks=2, cache_dir=tmp_path, batch_size=16, shard_size=16)
    assert len(cache) == 40 and cache.num_blocks == 2 and cache.hidden_size == 48
    assert cache.input_ids.shape == (40, 24) and cache.states[2].dtype == torch.float16
    shards = sorted((tmp_path / cache.meta["key"]).glob("shard-*.safetensors"))
    assert len(shards) == 3
    with torch.no_grad():
        ref = teacher.model(input_ids=cache.input_ids[:5], attention_mask=cache.attention_mask[:5], output_hidden_states=True)
    # 4 teacher layers over 2 blocks: boundaries are hidden_states 0, 2, 4
    for k, layer in enumerate((0, 2, 4)):
        assert torch.allclose(cache.states[k][:5].float(), ref.hidden_states[layer], atol=2e-2)
    # resume: a removed shard is rebuilt, the others reused (same bytes)
    before = shards[0].stat().st_mtime_ns
    shards[1].unlink()
    again = build_teacher_cache(teacher, paras, seq_len=24, num_blocks=2, cache_dir=tmp_path, batch_size=16, shard_size=16)
    assert shards[0].stat().st_mtime_ns == before and shards[1].is_file()
    assert torch.equal(again.states[1], cache.states[1])
    train, val = cache.split(8)
    assert len(train) == 32 and len(val) == 8
    with pytest.raises(CorpusError, match="between 1 and 39"):
        cache.split(40)


def test_svd_embedding_init_beats_random(tiny_teacher_dir):
    teacher = load_teacher(tiny_teacher_dir)
    ids = torch.randint(5, 1000, (4, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        target = teacher.model(input_ids=ids, output_hidden_states=True).hidden_states[0]
        torch.manual_seed(0)
        net = Supernet(TINY)
        random_err = float(((net.embed(ids) - target) ** 2).mean())
        init_embeddings_from_teacher(net, teacher.model)
        init_err = float(((net.embed(ids) - target) ** 2).mean())
    assert init_err < 0.75 * random_err  # random teacher: top-16 of 48 directions hold ~1/3 of the energy
    small = Supernet(TINY.__class__(**{**TINY.to_dict(), "vocab_size": 500, "hidden_sizes": (32, 64), "conv_kernels": (3, 5)}))
    with pytest.raises(SpaceError, match="vocab, hidden"):
        init_embeddings_from_teacher(small, teacher.model)
