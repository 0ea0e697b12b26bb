from __future__ import annotations

import json
import random

import pytest
import torch

from nasbert_deploy.model.modeling import NasBertConfig, NasBertForSequenceClassification, NasBertModel
from nasbert_deploy.model.ops import build_op
from nasbert_deploy.space import TINY, Op
from nasbert_deploy.supernet.network import Supernet


def _inputs(b=3, t=11, vocab=1000, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    return ids, mask


@pytest.mark.parametrize("op", TINY.layer_ops + (Op("id"),), ids=lambda o: o.name)
@pytest.mark.parametrize("hidden", TINY.hidden_sizes)
def test_op_param_count_matches_torch(op, hidden):
    m = build_op(op, hidden, TINY)
    assert sum(p.numel() for p in m.parameters()) == TINY.op_params(op, hidden)


def test_model_param_count_matches_space(rng):
    for _ in range(10):
        arch = TINY.random_arch(rng)
        m = NasBertModel(NasBertConfig.from_arch(arch, TINY))
        assert sum(p.numel() for p in m.parameters()) == TINY.params(arch)


@pytest.mark.parametrize("op", TINY.layer_ops, ids=lambda o: o.name)
def test_every_op_honours_padding(op):
    torch.manual_seed(0)
    m = build_op(op, 32, TINY).eval()
    x = torch.randn(1, 9, 32)
    padded = torch.cat([x, torch.randn(1, 4, 32) * 100], dim=1)
    mask = torch.tensor([[1] * 9 + [0] * 4])
    with torch.no_grad():
        alone = m(x, torch.ones(1, 9))
        with_pad = m(padded, mask)[:, :9]
    assert torch.allclose(alone, with_pad, atol=1e-5)


def test_supernet_extract_equals_path_and_masks(rng):
    torch.manual_seed(0)
    net = Supernet(TINY).eval()
    # perturb all params so composed maps are non-trivial
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ids, mask = _inputs()
    for _ in range(8):
        arch = TINY.random_arch(rng)
        model = net.extract(arch)
        with torch.no_grad():
            ref = net(arch, ids, mask)
            out = model(ids, mask).last_hidden_state
        real = mask.bool()
        assert (ref - out)[real].abs().max().item() <= 1e-5
        # padding honoured end to end: row 2 alone == row 2 padded
        with torch.no_grad():
            alone = model(ids[2:3, :4], mask[2:3, :4]).last_hidden_state
        assert torch.allclose(alone, out[2:3, :4], atol=1e-5)


def test_save_pretrained_round_trip_and_auto(tmp_path, rng):
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    arch = TINY.random_arch(rng)
    model = NasBertModel(NasBertConfig.from_arch(arch, TINY)).eval()
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").is_file()
    cfg = AutoConfig.from_pretrained(tmp_path / "m")
    assert cfg.model_type == "nasbert" and cfg.arch == str(arch)
    loaded = AutoModel.from_pretrained(tmp_path / "m").eval()
    assert isinstance(loaded, NasBertModel)
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    ids, mask = _inputs()
    with torch.no_grad():
        assert torch.equal(model(ids, mask).last_hidden_state, loaded(ids, mask).last_hidden_state)
    cls = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m", num_labels=6)
    assert isinstance(cls, NasBertForSequenceClassification)
    out = cls(ids, mask, labels=torch.tensor([0, 1, 5]))
    assert out.logits.shape == (3, 6) and out.loss.item() > 0


def test_supernet_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    net = Supernet(TINY)
    net.save(tmp_path / "sn", metadata={"note": "x"})
    loaded, meta = Supernet.load(tmp_path / "sn")
    assert meta == {"note": "x"}
    for (k, v), (k2, v2) in zip(net.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    arch = TINY.random_arch(random.Random(3))
    ids, mask = _inputs()
    with torch.no_grad():
        assert torch.equal(net.eval()(arch, ids, mask), loaded.eval()(arch, ids, mask))


def test_supernet_checkpoint_splits_above_the_file_limit_and_reloads(tmp_path):
    from nasbert_deploy.errors import CheckpointError
    from nasbert_deploy.supernet.default import resolve_supernet_dir

    torch.manual_seed(0)
    net = Supernet(TINY)
    total = sum(v.numel() * v.element_size() for v in net.state_dict().values())
    d = net.save(tmp_path / "sn", metadata={"note": "x"})  # small: one file, as before
    assert sorted(p.name for p in d.iterdir()) == ["supernet.json", "supernet.safetensors"]
    net.save(d, metadata={"note": "y"}, max_file_bytes=total // 3)
    files = sorted(p.name for p in d.glob("*.safetensors"))
    assert len(files) >= 3 and "supernet.safetensors" not in files  # the single file is gone once the split one is named
    largest = max(v.numel() * v.element_size() for v in net.state_dict().values())  # a tensor is never cut
    assert all(p.stat().st_size <= max(total // 3, largest) + 8192 for p in d.glob("*.safetensors"))  # + the header
    assert json.loads((d / "supernet.json").read_text())["weight_files"] == files
    loaded, meta = Supernet.load(resolve_supernet_dir(d))
    assert meta == {"note": "y"}
    for (k, v), (k2, v2) in zip(net.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    net.save(d)  # back to one file: the split files go
    assert sorted(p.name for p in d.glob("*.safetensors")) == ["supernet.safetensors"]
    net.save(d, max_file_bytes=total // 2)
    (d / sorted(d.glob("supernet-*"))[-1].name).unlink()
    with pytest.raises(CheckpointError, match=r"lacks supernet-0000\d-of-0000\d.safetensors"):
        resolve_supernet_dir(d)
    with pytest.raises(CheckpointError, match="is not a supernet checkpoint"):
        Supernet.load(d)
    meta_file = d / "supernet.json"
    meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), "weight_files": ["../x.safetensors"]}))
    with pytest.raises(CheckpointError, match="'weight_files' must list files named like"):
        Supernet.load(d)


def test_supernet_block_params_cover_exactly_the_path():
    net = Supernet(TINY)
    arch = TINY.parse("32:mha,id|64:sep3,ffn")
    n0 = sum(p.numel() for p in net.block_params(0, arch.blocks[0]))
    assert n0 == TINY.op_params(Op("mha"), 32) + 2 * (TINY.output_dim * 32) + 32 + TINY.output_dim


def test_hidden_states_are_every_operation_output():
    """`output_hidden_states`: the embedding projection and each non-identity operation's output, (b, t, h) each;
    the default forward is unchanged (what is traced and exported)."""
    arch = TINY.parse("64:mha,id|32:sep3,ffn")
    cfg = NasBertConfig.from_arch(arch, TINY)
    cfg.num_labels = 3
    torch.manual_seed(0)
    clf = NasBertForSequenceClassification(cfg).eval()
    ids, mask = _inputs()
    with torch.no_grad():
        plain = clf(ids, mask)
        out = clf(ids, mask, output_hidden_states=True)
        enc = clf.nasbert(ids, mask, output_hidden_states=True)
        tup = clf.nasbert(ids, mask, output_hidden_states=True, return_dict=False)
    assert plain.hidden_states is None and torch.equal(plain.logits, out.logits)
    assert [tuple(h.shape) for h in out.hidden_states] == [(3, 11, 64)] * 2 + [(3, 11, 32)] * 2
    # the last operation's output is what the head reads
    assert torch.allclose(clf.nasbert.head(out.hidden_states[-1]), enc.last_hidden_state, atol=1e-6)
    # the mha output: the mha layer applied to the embedding projection
    mha = clf.nasbert.blocks[0].layers[0]
    b, t = ids.shape
    with torch.no_grad():
        ref = mha(out.hidden_states[0].reshape(b * t, -1), mask).view(b, t, -1)
    assert torch.allclose(out.hidden_states[1], ref, atol=1e-6)
    assert len(tup) == 2 and len(tup[1]) == 4
