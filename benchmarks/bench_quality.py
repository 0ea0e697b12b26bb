"""Does the picked model keep the teacher's quality? The accuracy-vs-measured-latency plane, side by side.

Models (all measured in one run, on the same host):
- the teacher (fp32), and the teacher in INT8 (ONNX Runtime dynamic, NNCF on OpenVINO);
- the teacher truncated to its first k layers (`student.baselines.truncate_encoder`);
- the model the README's quick start exports (searched under 3 ms / 10M on cpu-ort, weights inherited
  from the shipped supernet);
- hand-designed uniform students of the space (`uniform_arch`) and searched students at the uniform
  students' predicted latencies, both with weights inherited from the same supernet and, with
  `--distill-steps N`, distilled with the same budget and recipe.
Stages (each cached in `--results`, so an interrupted run resumes where it stopped):
- `latency`: batch-1, 128-token latency on cpu-ort and cpu-openvino (interleaved rounds; speed-up
  is the median per-round ratio to the teacher);
- `frozen`: linear-probe accuracy / macro-F1 and label loyalty on the classification tasks, recall@1,
  MRR and ranking loyalty on retrieval, all on frozen mean-pooled embeddings;
- `task`: fine-tuning with task distillation from the fine-tuned teacher (`--teacher-ft TASK=DIR`),
  one run per seed; accuracy, macro-F1, label and probability loyalty on the valid split; for debian-retrieval
  (`--teacher-ft debian-retrieval=DIR`, or `=default`: the frozen teacher) retrieval distillation on its pairs,
  MRR, recall@1 and ranking loyalty on the valid split.
Prints one table per stage and draws the plane (`--plot`).

    python benchmarks/bench_quality.py --tasks ../shared/tasks --stages latency,frozen
    python benchmarks/bench_quality.py --tasks ../shared/tasks --stages task --seeds 0,1 \
        --teacher-ft debian-sections=runs/teacher-debian --teacher-ft wordnet-supersense=runs/teacher-wordnet
    python benchmarks/bench_quality.py --smoke          # shipped samples, a minute: checks the wiring
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from nasbert_deploy.devices import load_device
from nasbert_deploy.fileio import write_json_atomic
from nasbert_deploy.student.tasks import SAMPLE_DIR

console = Console(width=160)  # benchmark logs are read in files: no truncated cells
CLASSIFICATION = ("debian-sections", "wordnet-supersense")
RETRIEVAL = "debian-retrieval"
QUICKSTART_BUDGET = (3.0, 10_000_000)  # the README's quick start: --max-latency-ms 3 --max-params 10M on cpu-ort
UNIFORM = ((256, 4), (192, 3), (128, 3))  # (hidden, MHA+FFN pairs): BERT-small-like shapes of the minilm space


def task_files(args: argparse.Namespace) -> dict[str, dict[str, Path]]:
    if args.smoke:
        s = SAMPLE_DIR
        out = {t: {"train": s / f"{t}-sample-train.jsonl", "valid": s / f"{t}-sample-valid.jsonl"} for t in CLASSIFICATION}
        out[RETRIEVAL] = {"train": s / "debian-retrieval-sample.jsonl", "valid": s / "debian-retrieval-sample.jsonl"}
        return out
    root = Path(args.tasks)
    out = {t: {"train": root / t / "train.jsonl", "valid": root / t / "valid.jsonl"} for t in CLASSIFICATION}
    out[RETRIEVAL] = {"train": root / RETRIEVAL / "train.jsonl", "valid": root / RETRIEVAL / "valid.jsonl"}
    missing = [str(p) for d in out.values() for p in d.values() if not p.is_file()]
    if missing:
        print(f"error: task files missing: {', '.join(missing)} (pass --tasks DIR with the three task folders)", file=sys.stderr)
        raise SystemExit(2)
    return out


class Results:
    """A JSON file of finished measurements, keyed by stage/model/...; written atomically after each one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
        if self.data:
            console.print(f"resuming: {len(self.data)} measurements already in {path}")

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        write_json_atomic(self.path, self.data)


def machine() -> dict[str, Any]:
    info: dict[str, str] = {}
    try:  # lscpu's family / model too: two hosts with one marketing name differ (docs/profiling.md)
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break  # the first CPU's block is enough
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "cpu family", "model"):
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return {"cpu": info.get("model name", platform.processor()), "family": info.get("cpu family"), "model": info.get("model"),
            "cores": os.cpu_count(), "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M")}


