from __future__ import annotations

import random

import pytest
from search_helpers import SyntheticLatency, brute_force, feasible, random_table

from nasbert_deploy.errors import InfeasibleBudgetError
from nasbert_deploy.model.memory import MIB
from nasbert_deploy.search.problem import Budget, SearchProblem, pareto_front, search
from nasbert_deploy.space import TINY, SearchSpace, format_params


def _space(blocks: int) -> SearchSpace:
    return SearchSpace(
        name=f"t{blocks}", num_blocks=blocks, layers_per_block=2, hidden_sizes=(32, 64), conv_kernels=(3,), head_dim=16,
        embed_dim=16, output_dim=48, vocab_size=1000, max_positions=64,
    )


CASES = [(TINY, 8), (_space(1), 10), (_space(3), 6), (_space(4), 5)]


def _check_answer(prob, rows, budget, k):
    feas = feasible(rows, budget.max_latency_ms, budget.max_params, budget.max_memory_mb)
    if not feas:
        with pytest.raises(InfeasibleBudgetError):
            prob.search(budget, k)
        return None
    res = prob.search(budget, k)
    expected = sorted(r["loss"] for r in feas)[:k]
    assert [s.loss for s in res.best] == expected
    by_arch = {str(r["arch"]): r for r in feas}
    assert len({str(s.arch) for s in res.best}) == len(res.best)
    for s in res.best:
        r = by_arch[str(s.arch)]  # KeyError = an infeasible architecture was returned
        assert s.latency_ms == r["latency_ms"] and s.params == r["params"]
        assert s.memory.total_mb * MIB == pytest.approx(r["memory"], rel=1e-12)
        assert s.loss == pytest.approx(sum(s.block_losses))
        assert s.latency_ms == pytest.approx(sum(s.block_ms) + s.fixed_ms)
    return res


@pytest.mark.parametrize("space,per_block", CASES, ids=lambda c: getattr(c, "name", str(c)))
@pytest.mark.parametrize("seed", range(6))
def test_matches_brute_force(space, per_block, seed):
    table = random_table(space, per_block, seed)
    lat = SyntheticLatency(space, seed)
    rows = brute_force(table, lat, 2, 16)
    prob = SearchProblem(table, lat, 2, 16)
    rng = random.Random(seed)
    lat_max = max(r["latency_ms"] for r in rows)
    for _ in range(12):
        r = rng.choice(rows)  # budgets equal to some architecture's exact costs: every constraint can bind
        kind = rng.randrange(4)
        lat_b = r["latency_ms"] if kind in (0, 3) else lat_max
        params_b = r["params"] if kind in (1, 3) else rng.choice([None, 10**9])
        mem_b = r["memory"] / MIB if kind in (2, 3) else None
        _check_answer(prob, rows, Budget(lat_b, params_b, mem_b), rng.choice([1, 2, 3, 7]))


