"""The exact solver behind `search`: grouped meet-in-the-middle with Pareto pruning and bounds.

Every architecture's costs decompose as (NAS-BERT 3.3, and `memory.py`):

    loss    = sum of block losses
    latency = max over planes p of (sum of block latencies_p + fixed_p(hiddens))   (see `latency_fit`)
    params  = sum of block params    + fixed(hiddens)
    memory  = sum of block weight bytes + fixed(hiddens) + max(block activations, fixed activations)

With one plane the latency is additive; with several (a table whose correction is a maximum of planes)
each plane is one more additive column, and `latency <= L` is every plane's column `<= L`; the latency
as an objective is the maximum of the columns (and its bounds the maximum of the columns' bounds).
Several devices are several groups of latency columns (`lat_groups`), each with its own limit:
`Limits(latency_ms=(L1, L2))` asks every column of device d to stay `<= Ld`; objective `latency` is the
first device's, `latency:d` device d's.
The fixed parts depend only on the tuple of hidden sizes, so the solver works per hidden tuple:

1. Per block and hidden size, drop candidates that `k` others beat or tie on every active
   dimension (objective and constrained costs): swapping in any of those keeps an architecture
   feasible and no worse, so the k best values survive (ties break by index, so the order is strict).
2. Blocks are split into a left and a right half; each half's combinations are built per hidden
   tuple of that half and pruned the same way (the activation column combines by `max`).
3. Every (left group, right group) pair gets lower bounds on every cost from the groups' minima
   plus the exact fixed cost; pairs are visited in order of their objective bound, infeasible ones
   skipped, and the visit stops once the bound exceeds the k-th best found. Inside a pair the
   left x right matrix is evaluated exactly with numpy.

Nothing is approximated: pruning and bounds only drop architectures that provably cannot enter
the answer. Every loop runs over finite, precomputed lists.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

LOSS, LAT, PARAMS, WB, ACT = range(5)
NCOLS = 5  # base columns; a latency model with P planes adds P - 1 more latency columns after them
OBJECTIVE_COLS = {"loss": (LOSS,), "latency": (LAT,), "params": (PARAMS,), "memory": (WB, ACT)}
_PRUNE_CHUNK = 256
_CHUNK_ELEMS = 1 << 18  # left x right pairs evaluated per numpy step (~10 MB of float64 totals)


@dataclass(frozen=True)
class Limits:
    """Upper bounds on the costs (None = unconstrained): latency in ms (one number for every device, or one per
    device in the solver's `lat_groups` order, None where unconstrained), params, memory in bytes."""

    latency_ms: float | tuple[float | None, ...] | None = None
    params: float | None = None
    memory_bytes: float | None = None

    def latencies(self, n: int) -> tuple[float | None, ...]:
        """The latency limit of each of `n` devices."""
        if isinstance(self.latency_ms, tuple):
            if len(self.latency_ms) != n:
                raise ValueError(f"{len(self.latency_ms)} latency limits for {n} devices")
            return self.latency_ms
        return (self.latency_ms,) * n

    def cols(self) -> tuple[int, ...]:
        c: list[int] = []
        lat = self.latency_ms if isinstance(self.latency_ms, tuple) else (self.latency_ms,)
        if any(v is not None for v in lat):
            c.append(LAT)
        if self.params is not None:
            c.append(PARAMS)
        if self.memory_bytes is not None:
            c += [WB, ACT]
        return tuple(c)


@dataclass
class Half:
    """Pruned combinations of one half of the blocks, all hidden tuples together.

    `costs` (n, ncols); `group` (n,) the hidden tuple's position in product order; `index` (n, blocks in
    the half) candidate index per block; `gmins` (groups, ncols) per-group column minima.
    """

    costs: np.ndarray
    group: np.ndarray
    index: np.ndarray
    ngroups: int
    gmins: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.gmins = np.full((self.ngroups, self.costs.shape[1]), np.inf)
        np.minimum.at(self.gmins, self.group, self.costs)


def prune(costs: np.ndarray, cols: tuple[int, ...], k: int) -> np.ndarray:
    """Indices (ascending) of rows that fewer than `k` other rows dominate on `cols` (all <=, ties by row order)."""
    n = len(costs)
    if n <= k:
        return np.arange(n)
    x = costs[:, cols]  # (n, d)
    if len(cols) == 1:
        order = np.lexsort((np.arange(n), x[:, 0]))
        return np.sort(order[:k])
    if len(cols) == 2 and k == 1:
        # staircase: sorted by (a, b, row), a row survives iff its b is below every earlier row's b
        order = np.lexsort((np.arange(n), x[:, 1], x[:, 0]))
        b = x[order, 1]
        prev_min = np.minimum.accumulate(np.concatenate(([np.inf], b[:-1])))
        return np.sort(order[b < prev_min])
    # Sorted lexicographically (row number last), every dominator of a row comes before it, and an
    # earlier row that is <= everywhere is a dominator (strictly better somewhere, or an equal row
    # with a smaller number): so each row is compared with the rows before it only.
    order = np.lexsort((np.arange(n), *(x[:, j] for j in reversed(range(len(cols))))))
    xs = x[order]
    keep = np.empty(n, dtype=bool)
    for s in range(0, n, _PRUNE_CHUNK):
        e = min(n, s + _PRUNE_CHUNK)
        dom = np.arange(e)[None, :] < np.arange(s, e)[:, None]  # (c, e): earlier rows only
        for j in range(len(cols)):
            dom &= xs[None, :e, j] <= xs[s:e, None, j]
        keep[s:e] = dom.sum(axis=1) < k
    return np.sort(order[keep])


def combine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """All sums of rows of a (n, c) and b (m, c), activation by max: (n*m, c), a-major."""
    c = a[:, None, :] + b[None, :, :]
    c[:, :, ACT] = np.maximum(a[:, None, ACT], b[None, :, ACT])
    return c.reshape(-1, a.shape[1])


class Solver:
    """Costs of every candidate (per block) and of the fixed parts (per hidden tuple), and the exact queries.

    `block_costs[i]`: (n_i, 5 + P - 1) float64 [loss, latency_ms, params, weight_bytes, activation_bytes,
    latency_ms under planes 2..P]; `block_hpos[i]`: (n_i,) position of each candidate's hidden size in that
    block's hidden list; `fixed`: (H_0, ..., H_{N-1}, 5 + P - 1) costs outside the blocks per hidden tuple
    (loss column 0). `lat_groups`: the latency columns of each device (default: one device, every latency
    column); the first group must start with LAT.
    """

    def __init__(
        self,
        block_costs: list[np.ndarray],
        block_hpos: list[np.ndarray],
        fixed: np.ndarray,
        lat_groups: tuple[tuple[int, ...], ...] | None = None,
    ) -> None:
        self.block_costs = block_costs
        self.block_hpos = block_hpos
        self.fixed = fixed
        self.nblocks = len(block_costs)
        self.nh = fixed.shape[:-1]
        self.ncols = fixed.shape[-1]
        self.lat_cols = (LAT,) + tuple(range(NCOLS, self.ncols))
        self.lat_groups = lat_groups or (self.lat_cols,)
        if sorted(c for g in self.lat_groups for c in g) != list(self.lat_cols) or self.lat_groups[0][0] != LAT:
            raise ValueError(f"latency groups {self.lat_groups} must partition the latency columns {self.lat_cols}")
        self.split = self.nblocks // 2
        self._cache: dict[tuple[tuple[int, ...], int], tuple[Half, Half, np.ndarray]] = {}

    # ---------------------------------------------------------------- pruned halves
    def _half(self, blocks: range, cols: tuple[int, ...], k: int) -> Half:
        if len(blocks) == 0:
            return Half(np.zeros((1, self.ncols)), np.zeros(1, dtype=np.int64), np.zeros((1, 0), dtype=np.int64), 1)
        per_block: list[list[tuple[np.ndarray, np.ndarray]]] = []
        for i in blocks:
            lists = []
            for p in range(self.nh[i]):
                idx = np.flatnonzero(self.block_hpos[i] == p)
                keep = prune(self.block_costs[i][idx], cols, k)
                lists.append((self.block_costs[i][idx[keep]], idx[keep][:, None]))
            per_block.append(lists)
        costs_l, group_l, index_l = [], [], []
        for g, hkey in enumerate(itertools.product(*(range(self.nh[i]) for i in blocks))):
            costs, index = per_block[0][hkey[0]]
            for j in range(1, len(blocks)):
                c2, i2 = per_block[j][hkey[j]]
                costs, index = combine(costs, c2), _pair_index(index, i2)
                keep = prune(costs, cols, k)
                costs, index = costs[keep], index[keep]
            costs_l.append(costs)
            index_l.append(index)
            group_l.append(np.full(len(costs), g, dtype=np.int64))
        return Half(np.concatenate(costs_l), np.concatenate(group_l), np.concatenate(index_l), len(costs_l))

    def clear_cache(self) -> None:
        """Forget the pruned halves (they are rebuilt on the next query)."""
        self._cache.clear()

    def halves(self, cols: tuple[int, ...], k: int) -> tuple[Half, Half, np.ndarray]:
        """Left and right halves pruned on `cols` keeping the k best, and each right row's costs plus the
        fixed part for every left group, column-major (ncols, left groups, right rows). Cached per (cols, k)."""
        key = (self._expand(cols), k)
        if key not in self._cache:
            a = self._half(range(0, self.split), key[0], k)
            b = self._half(range(self.split, self.nblocks), key[0], k)
            f2 = self.fixed.reshape(a.ngroups, b.ngroups, self.ncols)
            adj = self._add(b.costs[None, :, :], f2[:, b.group, :])  # (GA, nB, 5)
            self._cache[key] = (a, b, np.ascontiguousarray(adj.transpose(2, 0, 1)))
        return self._cache[key]

    # ---------------------------------------------------------------- evaluation helpers
    @staticmethod
    def _add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """a + b broadcast, with the ACT column combined by max (peak activation)."""
        t = a + b
        t[..., ACT] = np.maximum(a[..., ACT], b[..., ACT])
        return t

    def _expand(self, cols: tuple[int, ...]) -> tuple[int, ...]:
        """`cols` with LAT standing for every latency column, sorted and unique."""
        return tuple(sorted(set(cols) | (set(self.lat_cols) if LAT in cols else set())))

    def latency(self, t: np.ndarray, device: int = 0) -> np.ndarray:
        """Latency on `device` of column-major totals `t` (ncols, ...): its largest plane's column."""
        cols = self.lat_groups[device]
        return np.max(t[list(cols)], axis=0) if len(cols) > 1 else t[cols[0]]

    def _objective_cols(self, objective: str) -> tuple[int, ...]:
        """The columns an objective reads: 'loss', 'params', 'memory', 'latency' (first device) or 'latency:d'."""
        if objective.startswith("latency:"):
            return self.lat_groups[int(objective.split(":")[1])]
        return OBJECTIVE_COLS[objective]

    def _feasible(self, t: np.ndarray, lim: Limits) -> np.ndarray:
        """Feasibility of column-major totals `t` (ncols, ...): t[LAT] is the latency of each entry, etc."""
        ok = np.ones(t.shape[1:], dtype=bool)
        for cols, limit in zip(self.lat_groups, lim.latencies(len(self.lat_groups))):
            if limit is None:
                continue
            for c in cols:
                ok &= t[c] <= limit
        if lim.params is not None:
            ok &= t[PARAMS] <= lim.params
        if lim.memory_bytes is not None:
            ok &= t[WB] + t[ACT] <= lim.memory_bytes
        return ok

    def _objective(self, t: np.ndarray, objective: str) -> np.ndarray:
        """Objective of column-major totals `t` (ncols, ...)."""
        if objective == "memory":
            return t[WB] + t[ACT]
        if objective == "latency":
            return self.latency(t)
        if objective.startswith("latency:"):
            return self.latency(t, int(objective.split(":")[1]))
        return t[OBJECTIVE_COLS[objective][0]]

    def _candidates(self, a: Half, b: Half, lim: Limits, objective: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Left rows (sorted by their objective lower bound), those bounds, and right rows that may be feasible."""
        f2 = self.fixed.reshape(a.ngroups, b.ngroups, self.ncols)
        # cheapest possible completion of a left row of group g by any right row plus the fixed part, per column
        rest_a = self._add(b.gmins[None, :, :], f2).min(axis=1)  # (GA, 5)
        rest_b = self._add(a.gmins[:, None, :], f2).min(axis=0)  # (GB, 5)
        lb_a = self._add(a.costs, rest_a[a.group])
        lb_b = self._add(b.costs, rest_b[b.group])
        rows = np.flatnonzero(self._feasible(lb_a.T, lim))
        bound = self._objective(lb_a.T, objective)[rows]
        order = np.argsort(bound, kind="stable")
        return rows[order], bound[order], np.flatnonzero(self._feasible(lb_b.T, lim))

    def _chunks(
        self, a: Half, adj: np.ndarray, rows: np.ndarray, cols: np.ndarray, need: set[int]
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(start, left rows, exact totals (ncols, len(chunk), len(cols))) for bounded chunks of `rows`.

        Only the columns in `need` are filled. Chunks grow geometrically: the first rows (best
        bounds) often settle a query before the rest is evaluated.
        """
        adj_q = adj[:, :, cols]  # (ncols, GA, m): right rows plus the fixed part, per left group
        for s, e in _spans(len(rows), max(1, _CHUNK_ELEMS // max(1, len(cols)))):
            r = rows[s:e]
            g = a.group[r]
            t = np.empty((self.ncols, len(r), len(cols)))
            for c in need:
                if c == ACT:
                    t[c] = np.maximum(a.costs[r, ACT][:, None], adj_q[ACT][g])
                else:
                    t[c] = a.costs[r, c][:, None] + adj_q[c][g]
            yield s, r, t

    # ---------------------------------------------------------------- queries
    def best(self, lim: Limits, objective: str = "loss", k: int = 1) -> list[tuple[float, tuple[int, ...]]]:
        """The k smallest objective values under `lim` with their candidate index per block (sorted; [] if none)."""
        need = self._expand(self._objective_cols(objective) + lim.cols())
        a, b, adj = self.halves(need, k)
        rows, bounds, cols = self._candidates(a, b, lim, objective)
        if len(rows) == 0 or len(cols) == 0:
            return []
        vals = np.empty(0)
        picks: list[tuple[int, ...]] = []
        kth = math.inf
        for s, r, t in self._chunks(a, adj, rows, cols, set(need)):
            if bounds[s] > kth:
                break  # rows are sorted by bound: no later row can enter the k best
            obj = np.where(self._feasible(t, lim), self._objective(t, objective), np.inf).ravel()
            take = min(k, obj.size)
            sel = np.argpartition(obj, take - 1)[:take]
            sel = sel[(obj[sel] <= kth) & np.isfinite(obj[sel])]
            for q in sel.tolist():
                i, j = divmod(q, len(cols))
                picks.append(tuple(a.index[r[i]].tolist()) + tuple(b.index[cols[j]].tolist()))
            vals = np.concatenate([vals, obj[sel]])
            if len(vals) > k or (len(vals) == k and kth == math.inf):
                order = sorted(range(len(vals)), key=lambda z: (vals[z], picks[z]))[:k]
                vals, picks = vals[order], [picks[z] for z in order]
                kth = float(vals[-1]) if len(vals) == k else math.inf
        order = sorted(range(len(vals)), key=lambda z: (vals[z], picks[z]))[:k]
        return [(float(vals[z]), picks[z]) for z in order]

    def front(self, lim: Limits) -> list[tuple[float, float, tuple[int, ...]]]:
        """Exact Pareto front of (latency_ms, loss) over the feasible set: [(latency, loss, indices)], fastest first."""
        need = self._expand((LOSS, LAT) + lim.cols())
        a, b, adj = self.halves(need, 1)
        rows, _, cols = self._candidates(a, b, lim, "latency")
        pts = np.empty((0, 2))
        idx: list[tuple[int, ...]] = []
        for _, r, t in self._chunks(a, adj, rows, cols, set(need)):
            ok = np.flatnonzero(self._feasible(t, lim).ravel())
            flat = np.stack([self.latency(t).ravel()[ok], t[LOSS].ravel()[ok]], axis=1)
            keep = prune(flat, (0, 1), 1)
            for q in ok[keep].tolist():
                i, j = divmod(q, len(cols))
                idx.append(tuple(a.index[r[i]].tolist()) + tuple(b.index[cols[j]].tolist()))
            pts = np.concatenate([pts, flat[keep]])
            keep_all = prune(pts, (0, 1), 1)
            pts, idx = pts[keep_all], [idx[z] for z in keep_all.tolist()]
        order = np.lexsort((pts[:, 1], pts[:, 0])).tolist()
        return [(float(pts[z, 0]), float(pts[z, 1]), idx[z]) for z in order]

    def sample(self, lim: Limits, n: int, seed: int = 0) -> np.ndarray:
        """Costs (m, ncols) of the feasible ones among `n` uniformly random architectures (column ACT = peak)."""
        rng = np.random.default_rng(seed)
        picks = [rng.integers(0, len(c), size=n) for c in self.block_costs]
        tot = np.zeros((n, self.ncols))
        for i, p in enumerate(picks):
            tot = self._add(tot, self.block_costs[i][p])
        tot = self._add(tot, self.fixed[tuple(self.block_hpos[i][p] for i, p in enumerate(picks))])
        return tot[self._feasible(tot.T, lim)]


def _spans(n: int, largest: int, first: int = 16) -> Iterator[tuple[int, int]]:
    """[start, end) spans covering range(n), sizes first, 2*first, ... capped at `largest`."""
    s, size = 0, min(first, largest)
    while s < n:
        yield s, min(n, s + size)
        s += size
        size = min(2 * size, largest)


def _pair_index(index: np.ndarray, i2: np.ndarray) -> np.ndarray:
    """Index rows of `combine(a, b)`: each row of `index` followed by each row of `i2` (a-major)."""
    n, m = len(index), len(i2)
    return np.concatenate([np.repeat(index, m, axis=0), np.tile(i2, (n, 1))], axis=1)
