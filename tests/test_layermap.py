"""Distillation layer maps (issue #15): the map's targets and losses, the GA's operators and search, the fitness cache
and resuming an interrupted search. Tiny teachers only; the GA's own tests use a synthetic fitness."""

from __future__ import annotations

import json
import random

import pytest
import torch
from helpers import SAMPLE, make_sample_teacher, make_tiny_teacher

from nasbert_deploy.errors import LayerMapError, OutputError
from nasbert_deploy.layermap import ga
from nasbert_deploy.layermap.maps import heuristic_maps, is_monotone, read_layer_map, space_size, uniform_map
from nasbert_deploy.space import TINY
from nasbert_deploy.student.distill import DistillConfig, build_student, distill, distill_losses
from nasbert_deploy.student.tasks import SAMPLE_DIR
from nasbert_deploy.teacher import block_targets, check_layer_map, load_teacher, mapped_targets

ARCH = "64:mha,ffn|32:sep3,id"
pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------- maps
def test_heuristics_and_uniform_is_the_split_distill_uses():
    assert heuristic_maps(3, 6) == {"uniform": (2, 4, 6), "last-layers": (4, 5, 6), "first-layers": (1, 2, 3)}
    assert uniform_map(4, 6) == (2, 4, 5, 6)  # teacher.split_layers: earlier groups take the remainder
    assert uniform_map(4, 2) == (1, 1, 2, 2)  # fewer teacher layers than blocks: neighbours share
    assert heuristic_maps(4, 2)["last-layers"] == (1, 1, 1, 2)
    assert space_size(3, 6) == 7 * 7 * 6
    assert is_monotone((2, 0, 4, 6)) and not is_monotone((5, 2, 6))


def test_check_and_read_layer_maps(tmp_path):
    assert check_layer_map([3, 0, 6], 3, 6) == (3, 0, 6)
    for bad, what in [((3, 6), "has 3 entries"), ((3, 7, 6), "each 0..6"), ((3, 5, 0), "the last 1..6"), ((-1, 2, 6), "0..6")]:
        with pytest.raises(LayerMapError, match=what):
            check_layer_map(bad, 3, 6)
    assert read_layer_map("3, 5,6") == (3, 5, 6)
    (tmp_path / "r.json").write_text(json.dumps({"layer_map": [2, 0, 6], "fitness": 0.5}))
    (tmp_path / "l.json").write_text("[1, 2]")
    (tmp_path / "bad.json").write_text('{"fitness": 1}')
    assert read_layer_map(tmp_path / "r.json") == (2, 0, 6) and read_layer_map(str(tmp_path / "l.json")) == (1, 2)
    with pytest.raises(LayerMapError, match="holds no layer map"):
        read_layer_map(tmp_path / "bad.json")
    with pytest.raises(LayerMapError, match="does not exist"):
        read_layer_map(tmp_path / "missing.json")
    with pytest.raises(LayerMapError, match="neither a file nor a list"):
        read_layer_map("3,x,6")


# ---------------------------------------------------------------------------- GA operators
def test_mutation_and_crossover_keep_maps_valid():
    rng = random.Random(0)
    n, L = 5, 12
    changed = 0
    for _ in range(300):
        a = ga.random_map(n, L, rng)
        b = ga.random_monotone_map(n, L, rng)
        assert check_layer_map(a, n, L) == a and check_layer_map(b, n, L) == b
        m = ga.mutate(a, L, 0.5, rng)
        check_layer_map(m, n, L)
        changed += m != a
        assert ga.mutate(a, L, 0.0, rng) == a
        u = ga.crossover(a, b, "uniform", rng)
        assert all(x in (p, q) for x, p, q in zip(u, a, b)) and check_layer_map(u, n, L)
        o = ga.crossover(a, b, "one-point", rng)
        assert any(o == a[:cut] + b[cut:] for cut in range(1, n)) and check_layer_map(o, n, L)
    assert changed > 200  # rate 0.5 over 5 entries: a copy survives 1/32 of the time, plus same-value draws
    last = [ga.mutate((0, 0, 1), 3, 1.0, rng)[-1] for _ in range(200)]
    assert min(last) == 1 and max(last) == 3  # the last entry is resampled in 1..L, never 0


def test_initial_population_seeds_heuristics_then_monotone_and_free_maps():
    pop = ga.initial_population(4, 12, 8, random.Random(0))
    assert pop[:3] == list(heuristic_maps(4, 12).values()) and len(set(pop)) == 8
    assert all(is_monotone(m) for m in pop[3::2]) and any(not is_monotone(m) for m in pop[4::2])
    assert len(ga.initial_population(2, 2, 8, random.Random(0))) == space_size(2, 2) == 6  # capped at the space


