"""Structured pruning (`nasbert-deploy prune`) of a fine-tuned classifier at speed-up targets on one device.

Profiles (or loads) the device's pruning latency table for the model's width, measures the unpruned model on
the device, then prunes at each `--speedups` target (budget = unpruned measured latency / speed-up) with the
library call the command makes, and appends one JSON line per target to `--results`: budget, predicted and
measured latency of the unpruned and the pruned model (side by side, one run), accuracy, macro-F1, label and
probability loyalty against the unpruned model on the valid split, heads and neurons kept per layer,
parameters, the table's held-out prediction errors and the machine. Finished targets are skipped, so an
interrupted run resumes (and so does each prune run inside, from its `<out>.work` folder).

    taskset -c 0 python benchmarks/bench_prune.py --model /tmp/work/ft/teacher-debian \
        --task ../shared/tasks/debian-sections/train.jsonl --valid ../shared/tasks/debian-sections/valid.jsonl \
        --device cpu-ort --speedups 2,3 --steps 300 --clock cpu --work /tmp/prune/bench
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from nasbert_deploy.devices import load_device
from nasbert_deploy.profiling.host import cpu_model
from nasbert_deploy.prune.artefacts import measure_side_by_side
from nasbert_deploy.prune.from_nasbert import NASBERT_TYPE, to_pruned_bert
from nasbert_deploy.prune.profile import PruneProfileSettings
from nasbert_deploy.prune.run import PruneRequest, get_table, prune
from nasbert_deploy.prune.train import GateConfig
from nasbert_deploy.student.finetune import load_classifier
from nasbert_deploy.student.tasks import load_task


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--task", type=Path, required=True)
    ap.add_argument("--valid", type=Path, required=True)
    ap.add_argument("--device", default="cpu-ort")
    ap.add_argument("--speedups", default="2,3")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--finetune-epochs", type=int, default=1)
    ap.add_argument("--train-rows", type=int, default=0, help="use only the first N training rows (0 = all)")
    ap.add_argument("--validate", type=int, default=8, help="whole pruned models timed to check the table")
    ap.add_argument("--holdout", type=int, default=5, help="of those, held out of the table's scale fit")
    ap.add_argument("--table", type=Path, default=None)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="cpu: process CPU time (shared host)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/prune/bench"))
    ap.add_argument("--results", type=Path, default=Path(f"benchmarks/results/prune-{time.strftime('%Y-%m-%d')}.jsonl"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    spec = load_device(args.device)
    train, valid = load_task(args.task), load_task(args.valid)
    if args.train_rows:
        train = train.subset(range(min(args.train_rows, len(train))))
    done = set()
    if args.results.is_file():
        done = {(r["device"], r["speedup"], r["model"]) for r in map(json.loads, args.results.read_text().splitlines())}
    profile = PruneProfileSettings(validate=args.validate, holdout=args.holdout, clock=args.clock)
    model, _ = load_classifier(args.model)
    if model.config.model_type == NASBERT_TYPE:  # a mean-pooled NAS-BERT classifier: pruned in its BERT form
        model = to_pruned_bert(model)
    base = PruneRequest(model=args.model, train=train, valid=valid, out=args.work / "x", spec=spec, max_latency_ms=1.0,
                        table_path=args.table, profile=profile)
    table, table_path = get_table(base, model.config, lambda p, d, n: log(f"profiling {p} {d}/{n}") if d == n else None, log)
    log(f"table {table_path}: scale {table.scale:.3f}; validation " + ", ".join(
        f"{v['role']} {v['error_pct']:+.1f}%" for v in table.validation))
    kwargs = {**base.timing_kwargs, "clock": profile.timing_kwargs()["clock"]}
    unpruned = measure_side_by_side({"unpruned": model}, spec, profile.batch, profile.seq_len, kwargs)["unpruned"]["median_ms"]
    log(f"unpruned measured {unpruned:.2f} ms on {spec.name}")
    for sp in [float(x) for x in args.speedups.split(",")]:
        if (spec.name, sp, str(args.model)) in done:
            log(f"speed-up {sp:g}: done before, skipped")
            continue
        budget = round(unpruned / sp, 2)
        out = args.work / f"{spec.name}-x{sp:g}"
        log(f"speed-up {sp:g}: budget {budget} ms -> {out}")
        req = PruneRequest(model=args.model, train=train, valid=valid, out=out, spec=spec, max_latency_ms=budget,
                           gates=GateConfig(steps=args.steps), finetune_epochs=args.finetune_epochs,
                           table_path=table_path, profile=profile)
        t0 = time.perf_counter()

        def progress(d: int, n: int, v: dict[str, float]) -> None:
            if d % 25 == 0 or d == n:
                log(f"  step {d}/{n} " + " ".join(f"{k} {x:.4g}" for k, x in v.items()))

        rep = prune(req, progress, note=log, step=log)
        row: dict[str, Any] = {
            "model": str(args.model), "task": str(args.task), "device": spec.name, "speedup": sp, "budget_ms": budget,
            "unpruned_measured_before_ms": unpruned, "steps": args.steps, "finetune_epochs": args.finetune_epochs,
            "train_rows": len(train), "clock": args.clock, "valid_rows": len(valid), "wall_s": round(time.perf_counter() - t0, 1),
            "latency": rep["latency"], "quality": rep["quality"], "kept": rep["kept"], "params": rep["params"],
            "table": rep["table"], "cpu_model": cpu_model(), "out": str(out),
            "device_scale": rep["gates"].get("device_scale"), "calibration": rep["gates"].get("calibration"),
        }
        args.results.parent.mkdir(parents=True, exist_ok=True)
        with args.results.open("a") as f:
            f.write(json.dumps(row) + "\n")
        lat, q = rep["latency"]["models"], rep["quality"]
        log(f"speed-up {sp:g}: pruned predicted {lat['pruned']['predicted_ms']:.2f} measured {lat['pruned']['measured_ms']:.2f} "
            f"ms (unpruned {lat['unpruned']['measured_ms']:.2f}); acc {q['pruned']['accuracy']:.4f} vs "
            f"{q['unpruned']['accuracy']:.4f}; loyalty {q['pruned']['label_loyalty']:.4f}; kept {rep['kept']}")


if __name__ == "__main__":
    main()
