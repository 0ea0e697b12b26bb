"""The refine stage of `layer-map` (`--refine-top K`): a longer proxy for the search's best maps.

Why: the 100-step proxy separates the maps that end on the teacher's last layer from the rest, but not those maps
from one another. Measured (docs/training.md): its best map, 6,2,6, lost to the uniform map by 1.7 points after a
1,000-step distillation, far beyond the seed spread, while 16 maps ending in 6 lay within 0.025 of each other on
the proxy. So the K fittest maps of the search, together with the uniform map (what `distill` uses without a
map, so the search never returns a map that was not compared with the default at the longer proxy), are scored
again with `steps` distillation steps under each of `seeds` (the distillation's batch order and the probes' seed;
the corpus sample and the task rows stay those of the search), and the best mean over seeds is the pick.

Every refined evaluation is cached beside the search's (`refined["steps=N,seed=S"][map]` in the same cache file,
whose key holds every other proxy setting), so a rerun resumes; progress says which map and seed is scored.

    settings = RefineSettings(top=4, steps=300, seeds=(0, 1))
    candidates = refine_candidates(evaluated, heuristics, settings.top)  # map keys, best first
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from nasbert_deploy.errors import LayerMapError
from nasbert_deploy.layermap.proxy import ProxyEvaluator, ProxySettings

MAX_REFINE_TOP = 64


@dataclass(frozen=True)
class RefineSettings:
    """`top` fittest maps of the search scored again (0: no refine stage) with `steps` proxy distillation steps
    under each of `seeds`."""

    top: int = 0
    steps: int = 400
    seeds: tuple[int, ...] = (0, 1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["seeds"] = list(self.seeds)
        return d

    def check(self, proxy_steps: int) -> None:
        """`LayerMapError` (one line, saying what is valid) for settings the stage cannot run with."""
        if not 0 <= self.top <= MAX_REFINE_TOP:
            raise LayerMapError(f"refine-top {self.top}: give 0 (no refine stage) .. {MAX_REFINE_TOP} maps")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise LayerMapError(f"refine-seeds {list(self.seeds)}: give one or more distinct seeds >= 0, e.g. 0,1")
        if self.top == 0:
            return
        if self.steps <= proxy_steps:
            raise LayerMapError(
                f"refine-steps {self.steps}: give more than the search's --steps {proxy_steps} (the stage exists to "
                "look further than the search's proxy)"
            )


def parse_seeds(text: str) -> tuple[int, ...]:
    """'0,1' -> (0, 1); a `LayerMapError` naming the text otherwise."""
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise LayerMapError(f"refine-seeds {text!r}: give comma-separated integers such as 0,1") from None
    if not seeds:
        raise LayerMapError(f"refine-seeds {text!r}: give comma-separated integers such as 0,1")
    return seeds


def refine_candidates(evaluated: Sequence[tuple[str, float]], uniform: str, top: int) -> list[str]:
    """The `top` fittest map keys of `evaluated` ((key, fitness), any order; ties keep the given order), then the
    uniform map's key when it is not among them."""
    order = sorted(range(len(evaluated)), key=lambda i: (-evaluated[i][1], i))
    keys = [evaluated[i][0] for i in order[:top]]
    return keys + ([uniform] if uniform not in keys else [])


def cache_slot(steps: int, seed: int) -> str:
    return f"steps={steps},seed={seed}"


def refine(
    candidates: Sequence[str],
    settings: RefineSettings,
    proxy: ProxySettings,
    make_evaluator: Callable[[ProxySettings], ProxyEvaluator],
    refined: dict[str, dict[str, Any]],
    save: Callable[[], None],
    note: Callable[[str], None],
) -> dict[str, Any]:
    """Score each candidate under each seed (cached in `refined`, `save()` after every new record); returns
    {'settings', 'candidates' (best first: map, fitness = mean over seeds, sd, per-seed fitness, mean per-task scores),
    'pick', 'new_evaluations', 'cpu_s' (of every record used)}."""
    todo = [(s, k) for s in settings.seeds for k in candidates if k not in refined.get(cache_slot(settings.steps, s), {})]
    if len(todo) < len(settings.seeds) * len(candidates):
        note(f"refine: resuming, {len(settings.seeds) * len(candidates) - len(todo)} evaluations cached")
    note(
        f"refine: {len(candidates)} maps x {len(settings.seeds)} seeds at {settings.steps} steps "
        f"({len(todo)} to evaluate): {', '.join(candidates)}"
    )
    for i, (seed, key) in enumerate(todo, 1):
        slot = refined.setdefault(cache_slot(settings.steps, seed), {})
        evaluator = make_evaluator(replace(proxy, steps=settings.steps, seed=seed))
        slot[key] = evaluator.evaluate(tuple(int(e) for e in key.split(",")))
        save()
        scores = " ".join(f"{n} {v:.3f}" for n, v in slot[key]["scores"].items())
        note(f"refine {i}/{len(todo)}: map {key} seed {seed} fitness {slot[key]['fitness']:.4f} ({scores})")
    rows = []
    for key in candidates:
        recs = [refined[cache_slot(settings.steps, s)][key] for s in settings.seeds]
        fits = [float(r["fitness"]) for r in recs]
        tasks = list(recs[0]["scores"])
        rows.append(
            {
                "map": [int(e) for e in key.split(",")],
                "fitness": statistics.fmean(fits),
                "sd": statistics.stdev(fits) if len(fits) > 1 else 0.0,
                "per_seed": dict(zip((str(s) for s in settings.seeds), fits)),
                "scores": {t: statistics.fmean(float(r["scores"][t]) for r in recs) for t in tasks},
                "cpu_s": round(sum(float(r["cpu_s"]) for r in recs), 3),
            }
        )
    rows.sort(key=lambda r: -r["fitness"])  # stable: equal means keep the candidates' order (proxy fitness)
    return {
        "settings": settings.to_dict(),
        "candidates": rows,
        "pick": rows[0]["map"],
        "new_evaluations": len(todo),
        "cpu_s": round(sum(r["cpu_s"] for r in rows), 3),
    }
