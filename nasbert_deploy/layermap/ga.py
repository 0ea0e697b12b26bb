"""The genetic algorithm over layer maps (Jiao et al. 2020, Sec. 4), independent of how a map is scored.

Generation 0 is the seeded initial population: the three heuristics (uniform, last-layers, first-layers), then
random monotone and random free (non-monotone allowed) maps in turn, distinct while the space has room. Each later
generation keeps the `elite` best maps unchanged (elitism: the best fitness never falls) and fills the rest with
children: two parents by tournament selection (the best of `tournament` random members), uniform or one-point
crossover with probability `crossover_rate` (else a copy of the first parent), then per-gene mutation (each entry
resampled with probability `mutation_rate`: inner blocks 0..L, the last 1..L, so every child is a valid map). A
child already seen in this search is redrawn (at most `NEW_CHILD_TRIES` times) so that the budget explores.

Bounded: `generations` (at most `MAX_GENERATIONS`) after generation 0, and the search stops early once every map
of the space has been seen. Deterministic: one `random.Random(seed)` drives every choice and the fitness calls do
not touch it, so a rerun with the same fitness values (the cache) replays the same search exactly -- which is how
an interrupted search resumes. Python only.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from nasbert_deploy.errors import LayerMapError
from nasbert_deploy.layermap.maps import LayerMap, heuristic_maps, random_map, random_monotone_map, space_size

CROSSOVERS: tuple[str, ...] = ("uniform", "one-point")
MAX_GENERATIONS = 100
MAX_POPULATION = 256
NEW_CHILD_TRIES = 20
Fitness = Callable[[LayerMap, int], float]  # (map, generation) -> fitness, higher is better


@dataclass(frozen=True)
class GASettings:
    """Population size, generations bred after the initial one, elites kept, tournament size, crossover kind and
    rate, per-gene mutation probability, seed of the search's random choices."""

    population: int = 8
    generations: int = 5
    elite: int = 2
    tournament: int = 3
    crossover: str = "uniform"
    crossover_rate: float = 0.9
    mutation_rate: float = 0.2
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check(self) -> None:
        """`LayerMapError` (one line, saying what is valid) for settings the search cannot run with."""
        if not 2 <= self.population <= MAX_POPULATION:
            raise LayerMapError(f"population {self.population}: give 2..{MAX_POPULATION} maps per generation")
        if not 0 <= self.generations <= MAX_GENERATIONS:
            raise LayerMapError(f"generations {self.generations}: give 0..{MAX_GENERATIONS} (bred after the initial one)")
        if not 0 <= self.elite < self.population:
            raise LayerMapError(f"elite {self.elite}: give 0..{self.population - 1} (fewer than the population)")
        if self.tournament < 1:
            raise LayerMapError(f"tournament size {self.tournament}: give 1 or more")
        if self.crossover not in CROSSOVERS:
            raise LayerMapError(f"unknown crossover {self.crossover!r}; valid: {', '.join(CROSSOVERS)}")
        for name, rate in (("crossover rate", self.crossover_rate), ("mutation rate", self.mutation_rate)):
            if not 0.0 <= rate <= 1.0:
                raise LayerMapError(f"{name} {rate}: give a probability in 0..1")


def initial_population(num_blocks: int, num_layers: int, size: int, rng: random.Random) -> list[LayerMap]:
    """The heuristics first, then random monotone and free maps in turn; distinct maps while the space allows
    (`size` is capped at the number of distinct maps)."""
    size = min(size, space_size(num_blocks, num_layers))
    pop: list[LayerMap] = []
    for m in heuristic_maps(num_blocks, num_layers).values():
        if m not in pop and len(pop) < size:
            pop.append(m)
    draw = 0
    while len(pop) < size:
        make = random_monotone_map if draw % 2 == 0 else random_map
        draw += 1
        m = make(num_blocks, num_layers, rng)
        if m not in pop:
            pop.append(m)
        elif draw > 1000 * size:  # pragma: no cover - size <= space_size, so a free draw finds the rest
            raise LayerMapError(f"cannot draw {size} distinct maps of {num_blocks} blocks over {num_layers} layers")
    return pop


def tournament(pop: Sequence[LayerMap], scores: Sequence[float], k: int, rng: random.Random) -> LayerMap:
    """The fittest of `k` distinct random members (ties: the earlier member)."""
    picks = rng.sample(range(len(pop)), min(k, len(pop)))
    return pop[min(picks, key=lambda i: (-scores[i], i))]


