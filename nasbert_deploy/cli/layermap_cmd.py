"""`layer-map`: the genetic search of the distillation layer map (which teacher layer supervises each student block;
Jiao et al. 2020), scored by short proxy distillations; the best map goes to `distill --layer-map FILE`.

Thin shell over `nasbert_deploy.layermap`; heavy imports happen inside the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from nasbert_deploy.cli.common import SeedOpt, SpaceName, StudentInitName, ThreadsOpt, choice, console, set_threads

app = typer.Typer()
CrossoverName = choice("CrossoverName", ("uniform", "one-point"))  # layermap.ga.CROSSOVERS (torch-free here)
MAX_GENERATIONS = 100  # layermap.ga.MAX_GENERATIONS
MAX_POPULATION = 256  # layermap.ga.MAX_POPULATION
MAX_REFINE_TOP = 64  # layermap.refine.MAX_REFINE_TOP


def _opt(*names: str, help: str, **kw: Any) -> Any:
    return typer.Option(*names, help=help, **kw)


@app.command("layer-map")
def layer_map_cmd(
    student: Annotated[
        str,
        _opt(
            "--student",
            help="Arch string of the student (weights from --init), or a NAS-BERT folder made by `export` or `distill`.",
        ),
    ],
    corpus: Annotated[Path, _opt("--corpus", help="Unlabelled text, one paragraph per line (a sample is distilled on).")],
    out: Annotated[
        Path,
        _opt(
            "--out",
            help="Result JSON (best map first); every scored map is cached in OUT.cache.json, and a rerun resumes from it.",
        ),
    ],
    tasks: Annotated[
        list[Path] | None,
        _opt(
            "--tasks",
            metavar="FILE",
            help="Proxy task file, repeatable: classification .jsonl/.csv "
            "(text, label; split for a linear probe) or retrieval .jsonl (query, "
            "document; MRR). Default: the shipped debian-sections, "
            "wordnet-supersense and debian-retrieval samples.",
        ),
    ] = None,
    teacher: Annotated[Path | None, _opt("--teacher", help="Teacher HF folder (default: offline MiniLM-L6).")] = None,
    init: Annotated[
        StudentInitName,
        _opt(
            "--init",
            help="Start an arch --student from supernet weights, random ones, or the teacher's units (etd-impt, etd-rand).",
        ),
    ] = StudentInitName("supernet"),
    space: Annotated[SpaceName, _opt("--space", help="Search space for --init random / etd-*.")] = SpaceName("minilm"),
    supernet: Annotated[Path | None, _opt("--supernet", help="Supernet folder (default: the shipped one).")] = None,
    population: Annotated[int, _opt("--population", min=2, max=MAX_POPULATION, help="Maps per generation.")] = 8,
    generations: Annotated[
        int, _opt("--generations", min=0, max=MAX_GENERATIONS, help="Generations bred after the initial one.")
    ] = 5,
    elite: Annotated[int, _opt("--elite", min=0, help="Best maps kept unchanged into the next generation.")] = 2,
    tournament: Annotated[int, _opt("--tournament", min=1, help="Members drawn per tournament selection.")] = 3,
    crossover: Annotated[CrossoverName, _opt("--crossover", help="Uniform (per entry) or one-point crossover.")] = CrossoverName(
        "uniform"
    ),
    crossover_rate: Annotated[
        float, _opt("--crossover-rate", min=0.0, max=1.0, help="Probability a child is a crossover.")
    ] = 0.9,
    mutation_rate: Annotated[
        float, _opt("--mutation-rate", min=0.0, max=1.0, help="Per-entry probability of resampling a teacher layer.")
    ] = 0.2,
    steps: Annotated[int, _opt("--steps", min=1, max=100_000, help="Distillation steps per map.")] = 100,
    corpus_limit: Annotated[int, _opt("--corpus-limit", min=1, help="Paragraphs sampled from --corpus.")] = 2000,
    task_limit: Annotated[int, _opt("--task-limit", min=4, help="Rows used per task file.")] = 400,
    batch_size: Annotated[int, _opt("--batch-size", min=1, help="Paragraphs per step.")] = 16,
    seq_len: Annotated[int, _opt("--seq-len", min=2, help="Tokens per paragraph.")] = 64,
    max_len: Annotated[int, _opt("--max-len", min=2, help="Tokens per task text when scoring embeddings.")] = 128,
    lr: Annotated[float, _opt("--lr", min=1e-8, help="AdamW learning rate.")] = 3e-4,
    block_weight: Annotated[float, _opt("--block-weight", min=1e-6, help="Weight of the mapped block losses.")] = 1.0,
    refine_top: Annotated[
        int,
        _opt(
            "--refine-top",
            min=0,
            max=MAX_REFINE_TOP,
            help="Score the search's N best maps and the uniform one again with --refine-steps under each "
            "--refine-seeds; the best mean is the result (0: no refine stage).",
        ),
    ] = 0,
    refine_steps: Annotated[
        int, _opt("--refine-steps", min=2, max=100_000, help="Distillation steps per map in the refine stage.")
    ] = 400,
    refine_seeds: Annotated[str, _opt("--refine-seeds", help="Comma-separated seeds of the refine stage.")] = "0,1",
    seed: SeedOpt = 0,
    threads: ThreadsOpt = 0,
    force: Annotated[bool, _opt("--force", help="Replace an existing --out, and a cache of other settings.")] = False,
) -> None:
    """Search which teacher layer supervises each student block (genetic algorithm, resumable, cached)."""
    from nasbert_deploy.layermap.ga import GASettings
    from nasbert_deploy.layermap.proxy import ProxySettings
    from nasbert_deploy.layermap.refine import RefineSettings, parse_seeds
    from nasbert_deploy.layermap.request import LayerMapRequest, prepare

    ga = GASettings(
        population=population,
        generations=generations,
        elite=elite,
        tournament=tournament,
        crossover=crossover.value,
        crossover_rate=crossover_rate,
        mutation_rate=mutation_rate,
        seed=seed,
    )
    proxy = ProxySettings(
        steps=steps,
        batch_size=batch_size,
        seq_len=seq_len,
        lr=lr,
        block_weight=block_weight,
        corpus_limit=corpus_limit,
        task_limit=task_limit,
        max_len=max_len,
        seed=seed,
    )
    refine = RefineSettings(top=refine_top, steps=refine_steps, seeds=parse_seeds(refine_seeds))
    request = LayerMapRequest(
        student, corpus, out, tuple(tasks or ()), teacher, init.value, space.value, supernet, proxy, ga, force, refine
    )
    prepared = prepare(request)  # every check before any work
    set_threads(threads)
    _run(request, prepared)


def _run(request: Any, prepared: Any) -> None:
    from nasbert_deploy.cli.common import training_progress
    from nasbert_deploy.layermap.run import search_layer_map
    from nasbert_deploy.teacher import format_layer_map

    def note(line: str) -> None:
        console.print(line, highlight=False, markup=False, soft_wrap=True)

    with training_progress("proxy distillation") as update:
        result = search_layer_map(request, note, update, prepared=prepared)
    h = result["heuristics"]
    heur = ", ".join(f"{name} {format_layer_map(r['map'])}: {r['fitness']:.4f}" for name, r in h.items())
    if "refine" in result:
        for r in result["refine"]["candidates"]:
            note(f"  refined {format_layer_map(r['map']):<12} {r['fitness']:.4f} +- {r['sd']:.4f}")
    note(
        f"best map {format_layer_map(result['layer_map'])}: fitness {result['fitness']:.4f} ({heur}); "
        f"{len(result['evaluated'])} maps, {result['wall_s']:.0f} s, {result['cpu_hours']:.3f} CPU-hours"
    )
    note(f"result: {request.out}; distil with it: nasbert-deploy distill --layer-map {request.out} ...")
