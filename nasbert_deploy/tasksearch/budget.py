"""The hard budget of the task search: latency from the device's latency table (the lookup `search` and `export`
use, `LatencyTable.predict`) and parameters, checked for every proposal, and checked for feasibility before any work.

Feasibility is decided exactly, with the project's solver (`search.problem.SearchProblem`) over every block of the
space at loss 0: an impossible budget is an `InfeasibleBudgetError` naming the binding constraint and the smallest
feasible value, and the fastest architecture within the parameter budget is the controllers' fallback proposal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nasbert_deploy.errors import InfeasibleBudgetError
from nasbert_deploy.search.problem import Budget, SearchProblem
from nasbert_deploy.search.solver import Limits
from nasbert_deploy.space import IDENTITY, Arch, BlockArch, SearchSpace
from nasbert_deploy.supernet.candidates import CandidateTable


@dataclass
class Costs:
    """Predicted latency (ms, at the search's batch and sequence length) and parameters of one architecture."""

    latency_ms: float
    params: int


class AdditiveTable:
    """A latency table (`search.problem.LatencyModel`) at one (batch, seq_len) with every lookup memoised: a block's
    latency under a plane is the sum of its operations' terms (as `LatencyTable.block_ms` computes it: scale * part +
    ms/Mparam * weights, identities free), so the whole space costs one table lookup per (op, hidden, plane) instead
    of one per block (`LatencyTable.block_ms` re-derives the table's points on every call)."""

    def __init__(self, table: Any, space: SearchSpace, batch: int, seq_len: int) -> None:
        self.table, self.space, self.batch, self.seq_len = table, space, batch, seq_len
        self.planes = table.n_planes(batch, seq_len)
        pad = (IDENTITY,) * (space.layers_per_block - 1)
        self.terms = {(op, h, p): table.block_ms(BlockArch(h, (op, *pad)), batch, seq_len, p)
                      for op in space.layer_ops for h in space.hidden_sizes for p in range(self.planes)}
        self._fixed: dict[tuple[tuple[int, ...], int], float] = {}

    def n_planes(self, batch: int, seq_len: int) -> int:
        return self.planes

    def block_ms(self, block: BlockArch, batch: int, seq_len: int, plane: int = 0) -> float:
        return sum(self.terms[(op, block.hidden, plane)] for op in block.ops if not op.is_identity)

    def fixed_ms(self, hiddens: tuple[int, ...], batch: int, seq_len: int, plane: int = 0) -> float:
        key = (tuple(hiddens), plane)
        if key not in self._fixed:
            self._fixed[key] = float(self.table.fixed_ms(tuple(hiddens), self.batch, self.seq_len, plane))
        return self._fixed[key]

    def total_ms(self, arch: Arch) -> float:
        """The whole model's latency: the largest plane (as `LatencyTable.predict(...).total_ms`)."""
        return max(sum(self.block_ms(b, self.batch, self.seq_len, p) for b in arch.blocks)
                   + self.fixed_ms(arch.hiddens, self.batch, self.seq_len, p) for p in range(self.planes))


class BudgetCheck:
    """`fits(arch)` and `costs(arch)` under `budget` on `table` at (`batch`, `seq_len`); memoised. `table`: a
    `search.problem.LatencyModel` (a `LatencyTable`; its `predict` gives the same total)."""

    def __init__(self, space: SearchSpace, table: Any, budget: Budget, batch: int = 1, seq_len: int = 128) -> None:
        self.space, self.table, self.budget = space, table, budget
        self.batch, self.seq_len = batch, seq_len
        self.lookup = AdditiveTable(table, space, batch, seq_len)
        self._memo: dict[str, Costs] = {}

    def costs(self, arch: Arch) -> Costs:
        key = str(arch)
        if key not in self._memo:
            self._memo[key] = Costs(float(self.lookup.total_ms(arch)), self.space.params(arch))
        return self._memo[key]

    def fits(self, arch: Arch) -> bool:
        c = self.costs(arch)
        b = self.budget
        return c.latency_ms <= b.max_latency_ms and (b.max_params is None or c.params <= b.max_params)

    def fastest(self) -> Arch:
        """The fastest architecture within the parameter budget; `InfeasibleBudgetError` (naming the smallest
        feasible latency / parameter count) if no architecture meets the budget."""
        problem = all_blocks_problem(self.space, self.lookup, self.batch, self.seq_len)
        problem.search(self.budget, 1, explain=False)  # raises with the exact diagnosis when nothing fits
        found = problem.solver.best(Limits(None, None if self.budget.max_params is None else float(self.budget.max_params)),
                                    "latency", 1)
        if not found:  # pragma: no cover - search() above found one
            raise InfeasibleBudgetError(problem.diagnose(self.budget))
        arch = problem.score(found[0][1]).arch
        if not self.fits(arch):  # the solver's sum and the table's prediction agree; guard the fallback anyway
            raise InfeasibleBudgetError(f"no architecture within {self.budget.flags()}: the fastest, {arch}, takes "
                                        f"{self.costs(arch).latency_ms:.3f} ms")
        return arch


def all_blocks_problem(space: SearchSpace, table: Any, batch: int, seq_len: int) -> SearchProblem:
    """The exact search problem over every block of `space` (loss 0 each): for feasibility and the fastest arch."""
    losses = [{b: 0.0 for b in space.enumerate_blocks()} for _ in range(space.num_blocks)]
    return SearchProblem(CandidateTable.from_losses(space, losses, {"kind": "all blocks, loss 0"}), table, batch, seq_len)
