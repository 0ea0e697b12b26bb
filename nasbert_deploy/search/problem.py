"""Exact budgeted search over a candidate table with a device latency table (NAS-BERT section 3.3).

A network's loss is the sum of its blocks' candidate losses; its latency is the sum of its blocks'
latencies plus the fixed parts (embedding, boundaries, head) from the device's latency table. The
search returns the architecture of least loss under every budget -- exactly, not heuristically (see
`search_core` for how) -- the top k, which constraint binds, and the (latency, loss) Pareto front.

    from nasbert_deploy.search.problem import search
    result = search(candidates, latency_table, batch=1, seq_len=128, max_latency_ms=5.0, max_params=10_000_000)
    result.best[0].arch, result.best[0].latency_ms, result.binding

The latency table needs only three methods (`LatencyModel`), so tests can pass their own. A table whose
correction is the maximum of several planes (`latency_fit`) is searched exactly: one latency column per plane.

One model for several devices: pass one latency table per device and one latency budget per device
(`Budget.per_device`); the answer is the exact least-loss architecture within every device's budget
(one group of latency columns per device in the solver). Latencies reported first are the first device's.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from nasbert_deploy.errors import InfeasibleBudgetError
from nasbert_deploy.model.memory import (
    MIB,
    PRECISIONS,
    MemoryEstimate,
    block_activation_bytes,
    block_weight_bytes,
    fixed_activation_bytes,
    fixed_weight_bytes,
)
from nasbert_deploy.search.solver import ACT, LAT, LOSS, NCOLS, PARAMS, WB, Limits, Solver
from nasbert_deploy.space import Arch, BlockArch, format_params
from nasbert_deploy.supernet.candidates import CandidateTable


class LatencyModel(Protocol):
    """What the search needs from a device latency table (`latency.LatencyTable` provides it)."""

    def n_planes(self, batch: int, seq_len: int) -> int:
        """How many planes the latency is the maximum of (1 for an additive model)."""
        ...

    def block_ms(self, block: BlockArch, batch: int, seq_len: int, plane: int = 0) -> float:
        """Latency of one block's layers in ms under one plane (corrections applied)."""
        ...

    def fixed_ms(self, hiddens: tuple[int, ...], batch: int, seq_len: int, plane: int = 0) -> float:
        """Latency of embedding(h1) + boundaries + head (+ correction offset) in ms under one plane."""
        ...


@dataclass(frozen=True)
class Budget:
    """Budgets: latency in ms (on the first device; `other_latency_ms` on the second, third, ... device, in
    order), parameters (embeddings included), memory in MiB (None = no limit)."""

    max_latency_ms: float
    max_params: int | None = None
    max_memory_mb: float | None = None
    other_latency_ms: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        lats = tuple(("--max-latency-ms", v) for v in self.latencies_ms)
        for flag, v in (*lats, ("--max-params", self.max_params), ("--max-memory-mb", self.max_memory_mb)):
            if v is not None and (isinstance(v, bool) or not math.isfinite(v) or v <= 0):
                raise InfeasibleBudgetError(f"{flag} must be a positive number, got {v}")

    @classmethod
    def per_device(cls, latencies_ms: tuple[float, ...] | list[float], max_params: int | None = None,
                   max_memory_mb: float | None = None) -> Budget:
        """One latency budget (ms) per device, in the devices' order."""
        if not latencies_ms:
            raise InfeasibleBudgetError("a budget needs at least one --max-latency-ms")
        return cls(latencies_ms[0], max_params, max_memory_mb, tuple(latencies_ms[1:]))

    @property
    def latencies_ms(self) -> tuple[float, ...]:
        return (self.max_latency_ms, *self.other_latency_ms)

    def limits(self) -> Limits:
        mem = None if self.max_memory_mb is None else self.max_memory_mb * MIB
        lat = self.latencies_ms if self.other_latency_ms else self.max_latency_ms
        return Limits(lat, None if self.max_params is None else float(self.max_params), mem)

    def flags(self) -> str:
        parts = [f"--max-latency-ms {v:g}" for v in self.latencies_ms]
        if self.max_params is not None:
            parts.append(f"--max-params {format_params(self.max_params)}")
        if self.max_memory_mb is not None:
            parts.append(f"--max-memory-mb {self.max_memory_mb:g}")
        return " ".join(parts)


@dataclass(frozen=True)
class ScoredArch:
    """One architecture with its predicted costs: loss (sum of block losses), latency (ms), params, memory (MiB)."""

    arch: Arch
    loss: float
    block_losses: tuple[float, ...]
    latency_ms: float
    block_ms: tuple[float, ...]
    fixed_ms: float
    params: int
    memory: MemoryEstimate
    latencies_ms: tuple[float, ...] = ()  # on every device, in order (the first is `latency_ms`)

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": str(self.arch),
            "loss": self.loss,
            "block_losses": list(self.block_losses),
            "latency_ms": self.latency_ms,
            "latencies_ms": list(self.latencies_ms or (self.latency_ms,)),
            "block_ms": list(self.block_ms),
            "fixed_ms": self.fixed_ms,
            "params": self.params,
            "memory_mb": self.memory.total_mb,
            "weights_mb": self.memory.weights_mb,
            "activations_mb": self.memory.activations_mb,
        }


