"""Which students clear a speed-up line on this machine: candidate architectures timed side by side with the teacher.

Before training a student for a target such as issue #12's "≥ 4× the teacher on cpu-ort", time the candidates
here, on the deployment host (speed-ups belong to the machine: the same `256:mha,ffn,id,id` × 3 student is 4.0–4.3×
on a 2-vCPU Xeon and 3.7–3.8× on an AMD EPYC). Each architecture is extracted once from its start (`distill --steps 1
--lr 0`; latency does not depend on the weights) and timed with the teacher in interleaved rounds (batch 1, 128
tokens; speed-up = median per-round ratio to the teacher; `--clock cpu`, the default, is robust to other load).

    python benchmarks/time_students.py --devices cpu-ort,cpu-openvino \\
        --archs "256:mha,ffn,id,id|256:mha,ffn,id,id|256:mha,ffn,id,id;256:mha,ffn,id,id|256:mha,ffn,id,id|192:mha,ffn,id,id"

Prints one table per device and writes the figures with the machine to `--json`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from bench_quality import machine
from bench_task_distill import console, extracted
from plot_task_distill import bad_input
from rich.table import Table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archs", required=True, help="';'-separated architectures of --space")
    ap.add_argument("--space", default="minilm-wide")
    ap.add_argument("--init", choices=("etd-impt", "etd-rand", "supernet", "random"), default="etd-impt")
    ap.add_argument("--supernet", default=None, help="supernet folder for --init supernet (default: the shipped one)")
    ap.add_argument("--teacher", default=None, help="teacher encoder (default: the offline MiniLM-L6)")
    ap.add_argument("--corpus", default=None, help="text for the extraction (default: a shipped sample)")
    ap.add_argument("--devices", default="cpu-ort")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="cpu")
    ap.add_argument("--work", default="runs/time-students")
    ap.add_argument("--json", default=None, help="write the figures here (atomic)")
    args = ap.parse_args()
    from nasbert_deploy.devices import load_device
    from nasbert_deploy.errors import NasBertDeployError
    from nasbert_deploy.space.searchspace import get_space

    archs = [a.strip() for a in args.archs.split(";") if a.strip()]
    try:
        space = get_space(args.space)
        for a in archs:
            space.parse(a)
        specs = [load_device(d) for d in args.devices.split(",")]
    except NasBertDeployError as exc:
        bad_input(str(exc))
    if not archs:
        bad_input("--archs is empty; give ';'-separated architectures, e.g. 192:mha,ffn,id,id|192:mha,ffn,id,id|...")
    if args.rounds < 1:
        bad_input(f"--rounds {args.rounds}: give 1 or more")
    if args.json and not Path(args.json).resolve().parent.is_dir():
        bad_input(f"--json {args.json}: its folder does not exist; give a file in an existing folder")
    from nasbert_deploy.fileio import write_json_atomic
    from nasbert_deploy.student.baselines import measure_encoders
    from nasbert_deploy.teacher import resolve_teacher_path

    args.teacher_opt = ["--teacher", args.teacher] if args.teacher else []
    Path(args.work).mkdir(parents=True, exist_ok=True)
    folders = {"teacher": resolve_teacher_path(args.teacher), **{a: extracted(args, a, args.init, args.space) for a in archs}}
    out = {"machine": machine(), "threads": os.environ.get("OMP_NUM_THREADS", "?"), "init": args.init,
           "space": args.space, "devices": {}}
    for spec in specs:
        res = measure_encoders(folders, spec, rounds=args.rounds, clock=args.clock)
        t = Table(title=f"{spec.name}: batch 1, 128 tokens, {args.rounds} interleaved rounds ({args.clock} clock)")
        for col in ("model", "median ms", "speed-up"):
            t.add_column(col)
        for name, v in res.items():
            t.add_row(name, f"{v['median_ms']:.2f}", f"{1 / v['ratio_to_first']:.2f}x")
        console.print(t)
        out["devices"][spec.name] = {k: {"median_ms": v["median_ms"], "speedup": 1 / v["ratio_to_first"]}
                                     for k, v in res.items()}
    console.print(f"timed on {out['machine']['cpu']}, {out['machine']['cores']} logical CPUs, {out['threads']} threads")
    if args.json:
        write_json_atomic(args.json, out)


if __name__ == "__main__":
    main()
