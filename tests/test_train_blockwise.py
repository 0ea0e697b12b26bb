"""Block-wise supernet training: learning, exact resume, kill tolerance, --blocks, DDP on gloo."""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

import pytest
import torch

from nasbert_deploy.errors import CheckpointError
from nasbert_deploy.space import TINY
from nasbert_deploy.supernet.blockwise import TrainConfig, batch_indices, masked_mse, sample_path, train_supernet
from nasbert_deploy.supernet.candidates import CandidateTable
from nasbert_deploy.supernet.checkpoints import part_dir
from nasbert_deploy.supernet.network import Supernet
from nasbert_deploy.supernet.shrinking import ShrinkConfig, score_blocks
from nasbert_deploy.supernet.teacher_cache import TeacherCache


def synthetic_cache(n: int = 48, t: int = 12, seed: int = 0) -> TeacherCache:
    """A learnable stand-in for teacher states: state[k+1] = tanh(state[k] @ W_k), padded rows masked."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, TINY.vocab_size, (n, t), generator=g)
    mask = torch.ones(n, t, dtype=torch.long)
    for i in range(0, n, 3):
        mask[i, t // 2 :] = 0
    emb = torch.randn(TINY.vocab_size, 48, generator=g)
    states = [emb[ids]]
    for _ in range(TINY.num_blocks):
        w = torch.randn(48, 48, generator=g) / 48**0.5
        states.append(torch.tanh(states[-1] @ w) * 2)
    return TeacherCache(ids, mask, [s.half() for s in states])


def _cfg(**kw) -> TrainConfig:
    base = dict(
        batch_size=6,
        eval_batch_size=8,
        steps_per_epoch=4,
        checkpoint_every=3,
        lr=3e-3,
        lr_warmup_steps=2,
        shrink=ShrinkConfig(bins=2, per_bin=8, keep=3, warmup_epochs=1),
    )
    base.update(kw)
    return TrainConfig(**base)


def _weights(net: Supernet) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_masked_mse_ignores_padding():
    out, tgt = torch.zeros(1, 4, 2), torch.zeros(1, 4, 2)
    tgt[0, 3] = 100.0
    tgt[0, 0] = 1.0
    assert masked_mse(out, tgt, torch.tensor([[1, 1, 1, 0]])).item() == pytest.approx(2 / 6)


def test_determinism_helpers():
    a = batch_indices(5, 4, 30, 6, 0, 1, 0)
    assert torch.equal(a, batch_indices(5, 4, 30, 6, 0, 1, 0)) and len(set(a.tolist())) == 6
    r0, r1 = batch_indices(5, 4, 30, 6, 0, 2, 0), batch_indices(5, 4, 30, 6, 1, 2, 0)
    assert set(r0.tolist()).isdisjoint(r1.tolist())  # ranks see different paragraphs
    surv = [list(TINY.enumerate_block(32))[:3], list(TINY.enumerate_block(64))[:2]]
    assert sample_path(surv, 0, 1, 7) == sample_path(surv, 0, 1, 7)
    picks = {sample_path(surv, 0, 1, s) for s in range(200)}
    assert picks == set(surv[0] + surv[1])  # only survivors, all of them


def test_prefix_shared_scoring_equals_forward_block():
    torch.manual_seed(0)
    net = Supernet(TINY)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    val = synthetic_cache(10)
    blocks = list(TINY.enumerate_blocks())
    random.Random(0).shuffle(blocks)
    blocks = blocks[:16]
    got = score_blocks(net, 1, blocks, val, 4)
    x, y, m = val.states[1].float(), val.states[2].float(), val.attention_mask
    with torch.no_grad():
        ref = [float(masked_mse(net.forward_block(1, b, x, m), y, m)) for b in blocks]
    assert max(abs(a - b) for a, b in zip(got, ref)) < 1e-5


def test_training_learns_and_writes_candidates(tmp_path):
    data = synthetic_cache()
    train, val = data.split(12)
    cfg = _cfg(epochs=4)
    torch.manual_seed(cfg.seed)
    init = Supernet(TINY)
    path = TINY.parse("64:ffn,mha|64:ffn,mha")
    before = [score_blocks(init, i, [path.blocks[i]], val, 8)[0] for i in range(2)]
    res = train_supernet(TINY, train, val, tmp_path / "run", cfg, metadata={"note": "test"})
    assert res.finished and res.assembled and res.steps == 16
    table = CandidateTable.load(tmp_path / "run" / "candidates.json", TINY)
    # 40 blocks in 2 bins of 20; epochs 2, 3, 4 end with a shrink of E/2 = 4: 20 -> 16 -> 12 -> 8 per bin
    assert [len(b) for b in table.blocks] == [16, 16]
    net, meta = Supernet.load(tmp_path / "run")
    assert meta["note"] == "test" and meta["latency_source"] == "flops" and meta["bin_sizes"] == [20, 20]
    trained = {c.block: c.loss for c in table.blocks[0]}
    best = min(trained, key=trained.get)
    assert trained[best] < before[0]  # the supernet learned block 0
    # the table's losses are the saved supernet's scores
    assert score_blocks(net, 0, [best], val, 8)[0] == pytest.approx(trained[best], rel=1e-5)


@pytest.mark.slow
def test_resume_is_exact_and_kill_loses_at_most_one_interval(tmp_path):
    data = synthetic_cache()
    train, val = data.split(12)
    cfg = _cfg(epochs=3, checkpoint_every=3)
    full = train_supernet(TINY, train, val, tmp_path / "full", cfg)
    part = train_supernet(TINY, train, val, tmp_path / "killed", cfg, stop_after_step=7)
    assert not part.finished
    import json

    steps = [json.loads((part_dir(tmp_path / "killed", n) / "state.json").read_text())["step"] for n in ("embed", "block0")]
    assert steps == [6, 6] and 7 - steps[0] <= cfg.checkpoint_every
    resumed = train_supernet(TINY, train, val, tmp_path / "killed", cfg)
    assert resumed.finished
    a, b = _weights(full.supernet), _weights(resumed.supernet)
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    ta = CandidateTable.load(tmp_path / "full" / "candidates.json")
    tb = CandidateTable.load(tmp_path / "killed" / "candidates.json")
    assert [sorted(str(c.block) for c in x) for x in ta.blocks] == [sorted(str(c.block) for c in x) for x in tb.blocks]
    # other settings in the same folder are refused, naming what differs
    with pytest.raises(CheckpointError, match="batch_size"):
        train_supernet(TINY, train, val, tmp_path / "killed", _cfg(epochs=3, batch_size=4))


@pytest.mark.slow
def test_blocks_trained_in_separate_runs_equal_one_run(tmp_path):
    data = synthetic_cache()
    train, val = data.split(12)
    whole = train_supernet(TINY, train, val, tmp_path / "whole", _cfg(epochs=2))
    first = train_supernet(TINY, train, val, tmp_path / "split", _cfg(epochs=2, blocks=(1,)))
    assert first.finished and not first.assembled and first.waiting_for == ["embed", "block0"]
    second = train_supernet(TINY, train, val, tmp_path / "split", _cfg(epochs=2, blocks=(0,)))
    assert second.assembled
    a, _ = Supernet.load(tmp_path / "whole")
    b, _ = Supernet.load(tmp_path / "split")
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert whole.assembled


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        data = synthetic_cache()
        train, val = data.split(12)
        res = train_supernet(TINY, train, val, Path(out) / "run", _cfg(epochs=2, steps_per_epoch=3))
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in res.supernet.state_dict().items()}, f"{out}/rank{rank}.safetensors")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_gloo_ranks_hold_identical_weights(tmp_path):
    from safetensors.torch import load_file

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    w0, w1 = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    torch.manual_seed(0)
    init = Supernet(TINY).state_dict()
    assert any(not torch.equal(w0[k], init[k]) for k in w0)  # they trained
    assert (tmp_path / "run" / "candidates.json").is_file()  # rank 0 assembled
