"""`layer-map` from the library's side: check everything, build the start weights once, run the genetic search with
every evaluated map cached, write the result.

On disk: `<out>.cache.json` (the fitness key, the teacher's scores, every evaluated map with its per-task scores,
fitness, seconds and CPU seconds; written atomically after each evaluation, so Ctrl-C loses at most the map in
flight) and, at the end, `out` (atomic). A rerun with the same fitness settings replays the search from the cache
(the GA is deterministic given the fitness values, `layermap.ga`) and evaluates only maps it has not seen; it says
"resuming: N maps already evaluated". GA settings may change between runs (more generations reuse the cache).

    result = search_layer_map(LayerMapRequest("128:mha,ffn,id|...", Path("corpus.txt"), Path("map.json")))
    result["layer_map"], result["fitness"], result["heuristics"]["uniform"]["fitness"]
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from nasbert_deploy.fileio import write_json_atomic
from nasbert_deploy.layermap.ga import GAResult, run_ga
from nasbert_deploy.layermap.maps import LayerMap, heuristic_maps, is_monotone, space_size
from nasbert_deploy.layermap.proxy import ProxyEvaluator, ProxySettings
from nasbert_deploy.layermap.refine import refine, refine_candidates
from nasbert_deploy.layermap.request import CACHE_KIND, RESULT_KIND, LayerMapRequest, Prepared, build_start, prepare
from nasbert_deploy.model.loop import ProgressFn
from nasbert_deploy.teacher import format_layer_map

Note = Callable[[str], None]


def _machine() -> dict[str, Any]:
    import torch

    from nasbert_deploy.profiling.host import cpu_model

    return {"cpu_model": cpu_model(), "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()}


class CachedFitness:
    """The GA's fitness function: a map's record from the cache, else evaluated, cached and written at once."""

    def __init__(self, request: LayerMapRequest, prepared: Prepared, evaluator: ProxyEvaluator, note: Note) -> None:
        self.request, self.prepared, self.evaluator, self.note = request, prepared, evaluator, note
        self.maps: dict[str, Any] = dict(prepared.cache.get("maps", {}))
        self.refined: dict[str, dict[str, Any]] = dict(prepared.cache.get("refined", {}))  # the refine stage's records
        self.teacher: dict[str, float] | None = prepared.cache.get("teacher_scores")
        self.used: dict[str, int] = {}  # map -> generation first asked, in order
        self.new = 0
        self.t0 = time.perf_counter()

    def save(self) -> None:
        write_json_atomic(
            self.request.cache_path,
            {
                "kind": CACHE_KIND,
                "key": self.prepared.key,
                "teacher_scores": self.teacher,
                "maps": self.maps,
                "refined": self.refined,
            },
        )

    def teacher_scores(self) -> dict[str, float]:
        if self.teacher is None:
            self.teacher = self.evaluator.teacher_scores()
            self.save()
        return self.teacher

    def __call__(self, m: LayerMap, generation: int) -> float:
        key = format_layer_map(m)
        self.used.setdefault(key, generation)
        if key not in self.maps:
            self.maps[key] = self.evaluator.evaluate(m)
            self.new += 1
            self.save()
            best = max(self.used, key=lambda k: self.maps[k]["fitness"])
            scores = " ".join(f"{n} {v:.3f}" for n, v in self.maps[key]["scores"].items())
            self.note(
                f"generation {generation}/{self.request.ga.generations}, evaluation {len(self.used)}: map {key} "
                f"fitness {self.maps[key]['fitness']:.4f} ({scores}) | best {self.maps[best]['fitness']:.4f} at "
                f"{best} | {time.perf_counter() - self.t0:.0f}s"
            )
        return float(self.maps[key]["fitness"])


def search_layer_map(
    request: LayerMapRequest, note: Note = print, progress: ProgressFn | None = None, prepared: Prepared | None = None
) -> dict[str, Any]:
    """The whole search; every input is checked before any work (`prepare`). Returns the result dict (also written
    to `request.out`)."""
    from nasbert_deploy.teacher import load_teacher

    t0, c0 = time.perf_counter(), time.process_time()
    prepared = prepared or prepare(request)
    n, L = prepared.num_blocks, prepared.num_layers
    teacher = load_teacher(prepared.teacher_path)
    start = build_start(request, prepared, teacher)
    evaluator = ProxyEvaluator(start, teacher, prepared.corpus, prepared.tasks, request.proxy, progress)
    fitness = CachedFitness(request, prepared, evaluator, note)
    cached = len(fitness.maps)
    if cached:
        note(f"resuming: {cached} maps already evaluated (cache {request.cache_path})")
    note(
        f"student {prepared.student['arch']} ({n} blocks), teacher {prepared.teacher_path} ({L} layers): "
        f"{space_size(n, L)} maps; {len(prepared.corpus)} paragraphs, tasks {', '.join(t.name for t in prepared.tasks)}"
    )
    teacher_scores = fitness.teacher_scores()
    setup_cpu = time.process_time() - c0
    heuristics = heuristic_maps(n, L)
    for m in heuristics.values():  # scored even when the population is too small to hold all three
        fitness(m, 0)

    def on_generation(s: dict[str, Any]) -> None:
        note(
            f"generation {s['generation']}/{request.ga.generations} done: {s['evaluations']} maps evaluated, "
            f"{s['new_maps']} new; best {s['best_fitness']:.4f} at {format_layer_map(s['best_map'])}, "
            f"mean {s['mean_fitness']:.4f}"
        )

    ga = run_ga(n, L, fitness, request.ga, on_generation)
    result = _result(request, prepared, fitness, ga, heuristics, teacher_scores)
    used_cpu = sum(fitness.maps[k]["cpu_s"] for k in fitness.used)
    if request.refine.top:
        used_cpu += _refine(request, result, fitness, start, teacher, prepared, progress, note)
    result.update(
        wall_s=round(time.perf_counter() - t0, 1),
        cpu_hours=round((used_cpu + setup_cpu) / 3600, 4),
        this_run={
            "new_evaluations": fitness.new,
            "cached_evaluations": len(fitness.used) - fitness.new,
            "cpu_s": round(time.process_time() - c0, 1),
        },
        machine=_machine(),
    )
    write_json_atomic(request.out, result)
    return result


def _refine(
    request: LayerMapRequest,
    result: dict[str, Any],
    fitness: CachedFitness,
    start: Any,
    teacher: Any,
    prepared: Prepared,
    progress: ProgressFn | None,
    note: Note,
) -> float:
    """The refine stage (`layermap.refine`): the search's top maps and the uniform one scored with a longer proxy;
    its pick becomes the result's `layer_map` (the search's own best stays as `ga_best`). Returns its CPU seconds."""
    uniform = format_layer_map(result["heuristics"]["uniform"]["map"])
    evaluated = [(format_layer_map(r["map"]), r["fitness"]) for r in result["evaluated"]]
    candidates = refine_candidates(evaluated, uniform, request.refine.top)

    def make(settings: ProxySettings) -> ProxyEvaluator:
        return ProxyEvaluator(start, teacher, prepared.corpus, prepared.tasks, settings, progress)

    rr = refine(candidates, request.refine, request.proxy, make, fitness.refined, fitness.save, note)
    pick = format_layer_map(rr["pick"])
    result["ga_best"] = {k: result[k] for k in ("layer_map", "fitness", "scores")}
    result.update(layer_map=rr["pick"], fitness=fitness.maps[pick]["fitness"], scores=fitness.maps[pick]["scores"])
    result["refine"] = rr
    best = rr["candidates"][0]
    note(
        f"refine: pick {pick} fitness {best['fitness']:.4f} +- {best['sd']:.4f} over {len(request.refine.seeds)} seeds "
        f"at {request.refine.steps} steps (search's best {format_layer_map(result['ga_best']['layer_map'])}, uniform {uniform})"
    )
    return float(rr["cpu_s"])


def _result(
    request: LayerMapRequest,
    prepared: Prepared,
    fitness: CachedFitness,
    ga: GAResult,
    heuristics: dict[str, LayerMap],
    teacher_scores: dict[str, float],
) -> dict[str, Any]:
    maps = fitness.maps

    def row(key: str) -> dict[str, Any]:
        rec = maps[key]
        m = [int(e) for e in key.split(",")]
        return {
            "map": m,
            "fitness": rec["fitness"],
            "scores": rec["scores"],
            "monotone": is_monotone(tuple(m)),
            "generation": fitness.used[key],
            "seconds": rec["seconds"],
            "cpu_s": rec["cpu_s"],
            "diverged": rec["diverged"],
        }

    evaluated = sorted((row(k) for k in fitness.used), key=lambda r: -r["fitness"])
    best = evaluated[0]  # the heuristics included: the GA starts from them, but a small population may not hold all
    return {
        "kind": RESULT_KIND,
        "layer_map": best["map"],
        "fitness": best["fitness"],
        "scores": best["scores"],
        "student": prepared.student,
        "teacher": str(prepared.teacher_path),
        "teacher_layers": prepared.num_layers,
        "student_blocks": prepared.num_blocks,
        "teacher_scores": teacher_scores,
        "heuristics": {name: row(format_layer_map(m)) for name, m in heuristics.items()},
        "evaluated": evaluated,
        "generations": ga.generations,
        "space_exhausted": ga.exhausted,
        "settings": {
            "ga": request.ga.to_dict(),
            "proxy": request.proxy.to_dict(),
            "corpus": str(request.corpus),
            "corpus_paragraphs": len(prepared.corpus),
            "tasks": [str(t.path) for t in prepared.tasks],
            "init": request.init,
            "space": request.space,
        },
        "cache": str(request.cache_path),
    }