@dataclass
class SearchResult:
    """The top-k architectures (least loss first), the budget, and which constraints bind."""

    best: list[ScoredArch]
    budget: Budget
    batch: int
    seq_len: int
    precision: str
    searched: int
    elapsed_ms: float
    binding: dict[str, float] = field(default_factory=dict)
    devices: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "devices": list(self.devices),
            "budget": {
                "max_latency_ms": self.budget.max_latency_ms,
                "max_latencies_ms": list(self.budget.latencies_ms),
                "max_params": self.budget.max_params,
                "max_memory_mb": self.budget.max_memory_mb,
            },
            "batch": self.batch,
            "seq_len": self.seq_len,
            "precision": self.precision,
            "architectures_searched": self.searched,
            "elapsed_ms": self.elapsed_ms,
            "binding": self.binding,
            "best": [s.to_dict() for s in self.best],
        }


class SearchProblem:
    """A candidate table priced on one latency table per device at one (batch, seq_len, precision); answers many
    budgets. `devices` names the tables (for messages); memory is priced at `precision`."""

    def __init__(
        self,
        candidates: CandidateTable,
        table: LatencyModel | Sequence[LatencyModel],
        batch: int = 1,
        seq_len: int = 128,
        precision: str = "fp32",
        devices: Sequence[str] | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise InfeasibleBudgetError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
        if batch < 1 or seq_len < 1:
            raise InfeasibleBudgetError(f"batch and seq_len must be >= 1, got batch {batch}, seq {seq_len}")
        sp = candidates.space
        if seq_len > sp.max_positions:
            raise InfeasibleBudgetError(f"seq_len {seq_len} exceeds the space's {sp.max_positions} positions")
        self.candidates, self.space = candidates, sp
        self.batch, self.seq_len, self.precision = batch, seq_len, precision
        self.hiddens = [sorted({c.block.hidden for c in cands}) for cands in candidates.blocks]
        tables = list(table) if isinstance(table, Sequence) else [table]
        if not tables:
            raise InfeasibleBudgetError("a search needs at least one device latency table")
        self.devices = tuple(devices) if devices else tuple(f"device {i + 1}" for i in range(len(tables)))
        if len(self.devices) != len(tables):
            raise InfeasibleBudgetError(f"{len(self.devices)} device names for {len(tables)} latency tables")
        groups, col = [], NCOLS
        for d, t in enumerate(tables):
            n = t.n_planes(batch, seq_len)
            groups.append(((LAT,) if d == 0 else ()) + tuple(range(col, col + n - (d == 0))))
            col += n - (d == 0)
        self.lat_groups: tuple[tuple[int, ...], ...] = tuple(groups)
        self.lat_cols = self.lat_groups[0]  # the first device's
        pairs = [(t, p, c) for t, g in zip(tables, self.lat_groups) for p, c in enumerate(g)]
        costs, hpos = [], []
        for i, cands in enumerate(candidates.blocks):
            c = np.empty((len(cands), col))
            for j, cand in enumerate(cands):
                b = cand.block
                c[j, :NCOLS] = (
                    cand.loss,
                    0.0,
                    cand.params,
                    block_weight_bytes(sp, b, precision),
                    block_activation_bytes(sp, b, batch, seq_len, precision),
                )
                for t, p, lc in pairs:
                    c[j, lc] = t.block_ms(b, batch, seq_len, p)
            costs.append(c)
            hpos.append(np.array([self.hiddens[i].index(cand.block.hidden) for cand in cands], dtype=np.int64))
        fixed = np.zeros(tuple(len(h) for h in self.hiddens) + (col,))
        for pos in itertools.product(*(range(len(h)) for h in self.hiddens)):
            hs = tuple(self.hiddens[i][p] for i, p in enumerate(pos))
            fixed[pos][:NCOLS] = (
                0.0,
                0.0,
                self._fixed_params(hs),
                fixed_weight_bytes(sp, hs, precision),
                fixed_activation_bytes(sp, hs, batch, seq_len, precision),
            )
            for t, p, lc in pairs:
                fixed[pos][lc] = t.fixed_ms(hs, batch, seq_len, p)
        self.solver = Solver(costs, hpos, fixed, self.lat_groups)

    def _fixed_params(self, hs: tuple[int, ...]) -> int:
        sp = self.space
        return sp.embedding_params(hs[0]) + sum(sp.boundary_params(a, b) for a, b in zip(hs, hs[1:])) + sp.head_params(hs[-1])

    # ---------------------------------------------------------------- scoring
    def score(self, indices: tuple[int, ...]) -> ScoredArch:
        """Costs of the architecture made of candidate `indices[i]` of each block."""
        rows = [self.solver.block_costs[i][j] for i, j in enumerate(indices)]
        arch = Arch(tuple(self.candidates.blocks[i][j].block for i, j in enumerate(indices)))
        pos = tuple(self.hiddens[i].index(h) for i, h in enumerate(arch.hiddens))
        f = self.solver.fixed[pos]
        # the latency is the largest plane; its breakdown is that plane's
        col = max(self.lat_cols, key=lambda c: sum(r[c] for r in rows) + f[c])
        block_ms = tuple(float(r[col]) for r in rows)
        weights = sum(r[WB] for r in rows) + f[WB]
        act = max(max(r[ACT] for r in rows), f[ACT])
        lats = tuple(float(max(sum(r[c] for r in rows) + f[c] for c in g)) for g in self.lat_groups)
        return ScoredArch(
            arch=arch,
            loss=float(sum(r[LOSS] for r in rows)),
            block_losses=tuple(float(r[LOSS]) for r in rows),
            latency_ms=float(sum(block_ms) + f[col]),
            block_ms=block_ms,
            fixed_ms=float(f[col]),
            params=int(sum(r[PARAMS] for r in rows) + f[PARAMS]),
            memory=MemoryEstimate(float(weights) / MIB, float(act) / MIB),
            latencies_ms=lats,
        )

    # ---------------------------------------------------------------- queries
    def search(self, budget: Budget, top_k: int = 1, explain: bool = True) -> SearchResult:
        """The `top_k` least-loss architectures under `budget`; `InfeasibleBudgetError` if there is none."""
        if top_k < 1:
            raise InfeasibleBudgetError(f"top_k must be >= 1, got {top_k}")
        self._check_devices(budget)
        t0 = time.perf_counter()
        found = self.solver.best(budget.limits(), "loss", top_k)
        if not found:
            raise InfeasibleBudgetError(self.diagnose(budget))
        best = [self.score(idx) for _, idx in found]
        elapsed = (time.perf_counter() - t0) * 1e3
        binding = self.binding(budget, best[0].loss) if explain else {}
        return SearchResult(best, budget, self.batch, self.seq_len, self.precision, self.candidates.size(), elapsed, binding,
                            self.devices)

    def _check_devices(self, budget: Budget) -> None:
        n, m = len(budget.latencies_ms), len(self.devices)
        if n != m:
            raise InfeasibleBudgetError(
                f"{n} latency budget(s) for {m} device(s) ({', '.join(self.devices)}): give one --max-latency-ms per --device, "
                "in the same order"
            )

    def binding(self, budget: Budget, best_loss: float) -> dict[str, float]:
        """Constraints that bind: {name: least loss without that constraint}, for each one whose removal lowers the loss
        ('latency', or 'latency on NAME' per device with several devices; 'params', 'memory')."""
        from nasbert_deploy.search.explain import binding

        return binding(self, budget, best_loss)

    def minimum(self, what: str, lim: Limits | None = None) -> float | None:
        """Least latency_ms (`what` 'latency' on the first device, 'latency:d' on device d) / params / memory (bytes)
        over all architectures within `lim` (None if none fits)."""
        found = self.solver.best(lim or Limits(), what, 1)
        return found[0][0] if found else None

    def diagnose(self, budget: Budget) -> str:
        """Explain an infeasible budget: the binding constraint(s) and the smallest feasible value, computed exactly."""
        from nasbert_deploy.search.explain import diagnose

        return diagnose(self, budget)

    def pareto_front(self, budget: Budget) -> list[ScoredArch]:
        """Exact (latency, loss) Pareto front of the architectures within `budget`, fastest first."""
        return [self.score(idx) for _, _, idx in self.solver.front(budget.limits())]

    def sample(self, budget: Budget, n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(latency_ms, loss) of the feasible ones among `n` uniformly random architectures (for plots)."""
        s = self.solver.sample(budget.limits(), n, seed)
        return self.solver.latency(s.T), s[:, LOSS]


def search(
    candidates: CandidateTable,
    table: LatencyModel,
    batch: int,
    seq_len: int,
    max_latency_ms: float,
    max_params: int | None = None,
    max_memory_mb: float | None = None,
    top_k: int = 1,
    precision: str = "fp32",
) -> SearchResult:
    """The exact `top_k` least-loss architectures within the budgets (latency in ms, memory in MiB)."""
    budget = Budget(max_latency_ms, max_params, max_memory_mb)
    return SearchProblem(candidates, table, batch, seq_len, precision).search(budget, top_k)


def pareto_front(
    candidates: CandidateTable,
    table: LatencyModel,
    batch: int,
    seq_len: int,
    max_latency_ms: float,
    max_params: int | None = None,
    max_memory_mb: float | None = None,
    precision: str = "fp32",
) -> list[ScoredArch]:
    """The exact (latency, loss) Pareto front of the feasible architectures, fastest first."""
    budget = Budget(max_latency_ms, max_params, max_memory_mb)
    return SearchProblem(candidates, table, batch, seq_len, precision).pareto_front(budget)