def build_models(args: argparse.Namespace, work: Path) -> dict[str, Path]:
    """Encoder folders by name: teacher, truncated teachers, quick-start model, uniform and searched students."""
    from nasbert_deploy.export.pipeline import model_from_supernet, select_arch
    from nasbert_deploy.search.problem import Budget
    from nasbert_deploy.student.baselines import truncate_encoder, uniform_arch
    from nasbert_deploy.supernet.default import resolve_supernet_dir
    from nasbert_deploy.teacher import default_teacher_path, load_tokenizer

    teacher = Path(args.teacher) if args.teacher else default_teacher_path()
    models: dict[str, Path] = {"teacher": teacher}
    for k in args.truncate:
        folder = work / f"teacher-L{k}"
        if not (folder / "config.json").is_file():
            truncate_encoder(teacher, k, folder)
        models[f"teacher-L{k}"] = folder
    spec = load_device("cpu-ort")
    tok = load_tokenizer(teacher)
    net_dir = resolve_supernet_dir(None)
    archs = {"quickstart": select_arch(spec, Budget(QUICKSTART_BUDGET[0], QUICKSTART_BUDGET[1]), 1, 128, None).arch}
    from nasbert_deploy.export.measure import load_latency_table
    from nasbert_deploy.export.pipeline import supernet_space

    space = supernet_space(None)
    table = load_latency_table(spec, space)
    for hidden, pairs in UNIFORM:
        arch = uniform_arch(space, hidden, pairs)
        archs[f"uniform-H{hidden}-L{pairs}"] = arch
        budget = table.predict(arch, 1, 128).total_ms
        archs[f"searched@H{hidden}-L{pairs}"] = select_arch(spec, Budget(budget), 1, 128, None).arch
    for name, arch in archs.items():
        folder = work / name
        if not (folder / "config.json").is_file():
            model, _ = model_from_supernet(str(arch), net_dir)
            model.save_pretrained(str(folder))
            tok.save_pretrained(str(folder))
        models[name] = distilled(folder, teacher, args) if args.distill_steps and name != "quickstart" else folder
        console.print(f"{name}: {arch}")
    return models


def distilled(folder: Path, teacher: Path, args: argparse.Namespace) -> Path:
    """`folder` after pre-training-stage distillation with the shared budget (cached beside it)."""
    from nasbert_deploy.student.distill import DistillConfig, build_student, distill
    from nasbert_deploy.supernet.teacher_cache import read_paragraphs
    from nasbert_deploy.teacher import load_teacher

    out = folder.with_name(folder.name + f"-d{args.distill_steps}")
    if (out / "config.json").is_file():
        return out
    cfg = DistillConfig(steps=args.distill_steps, batch_size=32, seq_len=64, embedding_weight=1.0, similarity_weight=1.0)
    corpus = read_paragraphs(args.corpus, limit=args.corpus_limit)
    distill(build_student(from_export=folder), load_teacher(teacher), corpus, out, cfg, note=console.print)
    return out


def stage_latency(models: dict[str, Path], res: Results, args: argparse.Namespace) -> None:
    from nasbert_deploy.student.baselines import measure_encoders

    for device in args.devices:
        key = f"latency/{device}"
        if res.get(key):
            continue
        console.print(f"timing {len(models)} encoders on {device} ...")
        figures = measure_encoders(models, load_device(device), seq_len=128, rounds=args.rounds, clock=args.clock)
        res.put(key, {k: {**v, "speedup": 1.0 / v["ratio_to_first"], "clock": args.clock} for k, v in figures.items()})
        if args.int8:
            int8 = device + "-int8"
            figs = measure_encoders(
                {"teacher": models["teacher"]}, load_device(int8), seq_len=128, rounds=args.rounds, clock=args.clock
            )
            res.put(f"latency/{int8}", figs)


def stage_frozen(models: dict[str, Path], files: dict[str, dict[str, Path]], res: Results) -> None:
    from nasbert_deploy.student.embeddings import Embedder
    from nasbert_deploy.student.quality import probe_scores, retrieval_quality
    from nasbert_deploy.student.tasks import load_task

    teacher = Embedder(models["teacher"])
    for name, folder in models.items():
        emb = Embedder(folder)
        for task in CLASSIFICATION:
            key = f"frozen/{name}/{task}"
            if res.get(key) is None:
                train, valid = load_task(files[task]["train"]), load_task(files[task]["valid"])
                res.put(key, probe_scores(emb, train, valid, teacher))
        key = f"frozen/{name}/{RETRIEVAL}"
        if res.get(key) is None:
            res.put(key, retrieval_quality(emb, files[RETRIEVAL]["valid"], teacher))
        console.print(f"frozen scores: {name}")


