"""Progressive shrinking: the pure schedule, the bins, and one shrink step on given losses."""

from __future__ import annotations

import random

import pytest

from nasbert_deploy.errors import NasBertDeployError
from nasbert_deploy.space import MINILM, TINY
from nasbert_deploy.supernet.shrinking import (
    ShrinkConfig,
    block_bins,
    make_bins,
    next_count,
    sample_for_scoring,
    shrink_bin,
    shrink_epochs,
    shrink_schedule,
    shrinks_at_epoch_end,
)


def test_schedule_counts_per_bin_after_each_epoch():
    # E >= bin size: halve (floor of half dropped), never below m
    cfg = ShrinkConfig(bins=3, per_bin=100, keep=5, warmup_epochs=2)
    assert shrink_schedule([47, 46, 46], cfg) == [[47, 46, 46], [24, 23, 23], [12, 12, 12], [6, 6, 6], [5, 5, 5]]
    assert shrink_epochs([47, 46, 46], cfg) == 4
    # E < bin size: each step drops E/2 (the paper's regime, bins much larger than E)
    cfg = ShrinkConfig(bins=2, per_bin=20, keep=10, warmup_epochs=3)
    assert shrink_schedule([50, 31], cfg) == [[50, 31], [40, 21], [30, 11], [20, 10], [10, 10]]
    # nothing to shrink
    assert shrink_schedule([4, 3], ShrinkConfig(keep=5)) == [[4, 3]]
    assert next_count(11, 2000, 10) == 10 and next_count(10, 2000, 10) == 10 and next_count(3, 2, 1) == 2


def test_shrink_points_follow_warmup():
    cfg = ShrinkConfig(warmup_epochs=3)
    assert [shrinks_at_epoch_end(e, cfg) for e in range(5)] == [False, False, False, True, True]
    assert shrinks_at_epoch_end(0, ShrinkConfig(warmup_epochs=0))


def test_config_rejects_nonsense():
    with pytest.raises(NasBertDeployError, match="bins >= 1"):
        ShrinkConfig(bins=0)
    with pytest.raises(NasBertDeployError, match="per_bin >= 2"):
        ShrinkConfig(per_bin=1)


def test_bins_cover_space_ordered_by_size_and_latency():
    cfg = ShrinkConfig(bins=10)
    bins = block_bins(MINILM, cfg)
    assert [len(b) for b in bins] == [47] * 5 + [46] * 5  # 465 blocks
    flat = [b for bin_ in bins for b in bin_]
    assert len(set(flat)) == MINILM.block_count() == 465
    mean_params = [sum(sum(MINILM.op_params(o, b.hidden) for o in b.ops) for b in bin_) / len(bin_) for bin_ in bins]
    assert mean_params == sorted(mean_params)
    assert min(sum(MINILM.op_params(o, b.hidden) for o in b.ops) for b in bins[0]) == MINILM.op_params(
        MINILM.layer_ops[2], 128
    )  # the smallest block (128:sep3) is in the first bin


def test_bins_use_both_params_and_latency():
    blocks = list(TINY.enumerate_block(32))[:4]
    # params rank a<b<c<d, latency rank d<c<b<a -> equal mean ranks; ties broken by params
    bins = make_bins(blocks, [1, 2, 3, 4], [4, 3, 2, 1], 2)
    assert bins == [blocks[:2], blocks[2:]]
    # latency dominates when params tie
    bins = make_bins(blocks, [1, 1, 1, 1], [4, 3, 2, 1], 2)
    assert bins == [[blocks[3], blocks[2]], [blocks[1], blocks[0]]]


class _Table:
    """A latency table stand-in with real numbers: 1 ms per layer, whatever the op."""

    def block_ms(self, block, batch, seq):
        return float(block.depth)


def test_bins_from_latency_table():
    bins = block_bins(TINY, ShrinkConfig(bins=2), table=_Table())
    assert [len(b) for b in bins] == [20, 20]
    mean_ms = [sum(b.depth for b in bin_) / len(bin_) for bin_ in bins]
    assert mean_ms[0] < mean_ms[1]
    assert bins != block_bins(TINY, ShrinkConfig(bins=2))  # the table, not FLOPs, decided


def test_shrink_step_drops_worse_half_of_sample():
    cfg = ShrinkConfig(bins=1, per_bin=6, keep=3)
    survivors = list(TINY.enumerate_block(32))[:10]
    sample = sample_for_scoring(survivors, cfg, random.Random(0))
    assert len(sample) == 6 and set(sample) <= set(survivors)
    losses = {b: float(i) for i, b in enumerate(sample)}
    after = shrink_bin(survivors, losses, cfg)
    assert len(after) == 7 == next_count(10, 6, 3)
    assert set(sample[3:]).isdisjoint(after) and set(sample[:3]) <= set(after)
    # never below keep
    small = shrink_bin(survivors[:4], {b: float(i) for i, b in enumerate(survivors[:4])}, cfg)
    assert small == survivors[:3]
    assert sample_for_scoring(survivors[:3], cfg, random.Random(0)) == []