def _target_fitness(target):
    calls = []

    def fitness(m, generation):
        calls.append((m, generation))
        return -sum(abs(x - y) for x, y in zip(m, target))

    return fitness, calls


def test_ga_elitism_determinism_and_one_call_per_map():
    target = (5, 0, 9, 12)  # non-monotone, far from every heuristic
    fitness, calls = _target_fitness(target)
    s = ga.GASettings(population=8, generations=15, elite=2, seed=3)
    res = ga.run_ga(4, 12, fitness, s)
    maps = [m for m, _ in calls]
    assert len(maps) == len(set(maps)) == len(res.evaluated)  # each distinct map scored once
    bests = [g["best_fitness"] for g in res.generations]
    assert bests == sorted(bests) and len(res.generations) == 16  # elitism: never worse; bounded generations
    for prev, nxt in zip(res.generations, res.generations[1:]):
        ranked = sorted(prev["population"], key=lambda p: -p[1])
        assert [p[0] for p in ranked[:2]] == [p[0] for p in nxt["population"][:2]]  # the elites carried unchanged
    heur = max(fitness(m, 0) for m in heuristic_maps(4, 12).values())
    assert res.best_fitness > heur + 5 and res.best_fitness == max(f for _, f, _ in res.evaluated)
    again, _ = _target_fitness(target)
    assert [m for m, _, _ in ga.run_ga(4, 12, again, s).evaluated] == [m for m, _, _ in res.evaluated]
    other, _ = _target_fitness(target)
    assert [m for m, _, _ in ga.run_ga(4, 12, other, ga.GASettings(population=8, generations=15, seed=4)).evaluated] != maps


@pytest.mark.parametrize("kind", ["uniform", "one-point"])
def test_ga_stops_once_the_space_is_seen(kind):
    fitness, calls = _target_fitness((2, 1))
    res = ga.run_ga(2, 2, fitness, ga.GASettings(population=4, generations=50, crossover=kind, mutation_rate=0.5))
    assert res.exhausted and len(calls) == space_size(2, 2) == 6 and res.best == (2, 1)
    assert len(res.generations) < 51


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(population=1), "give 2..256"),
        (dict(generations=101), "give 0..100"),
        (dict(elite=8), "give 0..7"),
        (dict(crossover="two-point"), "valid: uniform, one-point"),
        (dict(mutation_rate=1.5), "probability in 0..1"),
    ],
)
def test_ga_settings_are_checked(settings, message):
    with pytest.raises(LayerMapError, match=message):
        ga.GASettings(**settings).check()


# ---------------------------------------------------------------------------- targets and losses
@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return load_teacher(make_tiny_teacher(tmp_path_factory.mktemp("teacher")))  # 2 layers: uniform map (1, 2)


@pytest.fixture(scope="module")
def batch(teacher):
    return dict(teacher.tokenizer(["one text here", "two texts for the map test"], padding=True, return_tensors="pt"))


def test_mapped_targets_follow_the_map(teacher, batch):
    ids, mask = batch["input_ids"], batch["attention_mask"]
    uniform = block_targets(teacher, ids, mask, 2)
    same = mapped_targets(teacher, ids, mask, (1, 2))
    assert all(torch.equal(a, b) for a, b in zip(uniform, same))
    hs = teacher.model(**batch, output_hidden_states=True).hidden_states
    other = mapped_targets(teacher, ids, mask, (0, 1))
    assert other[1] is None and torch.equal(other[2], hs[1])
    with pytest.raises(LayerMapError):
        mapped_targets(teacher, ids, mask, (1, 3))


def test_layer_map_changes_the_losses_and_none_is_the_old_loss(teacher, batch):
    student = build_student(ARCH, init="random", space=TINY)
    with torch.no_grad():
        for p in student.projections.parameters():
            p.add_(0.3)
    cfg = DistillConfig(intermediate_weight=1.0)
    base = distill_losses(student, teacher, batch, cfg, None)
    # the loss as it was before maps existed: block_targets and every inner block
    targets = block_targets(teacher, batch["input_ids"], batch["attention_mask"], 2)
    out = []
    hook = student.model.blocks[0].register_forward_hook(lambda _m, _i, o: out.append(o.reshape(*batch["input_ids"].shape, -1)))
    hidden = student.model(batch["input_ids"], batch["attention_mask"]).last_hidden_state
    hook.remove()
    from nasbert_deploy.model.losses import masked_mse

    assert torch.equal(base["hidden"], masked_mse(hidden, targets[-1], batch["attention_mask"]))
    assert torch.equal(
        base["blocks"], torch.stack([masked_mse(student.projections[0](out[0]), targets[1], batch["attention_mask"])]).mean()
    )
    uniform = distill_losses(student, teacher, batch, DistillConfig(layer_map=(1, 2)), None)
    assert all(torch.equal(base[k], uniform[k]) for k in ("hidden", "blocks", "total"))
    moved = distill_losses(student, teacher, batch, DistillConfig(layer_map=(2, 2)), None)
    assert torch.equal(moved["hidden"], base["hidden"]) and abs(moved["blocks"].item() - base["blocks"].item()) > 1e-4
    final = distill_losses(student, teacher, batch, DistillConfig(layer_map=(1, 1)), None)
    assert abs(final["hidden"].item() - base["hidden"].item()) > 1e-4  # the output regresses teacher layer 1
    unsupervised = distill_losses(student, teacher, batch, DistillConfig(layer_map=(0, 2)), None)
    assert set(unsupervised) == {"hidden", "total"}


