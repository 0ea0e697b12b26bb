"""One model for several devices: the exact least-loss architecture within every device's latency budget."""

from __future__ import annotations

import random

import pytest
from search_helpers import SyntheticLatency, brute_force_devices, random_table

from nasbert_deploy.errors import InfeasibleBudgetError
from nasbert_deploy.search.problem import Budget, SearchProblem
from nasbert_deploy.space import TINY, SearchSpace


def _space(blocks: int) -> SearchSpace:
    return SearchSpace(
        name=f"t{blocks}", num_blocks=blocks, layers_per_block=2, hidden_sizes=(32, 64), conv_kernels=(3,), head_dim=16,
        embed_dim=16, output_dim=48, vocab_size=1000, max_positions=64,
    )


CASES = [(TINY, 8), (_space(1), 10), (_space(3), 6), (_space(4), 5)]


def _feasible(rows, budgets, params=None):
    ok = [r for r in rows if all(x <= b for x, b in zip(r["latencies_ms"], budgets))]
    return [r for r in ok if params is None or r["params"] <= params]


def _devices(space, seed, n=2):
    # the second device has other op costs, and (odd seeds) a latency that is the max of two planes
    return [SyntheticLatency(space, seed + 101 * d, planes=2 if d and seed % 2 else 1) for d in range(n)]


@pytest.mark.parametrize("space,per_block", CASES, ids=lambda c: getattr(c, "name", str(c)))
@pytest.mark.parametrize("seed", range(5))
def test_two_devices_match_brute_force(space, per_block, seed):
    table = random_table(space, per_block, seed)
    lats = _devices(space, seed)
    rows = brute_force_devices(table, lats, 1, 16)
    prob = SearchProblem(table, lats, 1, 16, devices=["cpu-a", "cpu-b"])
    rng = random.Random(seed)
    for _ in range(12):
        # each budget is some architecture's exact latency on that device: both can bind
        budgets = (rng.choice(rows)["latencies_ms"][0], rng.choice(rows)["latencies_ms"][1])
        params = rng.choice(rows)["params"] if rng.random() < 0.3 else None
        k = rng.choice([1, 3])
        feas = _feasible(rows, budgets, params)
        budget = Budget.per_device(budgets, params)
        if not feas:
            with pytest.raises(InfeasibleBudgetError):
                prob.search(budget, k)
            continue
        res = prob.search(budget, k)
        assert [s.loss for s in res.best] == sorted(r["loss"] for r in feas)[:k]
        by_arch = {str(r["arch"]): r for r in feas}
        for s in res.best:
            r = by_arch[str(s.arch)]  # KeyError = an architecture over some device's budget
            assert list(s.latencies_ms) == r["latencies_ms"] and s.latency_ms == r["latencies_ms"][0]
        assert res.devices == ("cpu-a", "cpu-b") and res.to_dict()["devices"] == ["cpu-a", "cpu-b"]


