"""Progressive shrinking (NAS-BERT 3.2.2): bins by size and latency, then halve the sampled worse half.

Per block, the candidates (all block architectures of the space) are cut into `bins` groups by
*both* parameters and latency: each candidate gets the mean of its normalised rank by params and
its normalised rank by latency, and the candidates sorted by that cost are split into `bins`
contiguous groups of (nearly) equal size. So bin 0 holds the small, fast blocks and the last bin
the large, slow ones, and shrinking can never empty a size range: every bin keeps `keep` (m).

Latency comes from a device latency table when one is given (`table.block_ms(block, batch, seq)`);
without one, the block's forward FLOPs at `seq` stand in for latency (recorded as
`latency_source = "flops"` in the checkpoint metadata).

Schedule: no shrinking during `warmup_epochs`; at the end of every later epoch, in every bin with
more than `keep` survivors, sample `per_bin` (E) of them, score them on validation batches, and
drop the worse half of the sample, never going below `keep`:

    n -> max(keep, n - min(per_bin, n) // 2)

`shrink_schedule` is that arithmetic alone (pure, tested); `shrink_bin` applies one step to real
losses. Paper settings: bins 10, per_bin 2000, keep 10, warmup 3.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch

from nasbert_deploy.errors import NasBertDeployError
from nasbert_deploy.model.distributed import world_info
from nasbert_deploy.space import BlockArch, SearchSpace
from nasbert_deploy.supernet.network import Supernet

if TYPE_CHECKING:
    from nasbert_deploy.supernet.teacher_cache import TeacherCache


@dataclass(frozen=True)
class ShrinkConfig:
    """B bins, E sampled per bin per shrink, m kept per bin, warm-up epochs before the first shrink."""

    bins: int = 10
    per_bin: int = 2000
    keep: int = 10
    warmup_epochs: int = 3

    def __post_init__(self) -> None:
        if self.bins < 1 or self.keep < 1 or self.per_bin < 2 or self.warmup_epochs < 0:
            raise NasBertDeployError(
                f"shrinking needs bins >= 1, keep >= 1, per_bin >= 2 and warmup_epochs >= 0; got {asdict(self)}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def next_count(n: int, per_bin: int, keep: int) -> int:
    """Survivors of a bin of `n` after one shrink step."""
    if n <= keep:
        return n
    return max(keep, n - min(per_bin, n) // 2)


def shrink_schedule(bin_sizes: Sequence[int], cfg: ShrinkConfig) -> list[list[int]]:
    """Counts per bin after each shrink epoch, until every bin holds at most `keep`.

    Entry 0 is the starting sizes; entry k the sizes after the k-th shrink (which ends epoch
    `cfg.warmup_epochs + k`). Bounded: every step removes at least one candidate from each bin
    above `keep`.
    """
    sizes = [int(n) for n in bin_sizes]
    out = [sizes]
    while any(n > cfg.keep for n in sizes):
        sizes = [next_count(n, cfg.per_bin, cfg.keep) for n in sizes]
        out.append(sizes)
    return out


def shrink_epochs(bin_sizes: Sequence[int], cfg: ShrinkConfig) -> int:
    """Number of shrink epochs needed after the warm-up."""
    return len(shrink_schedule(bin_sizes, cfg)) - 1


def shrinks_at_epoch_end(epoch: int, cfg: ShrinkConfig) -> bool:
    """Whether the end of (0-based) `epoch` is a shrink point (any epoch after the warm-up)."""
    return epoch + 1 > cfg.warmup_epochs


def _ranks(values: Sequence[float]) -> list[float]:
    """Normalised ranks in [0, 1] (ties share the mean rank)."""
    n = len(values)
    order = sorted(range(n), key=lambda i: values[i])
    ranks = [0.0] * n
    i = 0
    while i < n:
        j = i
        while j + 1 < n and values[order[j + 1]] == values[order[i]]:
            j += 1
        r = (i + j) / 2 / max(1, n - 1)
        for k in range(i, j + 1):
            ranks[order[k]] = r
        i = j + 1
    return ranks


def make_bins(
    blocks: Sequence[BlockArch], params: Sequence[float], latency: Sequence[float], n_bins: int
) -> list[list[BlockArch]]:
    """Split `blocks` into `n_bins` groups of nearly equal size, ordered by mean(param rank, latency rank)."""
    if not blocks:
        raise NasBertDeployError("no candidate blocks to bin")
    n_bins = min(n_bins, len(blocks))
    pr, lr = _ranks(params), _ranks(latency)
    order = sorted(range(len(blocks)), key=lambda i: (pr[i] + lr[i], params[i], str(blocks[i])))
    base, extra = divmod(len(blocks), n_bins)
    bins, start = [], 0
    for b in range(n_bins):
        size = base + (1 if b < extra else 0)
        bins.append([blocks[i] for i in order[start : start + size]])
        start += size
    return bins


def block_latency(space: SearchSpace, block: BlockArch, table: Any = None, batch: int = 1, seq_len: int = 128) -> float:
    """Latency of one block: `table.block_ms(block, batch, seq_len)` (ms) or, without a table, its FLOPs."""
    if table is not None:
        return float(table.block_ms(block, batch, seq_len))
    return float(sum(space.op_flops(op, block.hidden, seq_len) for op in block.ops))


def block_bins(
    space: SearchSpace, cfg: ShrinkConfig, table: Any = None, batch: int = 1, seq_len: int = 128
) -> list[list[BlockArch]]:
    """All block architectures of `space` in `cfg.bins` bins by params and latency (same for every block index)."""
    blocks = list(space.enumerate_blocks())
    params = [sum(space.op_params(op, b.hidden) for op in b.ops) for b in blocks]
    lat = [block_latency(space, b, table, batch, seq_len) for b in blocks]
    return make_bins(blocks, params, lat, cfg.bins)


def sample_for_scoring(survivors: Sequence[BlockArch], cfg: ShrinkConfig, rng: random.Random) -> list[BlockArch]:
    """The E candidates of one bin to score at a shrink step (all of them when the bin is smaller)."""
    if len(survivors) <= cfg.keep:
        return []
    k = min(cfg.per_bin, len(survivors))
    return list(survivors) if k == len(survivors) else rng.sample(list(survivors), k)


def shrink_bin(survivors: Sequence[BlockArch], scored: dict[BlockArch, float], cfg: ShrinkConfig) -> list[BlockArch]:
    """Drop the worse half of the scored sample (highest loss), keeping at least `cfg.keep`; order preserved."""
    drop_n = min(len(scored) // 2, max(0, len(survivors) - cfg.keep))
    worst = sorted(scored, key=lambda b: (-scored[b], str(b)))[:drop_n]
    dropped = set(worst)
    return [b for b in survivors if b not in dropped]


@torch.no_grad()
def score_blocks(
    net: Supernet, index: int, blocks: list[BlockArch], val: TeacherCache, batch_size: int, device: str = "cpu"
) -> list[float]:
    """Validation MSE (over real tokens) of each block path of block `index`.

    Paths are visited in sorted order and share computed prefixes (same hidden size and first
    layers), which cuts the layer evaluations ~3x for 3-layer blocks. Under torchrun each rank
    scores a contiguous share and the losses are summed across ranks.
    """
    rank, world = world_info()
    was_training = net.training
    net.eval()
    losses = torch.zeros(len(blocks), dtype=torch.float64)
    order = sorted(range(len(blocks)), key=lambda j: (blocks[j].hidden, [str(o) for o in blocks[j].ops]))
    mine = order[rank * len(order) // world : (rank + 1) * len(order) // world]
    sq = torch.zeros(len(blocks), dtype=torch.float64)
    cnt = 0.0
    for lo in range(0, len(val), batch_size):
        sl = slice(lo, lo + batch_size)
        m = val.attention_mask[sl].to(device)
        x, y = val.states[index][sl].to(device).float(), val.states[index + 1][sl].to(device).float()
        w = m[:, :, None].to(x.dtype)
        cnt += float(w.sum()) * y.shape[-1]
        # stack[k] = output after the first k layers of the current prefix; stack[0] = in_map output
        stack: list[torch.Tensor] = []
        prefix: tuple = ()
        for j in mine:
            b = blocks[j]
            ops = tuple(o for o in b.ops if not o.is_identity)
            key = (b.hidden, *ops)
            common = 0
            while common < min(len(prefix), len(key)) and prefix[common] == key[common]:
                common += 1
            if common == 0:
                stack = [net.in_maps[index][f"h{b.hidden}"](x)]
            else:
                stack = stack[:common]
            for op in ops[common - 1 if common else 0 :]:
                layer = net.layers[index][len(stack) - 1][f"h{b.hidden}_{op.name}"]
                stack.append(layer(stack[-1], m))
            prefix = key
            out = net.out_maps[index][f"h{b.hidden}"](stack[len(ops)])
            sq[j] += float(((out - y) ** 2 * w).sum())
    for j in mine:
        losses[j] = sq[j] / max(cnt, 1.0)
    if world > 1:
        torch.distributed.all_reduce(losses)
    net.train(was_training)
    return [float(v) for v in losses]
