"""Speed of the exact search on 10^8 architectures, and a brute-force sanity ratio.

Setup: the standard space's real op signatures and parameter counts; 100 random candidates per
block x 4 blocks = 10^8 architectures. Losses and latencies are SYNTHETIC (plausible, not
measured): latency = per-op overhead + FLOPs / 30 GFLOP/s with a fixed random +-25% jitter per
(op, hidden); loss ~ 1/log(params) + noise. They exercise the algorithm's speed only.

    python benchmarks/bench_search.py [--queries 40]
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import time

import numpy as np
from rich.console import Console
from rich.table import Table

from nasbert_deploy.runtimes.timing import measure
from nasbert_deploy.search.problem import Budget, SearchProblem
from nasbert_deploy.space import STANDARD, BlockArch, SearchSpace
from nasbert_deploy.supernet.candidates import CandidateTable, block_params


class PlausibleLatency:
    """Synthetic latency model (benchmark only): overhead + FLOPs-proportional time, jittered per (op, hidden).

    `planes=2`: the latency is the maximum of that and a second plane (1.4 x parts + 2 ms per million
    weights - 6 ms), like a table with a cache step: the search then carries two latency columns.
    """

    def __init__(self, space: SearchSpace, seed: int = 0, planes: int = 1) -> None:
        rng = random.Random(seed)
        self.space, self.planes = space, planes
        self.jitter = {(op.name, h): rng.uniform(0.75, 1.25) for op in space.layer_ops for h in space.hidden_sizes}

    def n_planes(self, batch: int, seq_len: int) -> int:
        return self.planes

    def block_ms(self, block: BlockArch, batch: int, seq_len: int, plane: int = 0) -> float:
        sp = self.space
        ms = sum(
            (0.02 + sp.op_flops(op, block.hidden, seq_len) * batch / 30e9) * self.jitter[(op.name, block.hidden)]
            for op in block.ops
            if not op.is_identity
        )
        weights = sum(sp.op_params(op, block.hidden) for op in block.ops if not op.is_identity) / 1e6
        return 1.4 * ms + 2.0 * weights if plane else ms

    def fixed_ms(self, hiddens: tuple[int, ...], batch: int, seq_len: int, plane: int = 0) -> float:
        sp = self.space
        macs = sp.embed_dim * hiddens[0] + sum(a * b for a, b in zip(hiddens, hiddens[1:])) + hiddens[-1] * sp.output_dim
        ms = 0.05 + 2 * macs * seq_len * batch / 30e9
        return 1.4 * ms + 2.0 * macs / 1e6 - 6.0 if plane else ms


def make_table(space: SearchSpace, per_block: int, seed: int = 0) -> CandidateTable:
    rng = random.Random(seed)
    losses = []
    for _ in range(space.num_blocks):
        d: dict[BlockArch, float] = {}
        while len(d) < per_block:
            b = space.random_block(rng)
            d[b] = max(0.0, 1.0 / math.log(block_params(space, b) + 10) + rng.gauss(0, 0.01))
        losses.append(d)
    return CandidateTable.from_losses(space, losses, {"synthetic": "benchmark only"})


def brute_force(problem: SearchProblem, budget: Budget) -> tuple[float, int]:
    """Least loss by enumerating every combination in Python (precomputed per-candidate costs); (loss, combos)."""
    s = problem.solver
    lim = budget.limits()
    best, n = math.inf, 0
    for idx in itertools.product(*(range(len(c)) for c in s.block_costs)):
        n += 1
        rows = [s.block_costs[i][j] for i, j in enumerate(idx)]
        f = s.fixed[tuple(s.block_hpos[i][j] for i, j in enumerate(idx))]
        lat = max(sum(r[c] for r in rows) + f[c] for c in problem.lat_cols)  # the largest plane
        params = sum(r[2] for r in rows) + f[2]
        mem = sum(r[3] for r in rows) + f[3] + max(max(r[4] for r in rows), f[4])
        if lat <= lim.latency_ms and (lim.params is None or params <= lim.params) and (
            lim.memory_bytes is None or mem <= lim.memory_bytes
        ):
            best = min(best, float(sum(r[0] for r in rows)))
    return best, n


def two_devices(table: CandidateTable, queries: int) -> Table:
    """One model for two devices: 10^8 architectures, two latency tables (the second with other op costs and two
    planes), one budget per device; the target is <= 50 ms per query."""
    lats = [PlausibleLatency(STANDARD, seed=0), PlausibleLatency(STANDARD, seed=1, planes=2)]
    t0 = time.perf_counter()
    problem = SearchProblem(table, lats, 1, 128, devices=["device-a", "device-b"])
    prepare_ms = (time.perf_counter() - t0) * 1e3
    fastest = [problem.minimum(f"latency:{d}") or 0.0 for d in range(2)]
    rng = np.random.default_rng(1)
    budgets = [(float(fastest[0] * x), float(fastest[1] * y)) for x, y in rng.uniform(1.05, 4.0, size=(queries, 2))]
    p_budgets = rng.uniform(6e6, 16e6, size=queries).astype(int)
    out = Table(title=f"two devices: exact search over {table.size():.0e} architectures, one latency budget per device "
                      f"(SYNTHETIC latencies), {queries} budgets each; target <= 50 ms")
    for c in ("query", "top k", "median ms", "p90 ms", "runs"):
        out.add_column(c, justify="left" if c == "query" else "right")
    out.add_row("prepare (price candidates on both tables)", "-", f"{prepare_ms:.1f}", "-", "1")
    kinds = {
        "latency on both": lambda i: Budget.per_device(budgets[i]),
        "latency on both + params": lambda i: Budget.per_device(budgets[i], int(p_budgets[i])),
    }
    for name, make in kinds.items():
        for k, cold in ((1, True), (1, False), (10, False)):
            it = itertools.cycle(range(queries))

            def query(make=make, k=k, cold=cold, it=it) -> None:
                if cold:
                    problem.solver.clear_cache()
                problem.search(make(next(it)), k, explain=False)

            tm = measure(query, warmup=2, runs=queries)
            out.add_row(f"{name}{' (cold: prunes first)' if cold else ''}", str(k), f"{tm.median_ms:.2f}", f"{tm.p90_ms:.2f}",
                        str(tm.runs))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--planes", type=int, default=1, choices=(1, 2), help="latency as the max of this many planes")
    args = ap.parse_args()
    console = Console()
    lat = PlausibleLatency(STANDARD, planes=args.planes)
    table = make_table(STANDARD, 100)
    t0 = time.perf_counter()
    problem = SearchProblem(table, lat, 1, 128)
    prepare_ms = (time.perf_counter() - t0) * 1e3
    fastest = problem.minimum("latency") or 0.0
    rng = np.random.default_rng(0)
    lat_budgets = fastest * rng.uniform(1.05, 4.0, size=args.queries)
    p_budgets = rng.uniform(6e6, 16e6, size=args.queries).astype(int)
    m_budgets = rng.uniform(25, 60, size=args.queries)
    kinds = {
        "latency": lambda i: Budget(float(lat_budgets[i])),
        "latency + params": lambda i: Budget(float(lat_budgets[i]), int(p_budgets[i])),
        "latency + params + memory": lambda i: Budget(float(lat_budgets[i]), int(p_budgets[i]), float(m_budgets[i])),
    }
    out = Table(title=f"exact search over {table.size():.0e} architectures (standard space, 100 candidates x 4 blocks, "
                      f"SYNTHETIC latencies, {args.planes} plane(s)), {args.queries} budgets each")
    for c in ("query", "top k", "median ms", "p90 ms", "runs"):
        out.add_column(c, justify="left" if c == "query" else "right")
    out.add_row("prepare (price candidates + fixed parts)", "-", f"{prepare_ms:.1f}", "-", "1")
    for name, make in kinds.items():
        for k, cold in ((1, True), (1, False), (10, True), (10, False)):
            it = itertools.cycle(range(args.queries))

            def query(make=make, k=k, cold=cold, it=it) -> None:
                if cold:
                    problem.solver.clear_cache()
                problem.search(make(next(it)), k, explain=False)

            tm = measure(query, warmup=2, runs=args.queries)
            label = f"{name}{' (cold: prunes first)' if cold else ''}"
            out.add_row(label, str(k), f"{tm.median_ms:.2f}", f"{tm.p90_ms:.2f}", str(tm.runs))
    it = itertools.cycle(range(args.queries))
    tm = measure(lambda: SearchProblem(table, lat, 1, 128).search(kinds["latency"](next(it)), 1, explain=False), runs=10)
    out.add_row("search() end to end: prepare + cold query (latency)", "1", f"{tm.median_ms:.2f}", f"{tm.p90_ms:.2f}", "10")
    it = itertools.cycle(range(args.queries))
    tm = measure(lambda: problem.search(kinds["latency + params"](next(it)), 1, explain=True), warmup=2, runs=args.queries)
    out.add_row("latency + params, with binding analysis", "1", f"{tm.median_ms:.2f}", f"{tm.p90_ms:.2f}", str(tm.runs))
    it = itertools.cycle(range(args.queries))
    tm = measure(lambda: problem.pareto_front(kinds["latency"](next(it))), warmup=1, runs=min(args.queries, 10))
    out.add_row("Pareto front (latency budget)", "-", f"{tm.median_ms:.2f}", f"{tm.p90_ms:.2f}", str(tm.runs))
    console.print(out)
    console.print(two_devices(table, args.queries))

    # brute-force sanity on a smaller table: same answer, and the time per combination
    small = SearchProblem(make_table(STANDARD, 12, seed=1), lat, 1, 128)
    budget = Budget(float((small.minimum("latency") or 0.0) * 2.0), 12_000_000)
    t0 = time.perf_counter()
    brute, n = brute_force(small, budget)
    brute_s = time.perf_counter() - t0
    small.solver.clear_cache()
    t0 = time.perf_counter()
    exact = small.search(budget, 1, explain=False).best[0].loss
    exact_ms = (time.perf_counter() - t0) * 1e3
    assert abs(exact - brute) <= 1e-12, (exact, brute)
    ratio = Table(title="brute-force sanity (12 candidates x 4 blocks, latency + params budget)")
    for c in ("method", "combinations", "time", "same answer"):
        ratio.add_column(c, justify="right")
    ratio.add_row("brute force (Python, precomputed costs)", f"{n:,}", f"{brute_s * 1e3:.0f} ms", "-")
    ratio.add_row("exact search (cold)", f"{n:,}", f"{exact_ms:.2f} ms", "yes" if exact == brute else "no")
    ratio.add_row("brute force extrapolated to 10^8", f"{10**8:,}", f"{brute_s / n * 1e8 / 60:.0f} min", "-")
    console.print(ratio)
    console.print(f"speed-up at 12^4: {brute_s * 1e3 / exact_ms:.0f}x")


if __name__ == "__main__":
    main()
