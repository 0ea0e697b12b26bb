"""tasksearch units: decision coding, REINFORCE and evolution under a hard budget, the reward, feasibility, the
additive latency lookup, and the proxy evaluation on a tiny supernet (numbers, not mocks)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from search_helpers import SyntheticLatency

from nasbert_deploy.errors import InfeasibleBudgetError
from nasbert_deploy.search.problem import Budget
from nasbert_deploy.space import MINILM, TINY, Arch
from nasbert_deploy.tasksearch.budget import AdditiveTable, BudgetCheck
from nasbert_deploy.tasksearch.controllers import ArchCoder, Evolution, Reinforce, reward


def _brute(space, lat, budget, batch=1, seq=32):
    """(latency, arch) of every architecture of `space` within the parameter budget."""
    out = []
    for arch in space.enumerate():
        ms = max(sum(lat.block_ms(b, batch, seq, p) for b in arch.blocks) + lat.fixed_ms(arch.hiddens, batch, seq, p)
                 for p in range(lat.n_planes(batch, seq)))
        if budget.max_params is None or space.params(arch) <= budget.max_params:
            out.append((ms, arch))
    return out


@pytest.mark.parametrize("space", [TINY, MINILM])
def test_coder_round_trip_and_free_decisions(space):
    coder, rng = ArchCoder(space), random.Random(0)
    for _ in range(200):
        arch = space.random_arch(rng)
        ch = coder.encode(arch)
        assert coder.decode(ch) == arch
        free = coder.free(ch)
        for i, b in enumerate(arch.blocks):  # free: every real op, plus the first identity of the block
            assert free[i].sum() == min(b.depth + 1, space.layers_per_block)
    if space is MINILM:  # a forced position's value does not matter: ops after a block's first identity are identity
        ch = coder.encode(space.parse("128:mha,id,id|128:ffn,id,id|128:mha,id,id"))
        ch[:, -1] = 0
        assert all(b.depth == 1 for b in coder.decode(ch).blocks)


def test_reward_form_and_hard_budget():
    assert reward(0.8, 5.0, 5.0) == pytest.approx(0.8)
    assert reward(0.8, 2.5, 5.0, -0.07) == pytest.approx(0.8 * 2 ** 0.07)
    assert reward(0.99, 5.01, 5.0) == 0.0  # over budget: never rewarded, however accurate
    assert reward(0.8, 1.0, 5.0, 0.0) == pytest.approx(0.8)


def test_budget_fastest_is_exact_and_infeasible_names_the_fastest():
    lat = SyntheticLatency(TINY, seed=3, planes=2)
    budget = Budget(100.0, max_params=120_000)
    check = BudgetCheck(TINY, lat, budget, 1, 32)
    rows = _brute(TINY, lat, budget)
    best_ms = min(ms for ms, _ in rows)
    got = check.fastest()
    assert check.costs(got).latency_ms == pytest.approx(best_ms)
    assert TINY.params(got) <= 120_000
    for ms, arch in rows[:300]:
        assert check.costs(arch).latency_ms == pytest.approx(ms)
    fastest_any = min(ms for ms, _ in _brute(TINY, lat, Budget(1)))
    with pytest.raises(InfeasibleBudgetError, match=f"the fastest takes {fastest_any:.3f} ms"):
        BudgetCheck(TINY, lat, Budget(best_ms / 10), 1, 32).fastest()
    with pytest.raises(InfeasibleBudgetError, match="params: the smallest has"):
        BudgetCheck(TINY, lat, Budget(100.0, max_params=10), 1, 32).fastest()


def test_additive_lookup_equals_the_table():
    """Against `LatencyTable.predict` on a table with two planes (scale, ms/Mparam, offset) and an interpolated
    sequence length: the memoised per-op sums give the same totals for every tiny architecture."""
    from nasbert_deploy.profiling.table import LatencyTable, point_key, table_keys

    pts = [point_key(1, 16), point_key(1, 64)]
    entries = {k: {pk: {"median_ms": 0.01 * (1 + i % 5) * (1 + j)} for j, pk in enumerate(pts)}
               for i, k in enumerate(table_keys(TINY))}
    entries["overhead"] = {pk: {"median_ms": 0.002} for pk in pts}
    planes = [{"scale": 1.1, "ms_per_mparam": 0.05, "offset_ms": 0.01}, {"scale": 2.0, "ms_per_mparam": 0.3, "offset_ms": -0.2}]
    table = LatencyTable(TINY, {"name": "x"}, entries, {pk: {"planes": planes} for pk in pts})
    lookup = AdditiveTable(table, TINY, 1, 40)
    assert lookup.n_planes(1, 40) == 4  # every pair of the two points' planes
    for arch in list(TINY.enumerate())[::17]:  # (`predict` is slow: it re-derives the table's points per lookup)
        assert lookup.total_ms(arch) == pytest.approx(table.predict(arch, 1, 40).total_ms, rel=1e-12)


def _score(arch: Arch) -> float:
    """A synthetic accuracy: wide first block, many FFNs."""
    return 0.3 + 0.2 * (arch.blocks[0].hidden == 64) + 0.05 * sum(op.name == "ffn" for b in arch.blocks for op in b.ops)


@pytest.mark.parametrize("cls", [Reinforce, Evolution])
def test_controllers_stay_within_budget_and_learn(cls):
    lat = SyntheticLatency(TINY, seed=1)
    archs = list(TINY.enumerate())
    limit = float(np.median([BudgetCheck(TINY, lat, Budget(1e9), 1, 32).costs(a).latency_ms for a in archs[::37]]))
    check = BudgetCheck(TINY, lat, Budget(limit), 1, 32)
    ctrl = cls(TINY, check.fits, check.fastest(), seed=0)
    rewards = []
    for _ in range(150):
        arch = ctrl.propose()
        assert check.fits(arch)  # only archs within the hard budget are proposed
        r = reward(_score(arch), check.costs(arch).latency_ms, limit)
        ctrl.observe(arch, r)
        rewards.append(r)
    assert ctrl.rejected > 0  # the budget binds: some samples were over it and resampled
    best_possible = max(reward(_score(a), check.costs(a).latency_ms, limit) for a in archs if check.fits(a))
    assert np.mean(rewards[-30:]) > np.mean(rewards[:30]) + (0.05 if cls is Reinforce else 0.0)  # learns
    assert max(rewards) == pytest.approx(best_possible)  # finds the best arch within the budget
    if cls is Reinforce:
        hp, _ = ctrl.probabilities()
        assert hp[0, TINY.hidden_sizes.index(64)] > 0.7  # the rewarded choice became likely


@pytest.mark.parametrize("cls", [Reinforce, Evolution])
def test_controller_state_resumes_exactly(cls):
    import json

    lat = SyntheticLatency(TINY, seed=2)
    check = BudgetCheck(TINY, lat, Budget(1e9), 1, 32)
    a = cls(TINY, check.fits, check.fastest(), seed=5)
    for _ in range(12):
        arch = a.propose()
        a.observe(arch, _score(arch))
    b = cls(TINY, check.fits, check.fastest(), seed=99)
    b.load_state(json.loads(json.dumps(a.state())))  # through JSON, as on disk
    for _ in range(10):
        x, y = a.propose(), b.propose()
        assert x == y
        a.observe(x, _score(x))
        b.observe(y, _score(y))


def test_reinforce_pushes_away_from_over_budget_samples():
    lat = SyntheticLatency(TINY, seed=4)
    big = TINY.hidden_sizes.index(64)
    check = BudgetCheck(TINY, lat, Budget(1e9), 1, 32)
    ctrl = Reinforce(TINY, lambda arch: all(b.hidden == 32 for b in arch.blocks), check.fastest(), seed=0)
    ctrl.observe(ctrl.propose(), 0.5)  # a baseline exists
    for _ in range(20):
        ctrl.observe(ctrl.propose(), 0.5)
    hp, _ = ctrl.probabilities()
    assert ctrl.rejected > 0 and (hp[:, big] < 0.3).all()  # rejected = reward 0 < baseline: wide blocks unlearnt


def test_proxy_evaluation_learns_and_is_reproducible(tmp_path, one_thread):
    from helpers import WORDS, make_supernet_dir, make_tiny_teacher

    from nasbert_deploy.student.finetune import load_classifier
    from nasbert_deploy.student.tasks import TaskData
    from nasbert_deploy.tasksearch.proxy import ProxyConfig, ProxyEvaluator, classifier_from_supernet, split_proxy

    _, net = make_supernet_dir(tmp_path)
    _, tok = load_classifier(make_tiny_teacher(tmp_path / "t"), ["a"])
    rng, texts, labs = random.Random(0), [], []
    for i in range(200):  # the label is which of two words the text holds
        words = [rng.choice(WORDS[:20]) for _ in range(8)]
        words[rng.randrange(8)] = "python" if i % 2 else "module"
        texts.append(" ".join(words))
        labs.append("ab"[i % 2])
    train = TaskData(tuple(texts), tuple(labs), source="synthetic")
    cfg = ProxyConfig(rows=96, heldout=48, epochs=3, max_len=16, lr=3e-3, lam=0.0)
    rows, held = split_proxy(train, cfg)
    assert len(rows) == 96 and len(held) == 48 and not set(rows.texts) & set(held.texts)
    assert held.labels.count("a") == held.labels.count("b")  # stratified
    ev = ProxyEvaluator(net, tok, rows, held, ["a", "b"], np.zeros((len(rows), 2), dtype=np.float32), cfg)
    arch = "64:mha,ffn|64:ffn,ffn"
    r1, r2 = ev.evaluate(arch), ev.evaluate(arch)
    assert r1.accuracy == r2.accuracy  # seeded from the arch string
    assert r1.accuracy >= 0.65  # trained: chance is 0.5
    model = classifier_from_supernet(net, arch, ["a", "b"])  # the encoder is the supernet path, the head is new
    ref = net.extract(arch)
    for k, v in ref.state_dict().items():
        assert (model.nasbert.state_dict()[k] == v).all()
