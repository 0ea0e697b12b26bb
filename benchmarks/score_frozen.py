"""Frozen-embedding quality of distilled encoders, and their latency side by side with the teacher's.

Each `--model NAME=DIR` (an encoder folder from `distill`, `truncate`, `export`, a retrieval `finetune`) is scored
on frozen mean-pooled embeddings of the valid splits, as docs/quality.md sections 8-11 score them
(`bench_rerank_quality.score`: linear probes on debian-sections and wordnet-supersense with label loyalty to the
teacher's probe, MRR in a pool of 1,000 on debian-retrieval, cosine to the teacher's embedding). One JSON line per
model goes to `--results`, with what its `distill_report.json` says (start, arch, steps, seed, losses, held-out
curve, training time) and a retrieval fine-tuning's report; a name already there is skipped, so an interrupted run
resumes. `--time` then measures the teacher and every model in one run, interleaved
rounds, on cpu-ort and cpu-openvino (`student.baselines.measure_encoders`), into `--latency-out`.

    python benchmarks/score_frozen.py --tasks ../shared/tasks --results rows.jsonl \
        --model uniform-s0=runs/uni-s0 --model truncated-s0=runs/trunc-s0
    taskset -c 1 python benchmarks/score_frozen.py --tasks ../shared/tasks --results rows.jsonl --no-score \
        --model uniform=runs/uni-s0 --model truncated=runs/trunc-s0 --time --clock cpu --rounds 9 --latency-out lat.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, NoReturn

from bench_quality import RETRIEVAL, machine, task_files
from bench_rerank_quality import Cached, score

from nasbert_deploy.devices import load_device
from nasbert_deploy.fileio import write_json_atomic

REPORT_KEYS = ("arch", "params", "init", "steps", "train_s")
CONFIG_KEYS = ("batch_size", "seq_len", "lr", "seed", "hidden_weight", "embedding_weight", "similarity_weight",
               "similarity_temperature", "query_weight")


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_models(items: list[str]) -> dict[str, Path]:
    models: dict[str, Path] = {}
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep or not name or not Path(folder, "config.json").is_file():
            fail(f"--model {item!r}: give NAME=DIR with DIR an encoder folder (config.json in it)")
        if name in models or name == "teacher":
            fail(f"--model name {name!r} given twice or reserved; valid: distinct names other than 'teacher'")
        models[name] = Path(folder)
    return models


def describe(folder: Path) -> dict[str, Any]:
    """What the folder's distillation report says about how it was made (empty for a folder without one), and a
    retrieval fine-tuning's report (`finetune --task pairs.jsonl`) under 'retrieval_finetune'."""
    row: dict[str, Any] = {}
    path = folder / "distill_report.json"
    if path.is_file():
        rep = json.loads(path.read_text())
        row = {k: rep[k] for k in REPORT_KEYS if k in rep}
        row.update({k: rep["config"][k] for k in CONFIG_KEYS if k in rep.get("config", {})})
        if "heldout_curve" in rep:
            row["heldout_curve"] = rep["heldout_curve"]
    path = folder / "finetune_report.json"
    if path.is_file() and (rep := json.loads(path.read_text())).get("kind") == "retrieval":
        keys = ("model", "teacher_model", "config", "train_rows", "valid_rows", "train_s", "best", "history")
        row["retrieval_finetune"] = {k: rep.get(k) for k in keys}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="../shared/tasks")
    ap.add_argument("--smoke", action="store_true", help="the shipped task samples instead of --tasks (wiring check)")
    ap.add_argument("--model", action="append", default=[], help="NAME=DIR, repeatable")
    ap.add_argument("--teacher", default=None, help="teacher encoder folder (default: the offline MiniLM-L6)")
    ap.add_argument("--max-len", type=int, default=128, help="tokens per text when scoring, and per timed input (the tasks' 128)")
    ap.add_argument("--results", required=True, help="JSON lines, one per model (appended; names already there skipped)")
    ap.add_argument("--no-score", action="store_true", help="only time (with --time)")
    ap.add_argument("--time", action="store_true", help="time the teacher and the models side by side")
    ap.add_argument("--devices", default="cpu-ort,cpu-openvino")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--clock", default="cpu", choices=("cpu", "wall"))
    ap.add_argument("--latency-out", default=None, help="JSON file for --time")
    a = ap.parse_args()
    models = parse_models(a.model)
    if not models:
        fail("no --model given; valid: one or more NAME=DIR")
    if a.time and not a.latency_out:
        fail("--time writes --latency-out FILE; give it")
    for flag, path in (("--results", a.results), ("--latency-out", a.latency_out)):
        if path and not Path(path).resolve().parent.is_dir():
            fail(f"{flag} {path}: its folder does not exist; valid: a file in an existing folder")
    try:
        devices = [load_device(d) for d in a.devices.split(",")]  # a bad device name fails before any work
    except Exception as exc:
        fail(f"--devices {a.devices!r}: {exc}")
    tf = task_files(a) if not a.no_score else {}  # timing alone reads no task file
    results = Path(a.results)
    done = {json.loads(line)["name"] for line in results.read_text().splitlines() if line.strip()} if results.is_file() else set()
    from nasbert_deploy.teacher import resolve_teacher_path

    if not a.no_score:
        from nasbert_deploy.student.embeddings import Embedder

        teacher = Cached(Embedder(resolve_teacher_path(a.teacher), "torch", max_len=a.max_len))
        for name, folder in models.items():
            if name in done:
                print(f"{name}: already in {results}, skipped")
                continue
            frozen = score(folder, tf, teacher, a.max_len)
            row = {"name": name, "folder": str(folder), **describe(folder), "frozen": frozen, "machine": machine()}
            with results.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{name}: debian {frozen['debian-sections']:.3f}  wordnet {frozen['wordnet-supersense']:.3f}  "
                  f"{RETRIEVAL} MRR {frozen['mrr']:.3f}  cosine {frozen['cosine']:.2f}")
    if a.time:
        from nasbert_deploy.student.baselines import measure_encoders

        folders = {"teacher": resolve_teacher_path(a.teacher), **models}
        vocab = int(json.loads((folders["teacher"] / "config.json").read_text())["vocab_size"])
        out: dict[str, Any] = {"machine": machine(), "clock": a.clock, "rounds": a.rounds, "batch": 1, "seq_len": a.max_len}
        for spec in devices:
            figs = measure_encoders(folders, spec, seq_len=a.max_len, rounds=a.rounds, clock=a.clock, vocab=vocab)
            out[spec.name] = {k: {**v, "speedup": 1.0 / v["ratio_to_first"]} for k, v in figs.items()}
            for k, v in out[spec.name].items():
                print(f"{spec.name:14s} {k:24s} {v['median_ms']:8.3f} ms  {v['speedup']:5.2f}x")
        write_json_atomic(Path(a.latency_out), out)


if __name__ == "__main__":
    main()