def crossover(a: LayerMap, b: LayerMap, kind: str, rng: random.Random) -> LayerMap:
    """uniform: each entry from either parent with probability 1/2; one-point: `a` up to a random cut, `b` after it.
    Both parents are valid maps of the same length, so the child is one too (its last entry is a parent's)."""
    if kind == "uniform":
        return tuple(x if rng.random() < 0.5 else y for x, y in zip(a, b))
    if kind == "one-point":
        if len(a) < 2:
            return a
        cut = rng.randint(1, len(a) - 1)
        return a[:cut] + b[cut:]
    raise LayerMapError(f"unknown crossover {kind!r}; valid: {', '.join(CROSSOVERS)}")


def mutate(m: LayerMap, num_layers: int, rate: float, rng: random.Random) -> LayerMap:
    """Each entry resampled with probability `rate`: inner blocks 0..L, the last block 1..L."""
    out = list(m)
    for i in range(len(out)):
        if rng.random() < rate:
            out[i] = rng.randint(1 if i == len(out) - 1 else 0, num_layers)
    return tuple(out)


@dataclass
class GAResult:
    """The best map and its fitness, every evaluated map in evaluation order with its fitness and generation,
    one summary per generation, and whether the whole space was seen."""

    best: LayerMap
    best_fitness: float
    evaluated: list[tuple[LayerMap, float, int]]
    generations: list[dict[str, Any]] = field(default_factory=list)
    exhausted: bool = False


def run_ga(
    num_blocks: int,
    num_layers: int,
    fitness: Fitness,
    settings: GASettings,
    on_generation: Callable[[dict[str, Any]], None] | None = None,
) -> GAResult:
    """Search maps of `num_blocks` entries over a teacher of `num_layers` layers; `fitness(map, generation)` is
    called once per distinct map, in a deterministic order. `on_generation(summary)` after each generation."""
    settings.check()
    if num_blocks < 1 or num_layers < 1:
        raise LayerMapError(f"a layer map needs >= 1 student block and >= 1 teacher layer, got {num_blocks} and {num_layers}")
    rng = random.Random(settings.seed)
    total = space_size(num_blocks, num_layers)
    scores: dict[LayerMap, float] = {}
    evaluated: list[tuple[LayerMap, float, int]] = []
    summaries: list[dict[str, Any]] = []

    def score(pop: list[LayerMap], generation: int) -> list[float]:
        for m in pop:
            if m not in scores:
                scores[m] = float(fitness(m, generation))
                evaluated.append((m, scores[m], generation))
        return [scores[m] for m in pop]

    def summarise(pop: list[LayerMap], fit: list[float], generation: int, new: int) -> None:
        best = min(range(len(pop)), key=lambda i: (-fit[i], i))
        summary = {
            "generation": generation,
            "best_map": list(pop[best]),
            "best_fitness": fit[best],
            "mean_fitness": sum(fit) / len(fit),
            "new_maps": new,
            "evaluations": len(evaluated),
            "population": [[list(m), f] for m, f in zip(pop, fit)],
        }
        summaries.append(summary)
        if on_generation is not None:
            on_generation(summary)

    pop = initial_population(num_blocks, num_layers, settings.population, rng)
    fit = score(pop, 0)
    summarise(pop, fit, 0, len(pop))
    for generation in range(1, settings.generations + 1):
        if len(scores) >= total:
            break  # every map of the space has a score: nothing left to find
        order = sorted(range(len(pop)), key=lambda i: (-fit[i], i))
        nxt = [pop[i] for i in order[: settings.elite]]
        size, new = len(pop), 0
        while len(nxt) < size:
            for _ in range(NEW_CHILD_TRIES):
                a, b = tournament(pop, fit, settings.tournament, rng), tournament(pop, fit, settings.tournament, rng)
                child = crossover(a, b, settings.crossover, rng) if rng.random() < settings.crossover_rate else a
                child = mutate(child, num_layers, settings.mutation_rate, rng)
                if child not in scores and child not in nxt:
                    break
            new += int(child not in scores and child not in nxt)
            nxt.append(child)
        pop = nxt
        fit = score(pop, generation)
        summarise(pop, fit, generation, new)
    best_map, best_fit, _ = min(evaluated, key=lambda e: -e[1])  # min keeps the first of equals: the earliest
    return GAResult(best_map, best_fit, evaluated, summaries, len(scores) >= total)