def test_config_rule_and_resume_key():
    old_fields = set(DistillConfig().to_dict()) - {"steps", "checkpoint_every", "layer_map", "query_weight", "query_len"}
    assert set(DistillConfig().resume_key()) == old_fields  # old checkpoints (no layer_map, no query term) still resume
    assert DistillConfig(query_weight=1.0).resume_key()["query_len"] == DistillConfig().query_len
    mapped = DistillConfig(layer_map=[3, 0, 6])
    assert mapped.layer_map == (3, 0, 6) and mapped.intermediate_weight == 1.0  # a map supervises inner blocks
    assert mapped.resume_key()["layer_map"] == (3, 0, 6)
    assert DistillConfig(layer_map=(3, 0, 6), intermediate_weight=0.5).intermediate_weight == 0.5


def test_distill_records_the_map_and_refuses_one_that_does_not_fit(teacher, tmp_path):
    texts = SAMPLE.read_text().splitlines()[:40]
    student = build_student(ARCH, init="random", space=TINY)
    with pytest.raises(LayerMapError, match="each 0..2"):
        distill(student, teacher, texts, tmp_path / "x", DistillConfig(steps=2, batch_size=4, seq_len=16, layer_map=(3, 2)))
    assert not (tmp_path / "x").exists()
    report = distill(student, teacher, texts, tmp_path / "s", DistillConfig(steps=2, batch_size=4, seq_len=16, layer_map=(2, 1)))
    assert report["distill_layer_map"] == [2, 1] and report["config"]["layer_map"] == (2, 1)
    plain = distill(
        build_student(ARCH, init="random", space=TINY),
        teacher,
        texts,
        tmp_path / "p",
        DistillConfig(steps=2, batch_size=4, seq_len=16),
    )
    assert plain["distill_layer_map"] == [1, 2] and plain["config"]["layer_map"] is None


# ---------------------------------------------------------------------------- fitness cache and resume
@pytest.fixture(scope="module")
def deep_teacher(tmp_path_factory):
    return make_sample_teacher(tmp_path_factory.mktemp("deep") / "t", layers=4)  # 20 maps for a 2-block student


def _request(teacher_dir, out, force=False, **ga_kw):
    from nasbert_deploy.layermap.proxy import ProxySettings
    from nasbert_deploy.layermap.request import LayerMapRequest

    proxy = ProxySettings(steps=3, batch_size=4, seq_len=16, lr=3e-3, corpus_limit=40, task_limit=48, max_len=24)
    return LayerMapRequest(
        ARCH,
        SAMPLE,
        out,
        (SAMPLE_DIR / "debian-retrieval-sample.jsonl",),
        teacher_dir,
        "random",
        "tiny",
        proxy=proxy,
        ga=ga.GASettings(**{"population": 3, "generations": 1, **ga_kw}),
        force=force,
    )


def _counting(monkeypatch, stop_after=None):
    """Count (and optionally interrupt) the real evaluations from now on."""
    from nasbert_deploy.layermap.proxy import ProxyEvaluator

    monkeypatch.undo()  # the previous counter, if any
    real, seen = ProxyEvaluator.evaluate, []

    def evaluate(self, m):
        if stop_after is not None and len(seen) == stop_after:
            raise KeyboardInterrupt
        seen.append(m)
        return real(self, m)

    monkeypatch.setattr(ProxyEvaluator, "evaluate", evaluate)
    return seen