def stage_task(
    models: dict[str, Path], files: dict[str, dict[str, Path]], res: Results, args: argparse.Namespace, work: Path
) -> None:
    from nasbert_deploy.student.finetune import FinetuneConfig, evaluate, finetune
    from nasbert_deploy.student.tasks import load_task

    teachers = dict(t.split("=", 1) for t in args.teacher_ft)
    if RETRIEVAL in teachers:
        stage_retrieval_task(models, files, res, args, work, teachers[RETRIEVAL])
    for task in CLASSIFICATION:
        if task not in teachers:
            console.print(f"[yellow]task stage skips {task}: no --teacher-ft {task}=DIR[/]")
            continue
        train, valid = load_task(files[task]["train"]), load_task(files[task]["valid"])
        if res.get(f"task/teacher/{task}") is None:
            res.put(f"task/teacher/{task}", evaluate(teachers[task], valid))
        for name, folder in models.items():
            if name == "teacher":
                continue
            for seed in args.seeds:
                key = f"task/{name}/{task}/seed{seed}"
                if res.get(key) is not None:
                    continue
                out = work / "ft" / f"{name}-{task}-s{seed}"
                cfg = FinetuneConfig(epochs=args.epochs, lr=args.lr, seed=seed)
                tr, sel = train.split(0.1, seed)  # model selection on a slice of train, never on valid
                finetune(folder, tr, sel, out, cfg, teachers[task], note=console.print)
                res.put(key, evaluate(out, valid, teachers[task]))
                console.print(f"task {task} {name} seed {seed}: acc {res.get(key)['accuracy']:.3f}")


def stage_retrieval_task(models: dict[str, Path], files: dict[str, dict[str, Path]], res: Results,
                         args: argparse.Namespace, work: Path, teacher_ft: str) -> None:
    """Retrieval task distillation (`finetune` on the pairs, InfoNCE + the teacher's similarity KL; `--teacher-ft
    debian-retrieval=DIR`, or `=default` for the frozen teacher), one run per seed; MRR and ranking loyalty on valid."""
    from nasbert_deploy.student.embeddings import Embedder
    from nasbert_deploy.student.quality import retrieval_quality
    from nasbert_deploy.student.retrieval import load_retrieval, split_pairs
    from nasbert_deploy.student.retrieval_training import RetrievalConfig, finetune_retrieval

    teacher = models["teacher"] if teacher_ft == "default" else Path(teacher_ft)
    ref = Embedder(teacher)
    if res.get(f"task/teacher/{RETRIEVAL}") is None:
        res.put(f"task/teacher/{RETRIEVAL}", retrieval_quality(ref, files[RETRIEVAL]["valid"]))
    data = load_retrieval(files[RETRIEVAL]["train"])
    for name, folder in models.items():
        for seed in args.seeds if name != "teacher" else ():
            key = f"task/{name}/{RETRIEVAL}/seed{seed}"
            if res.get(key) is not None:
                continue
            out = work / "ft" / f"{name}-{RETRIEVAL}-s{seed}"
            train, sel = split_pairs(data, 0.1, seed)  # model selection on a slice of train, never on valid
            cfg = RetrievalConfig(epochs=args.epochs, lr=args.lr, seed=seed)
            finetune_retrieval(folder, train, sel, out, cfg, teacher, note=console.print)
            res.put(key, retrieval_quality(Embedder(out), files[RETRIEVAL]["valid"], ref))
            console.print(f"task {RETRIEVAL} {name} seed {seed}: MRR {res.get(key)['mrr']:.3f}")


def mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f}±{statistics.stdev(values):.3f}"