@pytest.mark.parametrize("space,per_block", CASES, ids=lambda c: getattr(c, "name", str(c)))
@pytest.mark.parametrize("seed", range(4))
def test_matches_brute_force_with_two_latency_planes(space, per_block, seed):
    """A latency that is the maximum of two planes (a table with a cache step) is searched exactly too."""
    table = random_table(space, per_block, seed)
    one = [r["latency_ms"] for r in brute_force(table, SyntheticLatency(space, seed), 1, 16)]
    lat = SyntheticLatency(space, seed, planes=2)
    lat.offset2 = sorted(one)[len(one) // 2]  # plane 2 (2 x parts - offset) decides the slower half
    rows = brute_force(table, lat, 1, 16)
    second = sum(r["latency_ms"] > x for r, x in zip(rows, one))
    assert 0 < second < len(rows)  # both planes decide some architectures
    prob = SearchProblem(table, lat, 1, 16)
    rng = random.Random(seed)
    for _ in range(12):
        r = rng.choice(rows)
        kind = rng.randrange(3)
        params_b = r["params"] if kind == 1 else None
        mem_b = r["memory"] / MIB if kind == 2 else None
        res = _check_answer(prob, rows, Budget(r["latency_ms"], params_b, mem_b), rng.choice([1, 3]))
        assert res is not None
    front = prob.pareto_front(Budget(max(r["latency_ms"] for r in rows)))
    expected, best = [], float("inf")
    for p in sorted({(r["latency_ms"], r["loss"]) for r in rows}):
        if p[1] < best:
            expected.append(p)
            best = p[1]
    assert [(s.latency_ms, s.loss) for s in front] == expected
    assert prob.minimum("latency") == min(r["latency_ms"] for r in rows)


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_matches_brute_force_other_precisions(precision):
    space = _space(3)
    table = random_table(space, 6, 11)
    lat = SyntheticLatency(space, 11)
    rows = brute_force(table, lat, 1, 32, precision)
    prob = SearchProblem(table, lat, 1, 32, precision)
    rng = random.Random(3)
    for _ in range(10):
        r = rng.choice(rows)
        _check_answer(prob, rows, Budget(r["latency_ms"], None, r["memory"] / MIB), 2)


def test_ties_everywhere():
    space = _space(4)
    table = random_table(space, 6, 5, loss_levels=1)  # losses only 0 or 1/16
    lat = SyntheticLatency(space, 5)
    rows = brute_force(table, lat, 1, 8)
    prob = SearchProblem(table, lat, 1, 8)
    med = sorted(r["latency_ms"] for r in rows)[len(rows) // 2]
    res = _check_answer(prob, rows, Budget(med), 10)
    assert res is not None and len(res.best) == 10


def test_bindings_name_the_constraint_that_costs_loss():
    space = _space(3)
    table = random_table(space, 6, 2)
    lat = SyntheticLatency(space, 2)
    rows = brute_force(table, lat, 1, 16)
    unconstrained = min(rows, key=lambda r: (r["loss"], r["latency_ms"]))
    best_loss = unconstrained["loss"]
    loose = max(r["latency_ms"] for r in rows)
    res = search(table, lat, 1, 16, loose)
    assert res.binding == {} and res.best[0].loss == best_loss
    tight = min(r["latency_ms"] for r in rows if r["loss"] == best_loss) - 1 / 64
    res = search(table, lat, 1, 16, tight)
    assert res.binding == {"latency": best_loss} and res.best[0].loss > best_loss
    small = min(r["params"] for r in rows if r["loss"] == best_loss) - 1
    res = search(table, lat, 1, 16, loose, max_params=small)
    assert set(res.binding) == {"params"}


def test_infeasible_latency_names_fastest():
    table = random_table(TINY, 8, 4)
    lat = SyntheticLatency(TINY, 4)
    rows = brute_force(table, lat, 1, 16)
    fastest = min(r["latency_ms"] for r in rows)
    with pytest.raises(InfeasibleBudgetError) as info:
        search(table, lat, 1, 16, fastest - 1 / 64)
    msg = str(info.value)
    assert f"the fastest takes {fastest:.3f} ms" in msg and "batch 1, seq 16" in msg
    assert search(table, lat, 1, 16, fastest).best[0].latency_ms == fastest


def test_infeasible_params_and_memory_alone():
    table = random_table(TINY, 8, 4)
    lat = SyntheticLatency(TINY, 4)
    rows = brute_force(table, lat, 1, 16)
    loose = max(r["latency_ms"] for r in rows)
    smallest = min(r["params"] for r in rows)
    with pytest.raises(InfeasibleBudgetError, match=f"the smallest has {format_params(smallest)}"):
        search(table, lat, 1, 16, loose, max_params=smallest - 1)
    least_mem = min(r["memory"] for r in rows) / MIB
    with pytest.raises(InfeasibleBudgetError, match=f"the smallest needs {least_mem:.2f} MB"):
        search(table, lat, 1, 16, loose, max_memory_mb=least_mem * 0.999)


def test_infeasible_jointly_names_fastest_under_other_budgets():
    space = _space(3)
    for seed in range(20):
        table = random_table(space, 6, seed)
        lat = SyntheticLatency(space, seed)
        rows = brute_force(table, lat, 1, 16)
        fastest = min(rows, key=lambda r: (r["latency_ms"], r["params"]))
        params_b = min(r["params"] for r in rows)
        under = [r for r in rows if r["params"] <= params_b]
        fastest_under = min(r["latency_ms"] for r in under)
        if fastest_under > fastest["latency_ms"]:
            break
    else:
        pytest.fail("no seed gives a joint conflict")
    with pytest.raises(InfeasibleBudgetError) as info:
        search(table, lat, 1, 16, fastest["latency_ms"], max_params=params_b)
    msg = str(info.value)
    assert f"the fastest takes {fastest['latency_ms']:.3f} ms" in msg
    assert f"with --max-params {format_params(params_b)} the fastest takes {fastest_under:.3f} ms" in msg


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf")])
def test_bad_budget_values(bad):
    with pytest.raises(InfeasibleBudgetError, match="must be a positive number"):
        Budget(bad)
    with pytest.raises(InfeasibleBudgetError, match="--max-memory-mb must be a positive"):
        Budget(1.0, None, bad)


@pytest.mark.parametrize("space,per_block", CASES[:3], ids=lambda c: getattr(c, "name", str(c)))
@pytest.mark.parametrize("seed", range(4))
def test_pareto_front_matches_brute_force(space, per_block, seed):
    table = random_table(space, per_block, seed)
    lat = SyntheticLatency(space, seed)
    rows = brute_force(table, lat, 1, 16)
    r = random.Random(seed).choice(rows)
    lat_b, params_b = max(x["latency_ms"] for x in rows) * 0.8, (None if seed % 2 else r["params"])
    feas = feasible(rows, lat_b, params_b)
    pts = sorted({(x["latency_ms"], x["loss"]) for x in feas})
    expected, best = [], float("inf")
    for p in pts:
        if p[1] < best:
            expected.append(p)
            best = p[1]
    front = pareto_front(table, lat, 1, 16, lat_b, max_params=params_b)
    assert [(s.latency_ms, s.loss) for s in front] == expected
    assert all(s.params <= (params_b or s.params) for s in front)


def test_sample_is_feasible():
    table = random_table(_space(3), 6, 1)
    lat = SyntheticLatency(_space(3), 1)
    rows = brute_force(table, lat, 1, 16)
    budget = Budget(sorted(r["latency_ms"] for r in rows)[len(rows) // 3])
    ms, loss = SearchProblem(table, lat, 1, 16).sample(budget, 500, seed=0)
    assert 0 < len(ms) < 500 and ms.max() <= budget.max_latency_ms
    assert set(zip(ms.tolist(), loss.tolist())) <= {(r["latency_ms"], r["loss"]) for r in rows}


def test_problem_arguments_are_checked():
    table = random_table(TINY, 4, 0)
    lat = SyntheticLatency(TINY, 0)
    with pytest.raises(InfeasibleBudgetError, match="valid: fp32, fp16, int8, int4"):
        SearchProblem(table, lat, 1, 16, "int2")
    with pytest.raises(InfeasibleBudgetError, match="exceeds the space's 64 positions"):
        SearchProblem(table, lat, 1, 65)
    with pytest.raises(InfeasibleBudgetError, match="top_k"):
        SearchProblem(table, lat, 1, 16).search(Budget(100.0), 0)


def test_prune_keeps_exactly_the_rows_fewer_than_k_others_dominate():
    import numpy as np

    from nasbert_deploy.search.solver import prune

    rng = np.random.default_rng(0)
    for _ in range(200):
        n, d, k = int(rng.integers(1, 40)), int(rng.integers(1, 6)), int(rng.integers(1, 5))
        x = rng.integers(0, 4, size=(n, 5)).astype(float)  # few levels: many ties and duplicates
        cols = tuple(sorted(rng.choice(5, size=d, replace=False).tolist()))
        y = x[:, cols]

        dominated_by = [
            sum(1 for j in range(n) if j != i and (y[j] <= y[i]).all() and ((y[j] < y[i]).any() or j < i)) for i in range(n)
        ]
        assert prune(x, cols, k).tolist() == [i for i in range(n) if dominated_by[i] < k]