def test_cache_resume_after_interruption_matches_one_go(deep_teacher, tmp_path, monkeypatch):
    from nasbert_deploy.layermap.run import search_layer_map

    seen = _counting(monkeypatch)
    ref = search_layer_map(_request(deep_teacher, tmp_path / "ref.json"), note=lambda _: None)
    assert len(seen) == len(ref["evaluated"]) == 4  # the 3 heuristics, then 1 child besides 2 elites
    assert ref["heuristics"]["uniform"]["map"] == [2, 4] and ref["layer_map"] == ref["evaluated"][0]["map"]
    assert ref["fitness"] == max(r["fitness"] for r in ref["evaluated"]) and ref["cpu_hours"] > 0

    stopped = _counting(monkeypatch, stop_after=2)
    with pytest.raises(KeyboardInterrupt):
        search_layer_map(_request(deep_teacher, tmp_path / "run.json"), note=lambda _: None)
    assert len(stopped) == 2 and not (tmp_path / "run.json").exists()
    assert len(json.loads((tmp_path / "run.json.cache.json").read_text())["maps"]) == 2
    notes = []
    rest = _counting(monkeypatch)
    res = search_layer_map(_request(deep_teacher, tmp_path / "run.json"), note=notes.append)
    assert "resuming: 2 maps already evaluated" in notes[0]
    assert len(rest) == len(ref["evaluated"]) - 2 and not set(rest) & set(stopped)
    assert [(r["map"], r["fitness"]) for r in res["evaluated"]] == [(r["map"], r["fitness"]) for r in ref["evaluated"]]

    again = _counting(monkeypatch)  # more generations: the cache answers the replayed part
    more = search_layer_map(_request(deep_teacher, tmp_path / "ref.json", True, generations=2), note=lambda _: None)
    assert len(again) == len(more["evaluated"]) - len(ref["evaluated"]) >= 1 and more["fitness"] >= ref["fitness"]
    with pytest.raises(OutputError, match=r"other settings \(proxy differ\)"):
        from dataclasses import replace

        r = _request(deep_teacher, tmp_path / "run2.json")
        (tmp_path / "run2.json.cache.json").write_text((tmp_path / "run.json.cache.json").read_text())
        search_layer_map(replace(r, proxy=replace(r.proxy, steps=5)), note=lambda _: None)


def test_an_exported_student_starts_the_same_every_time(deep_teacher, tmp_path):
    from dataclasses import replace

    from nasbert_deploy.layermap.request import build_start, prepare

    folder = tmp_path / "exp"
    build_student(ARCH, init="random", space=TINY).model.save_pretrained(folder)
    request = replace(_request(deep_teacher, tmp_path / "m.json"), student=str(folder))
    prepared = prepare(request)
    assert prepared.num_blocks == 2 and prepared.num_layers == 4
    assert prepared.student == {"folder": str(folder), "arch": ARCH, "init": "export"}
    teacher = load_teacher(deep_teacher)
    a, b = build_start(request, prepared, teacher), build_start(request, prepared, teacher)
    assert a.init == "export" and all(torch.equal(x, y) for x, y in zip(a.state().values(), b.state().values()))


def test_refine_candidates_are_the_fittest_then_the_uniform_map():
    from nasbert_deploy.layermap.refine import refine_candidates

    ev = [("2,4,6", 0.60), ("6,2,6", 0.62), ("1,2,6", 0.61), ("3,2,6", 0.61)]
    assert refine_candidates(ev, "2,4,6", 2) == ["6,2,6", "1,2,6", "2,4,6"]  # equal fitness: the earlier one
    assert refine_candidates(ev, "2,4,6", 4) == ["6,2,6", "1,2,6", "3,2,6", "2,4,6"]  # uniform already in: once
    assert refine_candidates(ev, "4,5,6", 1) == ["6,2,6", "4,5,6"]


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"top": 65}, "refine-top 65: give 0"),
        ({"top": 2, "steps": 100}, "give more than the search's --steps 100"),
        ({"top": 2, "steps": 200, "seeds": ()}, "one or more distinct seeds"),
        ({"top": 2, "steps": 200, "seeds": (0, 0)}, "one or more distinct seeds"),
        ({"top": 2, "steps": 200, "seeds": (-1,)}, "one or more distinct seeds"),
    ],
)
def test_refine_settings_errors_say_what_is_valid(settings, fragment):
    from nasbert_deploy.errors import LayerMapError
    from nasbert_deploy.layermap.refine import RefineSettings

    with pytest.raises(LayerMapError, match=fragment):
        RefineSettings(**settings).check(100)
    RefineSettings(top=0, steps=1).check(100)  # no stage: nothing else is checked


def test_refine_seeds_parse():
    from nasbert_deploy.errors import LayerMapError
    from nasbert_deploy.layermap.refine import parse_seeds

    assert parse_seeds("0, 1,2") == (0, 1, 2)
    for bad in ("", "a", "1;2"):
        with pytest.raises(LayerMapError, match="comma-separated integers"):
            parse_seeds(bad)
