"""Shared test helpers: a synthetic latency model and an independent brute-force search.

Synthetic latencies are fine in tests of the algorithm; they never ship as a default. Values are
multiples of 1/64 so that float sums are exact whatever the order of addition.
"""

from __future__ import annotations

import itertools
import random

from nasbert_deploy.model.memory import MIB, peak_activation_bytes, weight_bytes
from nasbert_deploy.space import Arch, BlockArch, SearchSpace
from nasbert_deploy.supernet.candidates import CandidateTable


class SyntheticLatency:
    """Per-(op, hidden) and per-fixed-part random latencies (ms), multiples of 1/64.

    `planes=2`: the latency is the maximum of two planes, like a table whose correction has a cache step:
    the second plane doubles every part and subtracts `offset2` (set it to a typical model's latency).
    """

    def __init__(self, space: SearchSpace, seed: int = 0, planes: int = 1) -> None:
        rng = random.Random(seed)
        self.planes = planes
        self.offset2 = round(64 * 0.35 * space.num_blocks * space.layers_per_block) / 64
        self.op = {(op.name, h): rng.randint(1, 64) / 64 for op in space.all_ops for h in space.hidden_sizes}
        for h in space.hidden_sizes:
            self.op[("id", h)] = 0.0
        self.embed = {h: rng.randint(1, 32) / 64 for h in space.hidden_sizes}
        self.boundary = {(a, b): rng.randint(0, 16) / 64 for a in space.hidden_sizes for b in space.hidden_sizes}
        self.head = {h: rng.randint(1, 16) / 64 for h in space.hidden_sizes}

    def n_planes(self, batch: int, seq_len: int) -> int:
        return self.planes

    def block_ms(self, block: BlockArch, batch: int, seq_len: int, plane: int = 0) -> float:
        return sum(self.op[(o.name, block.hidden)] for o in block.ops) * batch * (1 + plane)

    def fixed_ms(self, hiddens: tuple[int, ...], batch: int, seq_len: int, plane: int = 0) -> float:
        parts = self.embed[hiddens[0]] + sum(self.boundary[(a, b)] for a, b in zip(hiddens, hiddens[1:])) + self.head[hiddens[-1]]
        return parts * batch * (1 + plane) - (self.offset2 * batch if plane else 0.0)


def random_table(space: SearchSpace, per_block: int, seed: int, loss_levels: int = 16) -> CandidateTable:
    """`per_block` distinct random blocks per block index; losses on a coarse grid so ties occur."""
    rng = random.Random(seed)
    pool = list(space.enumerate_blocks())
    losses = []
    for _ in range(space.num_blocks):
        chosen = rng.sample(pool, min(per_block, len(pool)))
        losses.append({b: rng.randint(0, loss_levels) / 16 for b in chosen})
    return CandidateTable.from_losses(space, losses, {"synthetic": True})


def brute_force(table: CandidateTable, lat: SyntheticLatency, batch: int, seq_len: int, precision: str = "fp32") -> list[dict]:
    """Every architecture with loss, latency_ms, params and memory_bytes, computed from the space directly."""
    sp = table.space
    out = []
    for combo in itertools.product(*table.blocks):
        arch = Arch(tuple(c.block for c in combo))
        ms = max(  # the largest plane (one plane: the plain sum)
            sum(lat.block_ms(c.block, batch, seq_len, p) for c in combo) + lat.fixed_ms(arch.hiddens, batch, seq_len, p)
            for p in range(lat.n_planes(batch, seq_len))
        )
        mem = weight_bytes(sp, arch, precision) + peak_activation_bytes(sp, arch, batch, seq_len, precision)
        out.append({"arch": arch, "loss": sum(c.loss for c in combo), "latency_ms": ms, "params": sp.params(arch), "memory": mem})
    return out


def feasible(
    rows: list[dict], max_latency_ms: float, max_params: int | None = None, max_memory_mb: float | None = None
) -> list[dict]:
    return [
        r
        for r in rows
        if r["latency_ms"] <= max_latency_ms
        and (max_params is None or r["params"] <= max_params)
        and (max_memory_mb is None or r["memory"] <= max_memory_mb * MIB)
    ]


def brute_force_devices(table: CandidateTable, lats: list[SyntheticLatency], batch: int, seq_len: int) -> list[dict]:
    """`brute_force` with one latency model per device: each row also has `latencies_ms`, one per device in order."""
    per_device = [brute_force(table, lat, batch, seq_len) for lat in lats]
    rows = per_device[0]
    for i, r in enumerate(rows):
        r["latencies_ms"] = [d[i]["latency_ms"] for d in per_device]
    return rows
