"""One accuracy-vs-measured-latency plane per device for one task: the classifiers a user could deploy, side by side.

Points: the fine-tuned teacher in fp32 and its post-training INT8 (ORT dynamic on cpu-ort, NNCF on cpu-openvino),
built here; then every `--point NAME=FOLDER`, read by what the folder holds:
- a `quantize` output (quantization.json): its ONNX file on cpu-ort and its OpenVINO IR on cpu-openvino;
- a `prune` output or any fine-tuned classifier folder (students, truncated teachers): exported here in fp32
  (ONNX, and the IR OpenVINO builds from it) through the project's runtime path.
Each (point, runtime) is scored on the valid split (accuracy, macro-F1, label and probability loyalty to the
teacher's fp32 ONNX logits, classes matched by name) and timed in interleaved rounds of one measurement function
on its device (batch 1 x --eval-len real tokens, 1 thread; `--clock cpu` on a shared host), so speed-ups are
ratios measured in one run. Results cache in --work (rerun to resume); prints one table per device, writes
--plot (one panel per device).

    taskset -c 1 python benchmarks/bench_plane.py --task-dir ../shared/tasks/debian-sections \
        --teacher checkpoints/teacher-debian-sections --point "KDLSQ 8-bit=runs/kdlsq/q8" \
        --point "pruned x2=runs/prune/cpu-ort-x2" --work runs/plane-debian --plot plane-debian.png
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_quantize import _open, _size, build_exports, cpu_model, interleaved_rounds
from rich.console import Console
from rich.table import Table

from nasbert_deploy.fileio import write_json_atomic
from nasbert_deploy.quantize.check import task_logits
from nasbert_deploy.runtimes.timing import CLOCKS, round_statistic
from nasbert_deploy.student.finetune import load_classifier, model_labels
from nasbert_deploy.student.metrics import evaluate_logits
from nasbert_deploy.student.tasks import iter_batches, load_task

console = Console(width=170)
RUNTIME = {"cpu-ort": "onnxruntime", "cpu-openvino": "openvino"}


def exported(folder: Path, work: Path, calib: list[dict[str, np.ndarray]] | None = None, ptq: bool = False) -> dict[str, Path]:
    """{device: file} of a classifier folder: a quantize output's own files, else fp32 (or PTQ) exports made here."""
    meta_path = folder / "quantization.json"
    if meta_path.is_file():
        files = json.loads(meta_path.read_text())["files"]
        out = {"cpu-ort": folder / files["onnx"]} if files.get("onnx") else {}
        if files.get("openvino"):
            out["cpu-openvino"] = folder / files["openvino"]
        return out
    names = {"cpu-ort": ("cpu-ort-int8", "model.int8.onnx") if ptq else ("cpu-ort", "model.onnx"),
             "cpu-openvino": ("cpu-openvino-int8", "openvino_model.int8.xml") if ptq else ("cpu-openvino", "openvino_model.xml")}
    out = {dev: work / spec / f for dev, (spec, f) in names.items()}
    if all(p.is_file() for p in out.values()):
        return out
    model, _ = load_classifier(folder)
    build_exports(model, [(spec, work / spec) for spec, _ in names.values()], calib)
    return out


def points(a: argparse.Namespace, work: Path) -> dict[str, dict[str, Path]]:
    """name -> {device: file}."""
    teacher = Path(a.teacher)
    _, tok = load_classifier(teacher)
    calib = [{k: v.numpy() for k, v in b.items()}
             for _, b in iter_batches(tok, load_task(Path(a.task_dir) / "train.jsonl").subset(range(64)), 1, a.eval_len)]
    out = {"teacher fp32": exported(teacher, work / "teacher"),
           "teacher PTQ INT8": exported(teacher, work / "teacher", calib, ptq=True)}
    for name, path in a.folders.items():
        out[name] = exported(path, work / name.replace(" ", "_").replace("/", "_"))
    return out


def label_order(folder: Path, labels: list[str]) -> list[int]:
    """Column of each of `labels` in the logits of the classifier saved in `folder` (its config's id2label)."""
    id2label = json.loads((folder / "config.json").read_text())["id2label"]
    names = [id2label[str(i)] for i in range(len(id2label))]
    return [names.index(n) for n in labels]


def score(a: argparse.Namespace, pts: dict[str, dict[str, Path]], res: dict[str, Any], save: Any) -> None:
    teacher, tok = load_classifier(Path(a.teacher))
    labels = model_labels(teacher)
    valid = load_task(Path(a.task_dir) / "valid.jsonl")
    y = valid.label_ids({n: i for i, n in enumerate(labels)})
    ref = None
    for name, files in pts.items():
        order = label_order(a.folders.get(name, Path(a.teacher)), labels)  # columns in the teacher's order
        for dev, path in files.items():
            key = f"score/{name}/{dev}"
            if key in res:
                continue
            c = _open(path, dev == "cpu-openvino", int8=name == "teacher PTQ INT8")
            t0 = time.perf_counter()
            logits = task_logits(lambda x, c=c: c.run(x)[0], tok, valid, a.eval_len)[:, order]
            if ref is None:
                ref = res.get("_ref") or task_logits(lambda x, c=_open(pts["teacher fp32"]["cpu-ort"], False): c.run(x)[0],
                                                     tok, valid, a.eval_len).tolist()
                res["_ref"] = ref
            res[key] = {**evaluate_logits(y, logits, np.asarray(ref)).to_dict(), "score_s": round(time.perf_counter() - t0, 1)}
            save()
            console.print(f"{name} on {dev}: accuracy {res[key]['accuracy']:.4f}")