def test_both_budgets_bind_somewhere():
    """Some instance needs both budgets at once: its answer is worse than under either budget alone."""
    space = _space(3)
    found = 0
    for seed in range(10):
        table = random_table(space, 6, seed)
        lats = _devices(space, seed)
        rows = brute_force_devices(table, lats, 1, 16)
        prob = SearchProblem(table, lats, 1, 16, devices=["a", "b"])
        for q in (2, 3, 4, 6):
            b0 = sorted(r["latencies_ms"][0] for r in rows)[len(rows) // q]
            b1 = sorted(r["latencies_ms"][1] for r in rows)[len(rows) // q]
            feas = _feasible(rows, (b0, b1))
            if not feas:
                continue
            res = prob.search(Budget.per_device((b0, b1)))
            assert res.best[0].loss == min(r["loss"] for r in feas)
            only0 = min(r["loss"] for r in rows if r["latencies_ms"][0] <= b0)
            only1 = min(r["loss"] for r in rows if r["latencies_ms"][1] <= b1)
            if res.best[0].loss > max(only0, only1):
                found += 1
                assert set(res.binding) == {"latency on a", "latency on b"}
    assert found >= 3


def test_infeasible_device_budgets_are_named():
    space = _space(3)
    for seed in range(20):  # an instance where the fastest architectures of the two devices differ
        table = random_table(space, 6, seed)
        lats = _devices(space, seed)
        rows = brute_force_devices(table, lats, 1, 16)
        fast_a = min(r["latencies_ms"][0] for r in rows)
        fast_b = min(r["latencies_ms"][1] for r in rows)
        b_under_a = min(r["latencies_ms"][1] for r in rows if r["latencies_ms"][0] <= fast_a)
        if b_under_a > fast_b:
            break
    else:
        pytest.fail("no seed where the two devices' fastest architectures differ")
    prob = SearchProblem(table, lats, 1, 16, devices=["cpu-a", "cpu-b"])
    loose_a = max(r["latencies_ms"][0] for r in rows)
    with pytest.raises(InfeasibleBudgetError) as info:
        prob.search(Budget.per_device((loose_a, fast_b - 1 / 64)))
    assert f"on cpu-b at batch 1, seq 16: the fastest takes {fast_b:.3f} ms" in str(info.value)
    # each budget alone is feasible, together they are not: the message names the fastest under the other budget
    with pytest.raises(InfeasibleBudgetError) as info:
        prob.search(Budget.per_device((fast_a, fast_b)))
    msg = str(info.value)
    a_under_b = min(r["latencies_ms"][0] for r in rows if r["latencies_ms"][1] <= fast_b)
    assert "each budget alone can be met, but within the other budgets" in msg
    assert f"the fastest on cpu-a takes {a_under_b:.3f} ms" in msg and f"the fastest on cpu-b takes {b_under_a:.3f} ms" in msg
    assert prob.minimum("latency:1") == fast_b and prob.minimum("latency") == fast_a


def test_budget_count_must_match_devices():
    table = random_table(TINY, 4, 0)
    prob = SearchProblem(table, _devices(TINY, 0), 1, 16, devices=["a", "b"])
    with pytest.raises(InfeasibleBudgetError, match=r"1 latency budget\(s\) for 2 device\(s\) \(a, b\)"):
        prob.search(Budget(100.0))
    with pytest.raises(InfeasibleBudgetError, match="--max-latency-ms must be a positive number"):
        Budget.per_device((1.0, -2.0))
    assert Budget.per_device((1.0, 2.0)).flags() == "--max-latency-ms 1 --max-latency-ms 2"
    with pytest.raises(InfeasibleBudgetError, match="device names for"):
        SearchProblem(table, _devices(TINY, 0), 1, 16, devices=["a"])


# ---------------------------------------------------------------- command line: --device and --max-latency-ms repeated
class _Table(SyntheticLatency):
    """Synthetic latencies plus `predict`, as a device's `LatencyTable` offers (tests only)."""

    def predict(self, arch, batch, seq_len):
        from types import SimpleNamespace

        blocks = [self.block_ms(b, batch, seq_len) for b in arch.blocks]
        return SimpleNamespace(total_ms=sum(blocks) + self.fixed_ms(arch.hiddens, batch, seq_len), blocks_ms=blocks)


DEVICES = ("cpu-ort", "cpu-openvino")


@pytest.fixture
def two_tables(monkeypatch):
    """Synthetic latency tables for cpu-ort and cpu-openvino behind both commands' table loaders."""
    from pathlib import Path

    from nasbert_deploy.export import measure
    from nasbert_deploy.search import run as search_run

    lats = {name: _Table(TINY, 3 + 101 * i, planes=1 + i) for i, name in enumerate(DEVICES)}
    monkeypatch.setattr(search_run, "latency_table_path", lambda device, table: Path(device.name) if device else table)
    monkeypatch.setattr(search_run, "load_latency_table", lambda path, space: lats[str(path)])
    monkeypatch.setattr(measure, "load_latency_table", lambda spec, space=None: lats[spec.name])
    return [lats[n] for n in DEVICES]


def _cli(*args):
    from typer.testing import CliRunner

    from nasbert_deploy.cli.app import app

    return CliRunner().invoke(app, list(args))


def test_search_cli_two_devices(tmp_path, two_tables):
    import json

    table = random_table(TINY, 8, 3)
    cands = table.save(tmp_path / "candidates.json")
    rows = brute_force_devices(table, two_tables, 1, 16)
    b = [sorted(r["latencies_ms"][d] for r in rows)[len(rows) // 3] for d in range(2)]
    args = ["search", "--device", DEVICES[0], "--max-latency-ms", str(b[0]), "--device", DEVICES[1], "--max-latency-ms",
            str(b[1]), "--candidates", str(cands), "--seq-len", "16"]
    res = _cli(*args, "--json", "--top", "2")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    expected = sorted(r["loss"] for r in _feasible(rows, b))[:2]
    assert data["devices"] == list(DEVICES) and data["budget"]["max_latencies_ms"] == b
    assert [x["loss"] for x in data["best"]] == expected
    assert all(x["latencies_ms"][d] <= b[d] for x in data["best"] for d in range(2))
    res = _cli(*args)
    flat = " ".join(res.stdout.split())
    assert res.exit_code == 0 and "cpu-openvino" in flat and f"{data['best'][0]['latencies_ms'][1]:.3f}" in flat
    assert data["binding"] and all(f"{name} (without it" in flat for name in data["binding"])
    res = _cli(*args[:5], "--device", DEVICES[1], "--candidates", str(cands))
    assert res.exit_code == 2 and "--max-latency-ms given 1 time(s) for 2 --device(s)" in res.stderr
    res = _cli(*args, "--table", str(cands))
    assert res.exit_code == 2 and "with several --device, each uses its own table" in res.stderr


@pytest.mark.slow
def test_export_cli_two_devices(tmp_path, two_tables):
    import json

    from helpers import make_supernet_dir, make_tokenizer_dir

    tok = make_tokenizer_dir(tmp_path)
    sn, _ = make_supernet_dir(tmp_path)
    table = random_table(TINY, 6, 5)
    table.save(sn / "candidates.json")
    rows = brute_force_devices(table, two_tables, 1, 64)
    b = [sorted(r["latencies_ms"][d] for r in rows)[len(rows) // 3] for d in range(2)]
    best = min(_feasible(rows, b), key=lambda r: r["loss"])
    out = tmp_path / "o"
    res = _cli("export", "--device", DEVICES[0], "--max-latency-ms", str(b[0]), "--device", DEVICES[1], "--max-latency-ms",
               str(b[1]), "--supernet", str(sn), "--tokenizer", str(tok), "--out", str(out), "--no-timing", "--no-memory")
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["arch"] == str(best["arch"]) and [x["device"] for x in rep["latencies"]] == list(DEVICES)
    assert [x["predicted_ms"] for x in rep["latencies"]] == pytest.approx(best["latencies_ms"], abs=1e-9)
    card = (out / "README.md").read_text()
    assert "| cpu-ort | onnxruntime |" in card and "| cpu-openvino | openvino |" in card
