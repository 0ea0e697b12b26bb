"""The shared training loop: schedule values, checkpoint round trip, exact resume, Ctrl-C checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from nasbert_deploy.errors import CheckpointError
from nasbert_deploy.model.loop import (
    checkpoint_dir,
    latest_dir,
    load_checkpoint,
    lr_factor,
    optimizer_state,
    restore_optimizer_state,
    run_steps,
    save_checkpoint,
    warmup_decay,
)

KEY = {"kind": "test", "config": {"lr": 0.05, "seed": 0}}


def test_lr_factor_warms_up_then_decays_to_zero():
    assert [lr_factor(s, 4, 10) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert [lr_factor(s, 4, 10) for s in (4, 7, 9, 10, 12)] == pytest.approx([1.0, 0.5, 1 / 6, 0.0, 0.0])
    assert [lr_factor(s, 3) for s in (0, 2, 3, 1000)] == pytest.approx([1 / 3, 1.0, 1.0, 1.0])  # no total: constant
    assert lr_factor(0, 0, 5) == 1.0 and lr_factor(1, 0, 5) == pytest.approx(1.0)  # warm-up of at least one step


def test_warmup_decay_sets_the_learning_rate_of_each_step():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = warmup_decay(opt, 0.25, 8)  # 2 warm-up steps, then 6 of decay
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.05, 0.1, 0.1, 0.1 * 5 / 6, 0.1 * 4 / 6, 0.05, 0.1 * 2 / 6, 0.1 / 6])


def test_run_steps_checkpoints_every_n_but_not_after_the_last_step():
    saves, seen, notes = [], [], []
    record = lambda d, n, v: seen.append((d, n, v["x"]))  # noqa: E731
    done = run_steps(0, 10, lambda s: {"x": float(s)}, saves.append, checkpoint_every=4, progress=record)
    assert done == 10 and saves == [4, 8] and seen[0] == (1, 10, 0.0) and seen[-1] == (10, 10, 9.0)

    def step_fn(step: int) -> dict[str, float]:
        if step == 6:
            raise KeyboardInterrupt
        return {}

    saves.clear()
    with pytest.raises(KeyboardInterrupt):
        run_steps(3, 10, step_fn, saves.append, checkpoint_every=4, note=notes.append)
    assert saves == [4, 6] and notes == ["resuming from step 3 of 10"]  # 6 steps (0..5) were finished


def _tensors() -> dict[str, torch.Tensor]:
    return {"w": torch.arange(6.0).view(2, 3), "b": torch.tensor([1.5, -2.0])}


def test_checkpoint_round_trip_and_refusals(tmp_path):
    ckpt = checkpoint_dir(tmp_path / "out")
    assert ckpt == tmp_path / "out.ckpt" and load_checkpoint(ckpt, KEY) is None
    saved = {"optimizer": {"state": {}, "param_groups": []}, "rng": torch.get_rng_state()}
    save_checkpoint(ckpt, KEY, _tensors(), saved, {"step": 7, "history": [[7, 0.25]]})
    assert json.loads((ckpt / "state.json").read_text()) == {"key": KEY, "step": 7, "history": [[7, 0.25]]}
    got = load_checkpoint(ckpt, KEY)
    assert got is not None and got.state["step"] == 7 and got.state["history"] == [[7, 0.25]]
    assert all(torch.equal(got.tensors[k], v) for k, v in _tensors().items())
    assert torch.equal(got.saved["rng"], saved["rng"])
    other = {"kind": "test", "config": {"lr": 0.01, "seed": 0}}
    with pytest.raises(CheckpointError, match=r"different run \(config\.lr differ\)"):
        load_checkpoint(ckpt, other)
    (ckpt / "optimizer.pt").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="damaged checkpoint"):
        load_checkpoint(ckpt, KEY)


def test_a_kill_between_the_two_renames_leaves_a_usable_backup(tmp_path):
    ckpt = tmp_path / "part"
    save_checkpoint(ckpt, KEY, _tensors(), {}, {"step": 3}, field="run")
    ckpt.rename(tmp_path / ".part.old")  # atomic_dir moved the old folder aside, then the process died
    assert latest_dir(ckpt) == tmp_path / ".part.old"
    got = load_checkpoint(ckpt, KEY, field="run")
    assert got is not None and got.state == {"run": KEY, "step": 3}


def _train(ckpt: Path, total: int = 12, every: int = 5, stop_at: int | None = None, kill_at: int | None = None):
    """A tiny resumable run (dropout, so the RNG state matters); returns (model, progress steps, notes, losses)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.2), nn.Linear(8, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    sched = warmup_decay(opt, 0.25, total)
    start, losses = 0, []
    loaded = load_checkpoint(ckpt, KEY)
    if loaded is not None:
        model.load_state_dict(loaded.tensors)
        restore_optimizer_state(opt, sched, loaded.saved)
        start, losses = loaded.state["step"], loaded.state["losses"]

    def step_fn(step: int) -> dict[str, float]:
        if step == kill_at:
            raise RuntimeError("killed")  # not an interrupt: no checkpoint is written
        g = torch.Generator().manual_seed(step)
        x = torch.randn(16, 4, generator=g)
        loss = ((model(x).squeeze(1) - x.sum(1)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        return {"loss": losses[-1]}

    def save(done: int) -> None:
        save_checkpoint(ckpt, KEY, model.state_dict(), optimizer_state(opt, sched), {"step": done, "losses": losses})

    seen, notes = [], []

    def progress(done: int, n: int, values: dict[str, float]) -> None:
        seen.append(done)
        if done == stop_at:
            raise KeyboardInterrupt

    run_steps(start, total, step_fn, save, checkpoint_every=every, progress=progress, note=notes.append)
    return model, seen, notes, losses


def test_ctrl_c_checkpoints_and_the_rerun_ends_like_an_uninterrupted_run(tmp_path):
    ref, seen, notes, ref_losses = _train(tmp_path / "ref.ckpt")
    assert seen == list(range(1, 13)) and notes == [] and len(ref_losses) == 12
    assert ref_losses[-1] < 0.5 * ref_losses[0]  # it learns
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "run.ckpt", stop_at=7)
    assert json.loads((tmp_path / "run.ckpt" / "state.json").read_text())["step"] == 7
    resumed, seen, notes, losses = _train(tmp_path / "run.ckpt")
    assert notes == ["resuming from step 7 of 12"] and seen == [8, 9, 10, 11, 12]
    assert losses == ref_losses  # identical floats, step by step
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), resumed.state_dict().values()))