def print_tables(models: dict[str, Path], res: Results, args: argparse.Namespace) -> None:
    t = Table(title="frozen embeddings (probe accuracy / MRR; kept = share of the teacher's)")
    cols = ("model", *(f"{d} ms" for d in args.devices), "speed-up", "debian acc", "wordnet acc", "loyalty", "MRR", "kept MRR")
    for col in cols:
        t.add_column(col, justify="right")
    for name in models:
        lat = [res.get(f"latency/{d}") or {} for d in args.devices]
        ms = [f"{x[name]['median_ms']:.2f}" if name in x else "-" for x in lat]
        speed = f"{lat[0][name]['speedup']:.1f}x" if name in lat[0] else "-"
        fz = [res.get(f"frozen/{name}/{t}") or {} for t in (*CLASSIFICATION, RETRIEVAL)]
        acc = [f"{f['probe_accuracy']:.3f}" if f else "-" for f in fz[:2]]
        loy = mean_sd([f["label_loyalty"] for f in fz[:2] if f])
        mrr = f"{fz[2]['mrr']:.3f}" if fz[2] else "-"
        kept = f"{fz[2]['kept_mrr']:.0%}" if fz[2] else "-"
        t.add_row(name, *ms, speed, *acc, loy, mrr, kept)
    console.print(t)
    tt = Table(title="task distillation (valid accuracy, mean±sd over seeds; loyalty to the fine-tuned teacher)")
    for col in ("model", "task", "accuracy", "macro-F1", "label loyalty", "prob. loyalty"):
        tt.add_column(col, justify="right")
    for task in CLASSIFICATION:
        teacher = res.get(f"task/teacher/{task}")
        if teacher:
            tt.add_row("teacher (fine-tuned)", task, f"{teacher['accuracy']:.3f}", f"{teacher['macro_f1']:.3f}", "1", "1")
        for name in models:
            runs = [v for k, v in res.data.items() if k.startswith(f"task/{name}/{task}/")]
            if runs:
                tt.add_row(name, task, mean_sd([r["accuracy"] for r in runs]), mean_sd([r["macro_f1"] for r in runs]),
                           mean_sd([r["label_loyalty"] for r in runs]), mean_sd([r["probability_loyalty"] for r in runs]))
    console.print(tt)
    tr = Table(title=f"retrieval task distillation ({RETRIEVAL} valid, mean±sd over seeds; loyalty to the teacher)")
    for col in ("model", "MRR", "recall@1", "kept MRR", "ranking loyalty@10"):
        tr.add_column(col, justify="right")
    teacher = res.get(f"task/teacher/{RETRIEVAL}")
    if teacher:
        tr.add_row("teacher", f"{teacher['mrr']:.3f}", f"{teacher['recall@1']:.3f}", "1", "1")
    for name in models:
        runs = [v for k, v in res.data.items() if k.startswith(f"task/{name}/{RETRIEVAL}/")]
        if runs:
            tr.add_row(name, *(mean_sd([r[k] for r in runs]) for k in ("mrr", "recall@1", "kept_mrr", "ranking_loyalty@10")))
    console.print(tr)


def plot(models: dict[str, Path], res: Results, args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.devices), figsize=(6 * len(args.devices), 4.5), squeeze=False)
    for ax, device in zip(axes[0], args.devices):
        lat = res.get(f"latency/{device}") or {}
        for name in models:
            f = res.get(f"frozen/{name}/debian-sections")
            if name in lat and f:
                ax.scatter(lat[name]["median_ms"], f["probe_accuracy"], label=name)
                ax.annotate(name, (lat[name]["median_ms"], f["probe_accuracy"]), fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel(f"measured latency on {device}, batch 1, 128 tokens (ms)")
        ax.set_ylabel("debian-sections probe accuracy (frozen)")
        ax.set_title(f"{device}: {res.get('machine', {}).get('cpu', '')}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    console.print(f"plot -> {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default="../shared/tasks", help="folder with the three task folders")
    ap.add_argument("--smoke", action="store_true", help="the shipped samples, 1 round: checks the wiring")
    ap.add_argument("--stages", default="latency,frozen", help="comma list of latency, frozen, task")
    ap.add_argument("--devices", default="cpu-ort,cpu-openvino")
    ap.add_argument("--int8", action="store_true", help="also time the teacher on the INT8 specs")
    ap.add_argument("--truncate", default="1,2,3", help="teacher layers kept by the truncated baselines")
    ap.add_argument("--teacher", default=None, help="teacher encoder folder (default: the offline MiniLM-L6)")
    ap.add_argument("--teacher-ft", action="append", default=[], help="TASK=DIR: fine-tuned teacher per task (task stage)")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--distill-steps", type=int, default=0, help="pre-training distillation steps per student (0: none)")
    ap.add_argument("--corpus", default="../shared/corpus/debian-descriptions.txt")
    ap.add_argument("--corpus-limit", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: process CPU time (a host shared with other CPU-bound jobs; 1-thread runtimes)")
    ap.add_argument("--work", default="runs/bench-quality")
    ap.add_argument("--results", default=None, help="results JSON (default: WORK/results.json)")
    ap.add_argument("--plot", default=None, help="PNG of the accuracy-latency plane")
    args = ap.parse_args()
    args.devices = args.devices.split(",")
    args.truncate = [int(k) for k in args.truncate.split(",") if k]
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    if args.smoke:
        args.rounds, args.truncate, args.epochs = 1, [1], 1
    stages = set(args.stages.split(","))
    files = task_files(args)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    res = Results(Path(args.results) if args.results else work / "results.json")
    if res.get("machine") is None:
        res.put("machine", machine())
    models = build_models(args, work)
    if "latency" in stages:
        stage_latency(models, res, args)
    if "frozen" in stages:
        stage_frozen(models, files, res)
    if "task" in stages:
        stage_task(models, files, res, args, work)
    print_tables(models, res, args)
    if args.plot:
        plot(models, res, args, Path(args.plot))


if __name__ == "__main__":
    main()