def latency(a: argparse.Namespace, pts: dict[str, dict[str, Path]], res: dict[str, Any], save: Any) -> None:
    _, tok = load_classifier(Path(a.teacher))
    _, batch = next(iter_batches(tok, load_task(Path(a.task_dir) / "valid.jsonl").subset([0]), 1, a.eval_len))
    ids = np.resize(batch["input_ids"][0].numpy(), (1, a.eval_len))  # batch 1 x eval_len real tokens
    inputs = {"input_ids": ids.astype(np.int64), "attention_mask": np.ones_like(ids, dtype=np.int64)}
    for dev in a.devices:
        if f"latency/{dev}" in res:
            continue
        compiled = {n: _open(f[dev], dev == "cpu-openvino", int8=n == "teacher PTQ INT8") for n, f in pts.items() if dev in f}
        rounds = interleaved_rounds(compiled, inputs, a.rounds, a.clock)
        ms = {n: round_statistic(v, "min") for n, v in rounds.items()}
        res[f"latency/{dev}"] = {n: {"median_ms": round(ms[n], 3), "rounds_ms": [round(x, 3) for x in v],
                                     "speedup": round(ms["teacher fp32"] / ms[n], 3),
                                     "file_mb": round(_size(pts[n][dev]) / 2**20, 2)} for n, v in rounds.items()}
        save()


def report(a: argparse.Namespace, pts: dict[str, dict[str, Path]], res: dict[str, Any]) -> None:
    for dev in a.devices:
        t = Table(title=f"{Path(a.task_dir).name} on {dev} ({res['machine']['cpu']}, {a.clock} clock, batch 1 x {a.eval_len})")
        for col in ("model", "accuracy", "macro-F1", "label loyalty", "prob. loyalty", "ms", "speed-up", "file MB"):
            t.add_column(col, justify="right")
        lat = res.get(f"latency/{dev}", {})
        for name in pts:
            s, m = res.get(f"score/{name}/{dev}"), lat.get(name)
            if s and m:
                t.add_row(name, f"{s['accuracy']:.4f}", f"{s['macro_f1']:.4f}", f"{s['label_loyalty']:.4f}",
                          f"{s['probability_loyalty']:.4f}", f"{m['median_ms']:.2f}", f"{m['speedup']:.2f}x",
                          f"{m['file_mb']:.1f}")
        console.print(t)
    if a.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(a.devices), figsize=(6.5 * len(a.devices), 4.5), squeeze=False)
        for ax, dev in zip(axes[0], a.devices):
            for name in pts:
                s, m = res.get(f"score/{name}/{dev}"), res.get(f"latency/{dev}", {}).get(name)
                if s and m:
                    ax.scatter(m["median_ms"], s["accuracy"])
                    ax.annotate(name, (m["median_ms"], s["accuracy"]), fontsize=7)
            ax.set_xscale("log")
            ax.set_xlabel(f"measured latency on {dev}, batch 1 x {a.eval_len} (ms, {a.clock} clock)")
            ax.set_ylabel(f"{Path(a.task_dir).name} valid accuracy")
            ax.grid(alpha=0.3)
        fig.suptitle(res["machine"]["cpu"], fontsize=8)
        fig.tight_layout()
        fig.savefig(a.plot, dpi=120)
        console.print(f"plot -> {a.plot}")


def die(msg: str) -> None:
    """Bad input: one line on stderr, exit 2, before any work."""
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task-dir", required=True, help="folder with train.jsonl and valid.jsonl")
    p.add_argument("--teacher", required=True, help="the fine-tuned teacher classifier (loyalty reference, PTQ baselines)")
    p.add_argument("--point", action="append", default=[], metavar="NAME=FOLDER", help="a classifier or quantize folder")
    p.add_argument("--devices", default="cpu-ort,cpu-openvino")
    p.add_argument("--eval-len", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--clock", choices=tuple(CLOCKS), default="wall", help="cpu: process CPU time (shared host)")
    p.add_argument("--work", default="runs/plane")
    p.add_argument("--plot", default=None)
    a = p.parse_args()
    a.devices = [d for d in a.devices.split(",") if d]
    bad = [d for d in a.devices if d not in RUNTIME]
    if bad:
        die(f"--devices {', '.join(bad)}; valid: {', '.join(RUNTIME)}")
    a.folders = {}
    for spec in a.point:
        name, _, path = spec.partition("=")
        if not name or not (Path(path) / "config.json").is_file():
            die(f"--point {spec!r} is not NAME=FOLDER with a classifier's config.json")
        a.folders[name] = Path(path)
    for what, folder in (("--teacher", Path(a.teacher)), ("--task-dir", Path(a.task_dir))):
        want = "config.json" if what == "--teacher" else "valid.jsonl"
        if not (folder / want).is_file():
            die(f"{what} {folder} has no {want}")
    torch.set_num_threads(1)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "plane.json"
    res: dict[str, Any] = json.loads(cache.read_text()) if cache.is_file() else {}
    res.setdefault("machine", {"cpu": cpu_model(), "pinned": repr(os.sched_getaffinity(0)), "clock": a.clock})

    def save() -> None:
        write_json_atomic(cache, res)

    pts = points(a, work)
    score(a, pts, res, save)
    latency(a, pts, res, save)
    report(a, pts, res)


if __name__ == "__main__":
    main()
