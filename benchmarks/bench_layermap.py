"""Does the GA-found distillation layer map beat the paper's heuristics (issue #15)?

1. `layer-map` search (the library's `search_layer_map`, cached and resumable) with proxy tasks made from the
   *train* files of `--shared`/tasks (debian-sections, wordnet-supersense probes, debian-retrieval MRR);
2. the GA's best map and the uniform / last-layers / first-layers heuristics, each distilled `--final-steps` from the
   same start weights with each of `--seeds` (the distillation seed: batch order), and scored on the *valid* splits
   (linear probes fitted on up to `--final-train-limit` train rows; MRR in the pool of the valid documents);
3. a table: proxy fitness, then per task and on average the mean over seeds with the seed-to-seed spread (max - min),
   and whether the GA map beats every heuristic by more than the spread.

Rows append to `--results` (JSON lines, one per map and seed); finished rows are skipped, an interrupted distillation
resumes from its checkpoint, so a rerun continues. Wiring check (minutes, not the experiment):

    python benchmarks/bench_layermap.py --shared ../shared --steps 2 --population 3 --generations 0 \
        --final-steps 2 --corpus-limit 64 --task-limit 48 --final-train-limit 64 --final-valid-limit 48 --work /tmp/lm-bench

The experiment (hours on one core):

    python benchmarks/bench_layermap.py --shared ../shared --init etd-impt --space minilm-wide \
        --student '256:mha,ffn,id,id|256:mha,ffn,id,id|256:mha,ffn,id,id' --steps 100 --final-steps 1000 --seeds 0,1

With `--refine-top 4 --refine-steps 300` the search's 4 best maps and the uniform one are scored again with a
300-step proxy under 2 seeds (`layermap.refine`); its pick is "ga-best", the search's own best "ga-proxy-best".

On a second core, `--maps '2,4,5,6;3,4,5,6;1,2,3,4'` with the same other arguments distils and scores those maps (the
heuristics, known before the search ends) without searching; the search's own run then finds their rows done.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

from make_corpus import write_corpus

ARCH = "256:mha,ffn,id|256:mha,ffn,id|256:sep5,mha,id"
TASKS = ("debian-sections", "wordnet-supersense", "debian-retrieval")


def final_tasks(shared: Path, train_limit: int, valid_limit: int | None) -> list[Any]:
    """The valid splits as `layermap.proxy.ProxyTask`s (probes fitted on a seeded sample of each train file)."""
    from nasbert_deploy.layermap.proxy import ProxyTask
    from nasbert_deploy.student.tasks import load_task

    def cut(data: Any, limit: int | None) -> Any:
        """A seeded sample of `limit` rows holding every label at least once (the probe must know each valid label)."""
        if limit is None or len(data) <= limit:
            return data
        order = random.Random(0).sample(range(len(data)), len(data))
        keep = set({data.labels[i]: i for i in reversed(order)}.values())  # each label's first row in `order`
        for i in order:
            if len(keep) >= limit:
                break
            keep.add(i)
        return data.subset(sorted(keep))

    out = []
    for name in TASKS:
        folder = shared / "tasks" / name
        if name == "debian-retrieval":
            out.append(ProxyTask(name, folder / "valid.jsonl", "retrieval"))
        else:
            train, valid = (
                cut(load_task(folder / "train.jsonl"), train_limit),
                cut(load_task(folder / "valid.jsonl"), valid_limit),
            )
            out.append(ProxyTask(name, folder / "valid.jsonl", "classification", train, valid))
    return out


def _done(results: Path) -> dict[str, dict[str, Any]]:
    if not results.is_file():
        return {}
    return {r["tag"]: r for r in map(json.loads, filter(str.strip, results.read_text().splitlines()))}


def _spread(values: list[float]) -> float:
    return max(values) - min(values) if values else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=Path("../shared"), help="folder with tasks/ and corpus/")
    ap.add_argument("--student", default=ARCH)
    ap.add_argument("--init", default="supernet", choices=("supernet", "random", "etd-impt", "etd-rand"))
    ap.add_argument("--space", default="minilm")
    ap.add_argument("--teacher", type=Path, default=None, help="default: the offline MiniLM-L6")
    ap.add_argument("--paragraphs", type=int, default=60000, help="corpus paragraphs written to --work")
    ap.add_argument("--steps", type=int, default=100, help="proxy distillation steps per map")
    ap.add_argument("--population", type=int, default=8)
    ap.add_argument("--generations", type=int, default=5)
    ap.add_argument("--corpus-limit", type=int, default=2000)
    ap.add_argument("--task-limit", type=int, default=400, help="rows of each proxy task file")
    ap.add_argument("--refine-top", type=int, default=0, help="layer-map's refine stage: N best maps scored again")
    ap.add_argument("--refine-steps", type=int, default=400, help="proxy steps of the refine stage")
    ap.add_argument("--refine-seeds", default="0,1", help="seeds of the refine stage")
    ap.add_argument("--final-steps", type=int, default=1000)
    ap.add_argument("--plot", type=Path, default=None, help="PNG: each compared map's proxy, refined and final score")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--final-train-limit", type=int, default=5000, help="train rows each final probe is fitted on")
    ap.add_argument("--final-valid-limit", type=int, default=None, help="valid rows scored (default: all)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("runs/layermap"))
    ap.add_argument("--results", type=Path, default=None, help="default: --work/results.jsonl")
    ap.add_argument("--maps", default=None, help="only distil and score these maps (e.g. '2,4,5,6;3,4,5,6'), no search: "
                    "a second process running finals beside the search (same --work and settings)")
    args = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # progress shows in a log file as it happens (nohup ... > log)
    try:  # the syntax before any work; each map's length and range once the student and teacher are known
        maps = [[int(v) for v in m.split(",")] for m in args.maps.split(";")] if args.maps else []
    except ValueError as e:
        print(f"error: --maps {args.maps!r}: {e}; valid: teacher layers per block, ';' between maps, e.g. '2,4,5,6;3,4,5,6'",
              file=sys.stderr)
        raise SystemExit(2) from None

    import torch

    torch.set_num_threads(args.threads)
    from dataclasses import replace

    from nasbert_deploy.layermap.ga import GASettings
    from nasbert_deploy.layermap.proxy import ProxySettings, mean_score, score_encoder
    from nasbert_deploy.layermap.refine import RefineSettings, parse_seeds
    from nasbert_deploy.layermap.request import LayerMapRequest, build_start, prepare
    from nasbert_deploy.layermap.run import search_layer_map
    from nasbert_deploy.student.distill import distill
    from nasbert_deploy.supernet.teacher_cache import read_paragraphs
    from nasbert_deploy.teacher import check_layer_map, format_layer_map, load_teacher

    shared, work = args.shared, args.work
    results = args.results or work / "results.jsonl"
    results.parent.mkdir(parents=True, exist_ok=True)
    corpus = write_corpus(shared, work / "corpus.txt", args.paragraphs)
    proxy = ProxySettings(
        steps=args.steps,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        lr=args.lr,
        corpus_limit=args.corpus_limit,
        task_limit=args.task_limit,
    )
    tasks = tuple(shared / "tasks" / t / "train.jsonl" for t in TASKS)
    request = LayerMapRequest(
        args.student,
        corpus,
        work / "search.json",
        tasks,
        args.teacher,
        args.init,
        args.space,
        proxy=proxy,
        ga=GASettings(population=args.population, generations=args.generations),
        force=True,
        refine=RefineSettings(args.refine_top, args.refine_steps, parse_seeds(args.refine_seeds)),
    )  # the result is rewritten; the cache (same settings) answers every known map
    prepared = prepare(request)
    if maps:
        try:
            given = [check_layer_map(m, prepared.num_blocks, prepared.num_layers) for m in maps]
        except ValueError as e:  # LayerMapError is one
            print(f"error: --maps {args.maps!r}: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        candidates = {f"given {format_layer_map(m)}": m for m in given}
        search, proxy_fitness = None, {}
    else:
        t0 = time.perf_counter()
        search = search_layer_map(request, note=print)
        print(
            f"search: best {format_layer_map(search['layer_map'])} fitness {search['fitness']:.4f}, "
            f"{len(search['evaluated'])} maps, {search['cpu_hours']:.3f} CPU-hours, {time.perf_counter() - t0:.0f} s"
        )
        candidates = {"ga-best": tuple(search["layer_map"])}  # after the refine stage when there is one
        if "ga_best" in search:  # the search's own best before the refine stage
            candidates["ga-proxy-best"] = tuple(search["ga_best"]["layer_map"])
            for r in search["refine"]["candidates"]:
                print(f"refined {format_layer_map(r['map']):<10} {r['fitness']:.4f} +- {r['sd']:.4f}  {r['per_seed']}")
        candidates.update({name: tuple(r["map"]) for name, r in search["heuristics"].items()})
        proxy_fitness = {format_layer_map(r["map"]): r["fitness"] for r in search["evaluated"]}
    teacher = load_teacher(prepared.teacher_path)
    start = build_start(request, prepared, teacher)  # the start every map distilled from in the search
    texts = read_paragraphs(corpus)
    evaluation = final_tasks(shared, args.final_train_limit, args.final_valid_limit)
    scoring = ProxySettings(task_limit=args.final_valid_limit or 10**9, max_len=128)  # rows of the retrieval file
    done = _done(results)
    limits = f"{args.final_train_limit}-{args.final_valid_limit}"
    if f"teacher-{limits}" not in done:
        row = {"tag": f"teacher-{limits}", "scores": score_encoder(prepared.teacher_path, evaluation, scoring, 128)}
        with results.open("a") as f:
            f.write(json.dumps(row) + "\n")
        done[row["tag"]] = row
    for m in dict.fromkeys(candidates.values()):  # the GA's best may be a heuristic: distilled once
        for seed in (int(s) for s in args.seeds.split(",")):
            tag = f"{format_layer_map(m)}-s{seed}-{args.final_steps}"
            done.update(_done(results))  # a second --maps process may have scored it meanwhile
            if tag in done:
                continue
            out = work / "final" / tag
            if not (out / "config.json").is_file():
                cfg = replace(proxy.distill_config(m), steps=args.final_steps, checkpoint_every=100, seed=seed)
                distill(copy.deepcopy(start), teacher, texts, out, cfg, note=print)
            scores = score_encoder(out, evaluation, scoring, 128)
            row = {
                "tag": tag,
                "map": list(m),
                "names": [k for k, v in candidates.items() if v == m],
                "seed": seed,
                "final_steps": args.final_steps,
                "proxy_fitness": proxy_fitness.get(format_layer_map(m)),
                "scores": scores,
                "mean": mean_score(scores),
                "student": prepared.student,
                "search": str(request.out),
            }
            with results.open("a") as f:
                f.write(json.dumps(row) + "\n")
            done[tag] = row
            print(json.dumps(row))
    if search is None:
        return  # the search's own run prints the comparison
    _table(candidates, set(search["heuristics"]), done, args, [int(s) for s in args.seeds.split(",")], proxy_fitness)
    if args.plot:
        plot(candidates, search, done, args, args.plot)
    t = done[f"teacher-{limits}"]["scores"]
    print("teacher on the same valid splits: " + ", ".join(f"{k} {v:.4f}" for k, v in t.items()))


def _table(
    candidates: dict[str, tuple[int, ...]], heuristics: set[str], done: dict[str, Any], args: argparse.Namespace,
    seeds: list[int], proxy_fitness: dict[str, float],
) -> None:
    from nasbert_deploy.teacher import format_layer_map

    print(f"\n{'map':<14} {'names':<26} {'proxy':>7} " + " ".join(f"{t[:14]:>16}" for t in TASKS) + f" {'mean':>16}")
    means: dict[str, tuple[float, float]] = {}
    for name, m in candidates.items():
        key = format_layer_map(m)
        rows = [done[f"{key}-s{s}-{args.final_steps}"] for s in seeds]
        cells = []
        for t in TASKS:
            vals = [r["scores"][t] for r in rows]
            cells.append(f"{sum(vals) / len(vals):.4f} ±{_spread(vals):.4f}")
        vals = [r["mean"] for r in rows]
        means[name] = (sum(vals) / len(vals), _spread(vals))
        proxy = proxy_fitness.get(key)  # rows a --maps process wrote have none
        print(
            f"{key:<14} {name:<26} {proxy if proxy is None else f'{proxy:.4f}':>7} "
            + " ".join(f"{c:>16}" for c in cells)
            + f" {means[name][0]:.4f} ±{means[name][1]:.4f}"
        )
    ga, heur = means["ga-best"], {k: v for k, v in means.items() if k in heuristics}
    margin = min(ga[0] - v[0] for v in heur.values())
    spread = max([ga[1]] + [v[1] for v in heur.values()])
    print(
        f"\nGA best minus the best heuristic after {args.final_steps} steps: {margin:+.4f} (largest seed spread {spread:.4f}): "
        + ("beats every heuristic beyond the seed spread" if margin > spread else "not shown better than the heuristics")
    )


def plot(
    candidates: dict[str, tuple[int, ...]], search: dict[str, Any], done: dict[str, Any], args: argparse.Namespace, path: Path
) -> None:
    """Bars per compared map: proxy fitness, refined fitness (when the refine stage ran) and the final mean score
    (mean over the seeds, error bar = max - min)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nasbert_deploy.teacher import format_layer_map

    seeds = [int(s) for s in args.seeds.split(",")]
    proxy = {format_layer_map(r["map"]): r["fitness"] for r in search["evaluated"]}
    refined = {format_layer_map(r["map"]): r for r in search.get("refine", {}).get("candidates", [])}
    keys = list(dict.fromkeys(format_layer_map(m) for m in candidates.values()))
    names = {k: "/".join(n for n, m in candidates.items() if format_layer_map(m) == k) for k in keys}
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.27
    for i, k in enumerate(keys):
        finals = [done[f"{k}-s{s}-{args.final_steps}"]["mean"] for s in seeds]
        bars = [
            (proxy.get(k), 0.0, "tab:grey", f"proxy ({search['settings']['proxy']['steps']} steps)"),
            (refined[k]["fitness"] if k in refined else None, refined[k]["sd"] if k in refined else 0.0, "tab:blue", "refined"),
            (sum(finals) / len(finals), _spread(finals), "tab:orange", f"after {args.final_steps} steps"),
        ]
        for j, (v, err, colour, label) in enumerate(bars):
            if v is not None:
                ax.bar(i + (j - 1) * width, v, width, yerr=err, color=colour, capsize=3, label=label if i == 0 else None)
    ax.set_xticks(range(len(keys)), [f"{k}\n{names[k]}" for k in keys], fontsize=8)
    ax.set_ylabel("mean of probe accuracies and MRR")
    ax.set_ylim(0.4, None)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    from nasbert_deploy.fileio import atomic_path

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    print(f"plot -> {path}")


if __name__ == "__main__":
    main()