def test_a_kill_resumes_from_the_last_periodic_checkpoint(tmp_path):
    ref, _, _, ref_losses = _train(tmp_path / "ref.ckpt")
    with pytest.raises(RuntimeError, match="killed"):
        _train(tmp_path / "run.ckpt", kill_at=8)
    assert json.loads((tmp_path / "run.ckpt" / "state.json").read_text())["step"] == 5
    resumed, seen, notes, losses = _train(tmp_path / "run.ckpt")
    assert notes == ["resuming from step 5 of 12"] and seen == [6, 7, 8, 9, 10, 11, 12]
    assert losses == ref_losses
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), resumed.state_dict().values()))


def test_rank_rows_split_each_global_batch_and_cover_every_row_once_an_epoch():
    from nasbert_deploy.model.loop import epoch_order, rank_rows

    n, b, world = 10, 2, 2  # global batch 4: 3 steps an epoch, the last of 2 rows (rank 1's slice empty)
    for epoch in (0, 1):
        seen = []
        for step in range(epoch * 3, epoch * 3 + 3):
            slices = [rank_rows(step, n, b, 7, r, world) for r in range(world)]
            assert len({g for _, g in slices}) == 1 and sum(len(rows) for rows, _ in slices) == slices[0][1]
            seen += [i for rows, _ in slices for i in rows]
        assert seen == list(epoch_order(n, 7, epoch))
    assert rank_rows(2, n, b, 7, 1, world) == ([], 2)
    assert rank_rows(0, n, 4, 7) == (list(epoch_order(n, 7, 0)[:4]), 4)  # one process: the global batch
