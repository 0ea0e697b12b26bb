"""The teacher in its three forms, timed side by side: the BERT encoder itself, its NAS-BERT conversion with square
projection Linears (embedding, block boundaries, head: identities, as `finetune-teacher` wrote teachers before
`identity_projections`), and the conversion without them (`model.etd.convert_teacher` now).

Same weights, same outputs; the projections add 2 + L - 1 (d x d) matrix products on the residual stream. Timed with
`student.baselines.measure_encoders` (batch 1 x `--seq-len` tokens, 1 thread, interleaved rounds, median per-round
ratio to the BERT encoder):

    taskset -c 0 python benchmarks/bench_teacher_forms.py --devices cpu-ort,cpu-openvino --clock cpu --json forms.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from bench_quality import machine
from rich.console import Console
from rich.table import Table


def bad_input(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def write_forms(teacher: str | None, work: Path) -> dict[str, Path]:
    """The three encoder folders of `teacher` (default: the offline MiniLM) under `work`."""
    from nasbert_deploy.model.etd import extract_student, teacher_space, without_projections
    from nasbert_deploy.model.importance import Importance, teacher_shape
    from nasbert_deploy.teacher import load_teacher, resolve_teacher_path

    path = resolve_teacher_path(teacher)
    t = load_teacher(path)
    L, H, inner, D = teacher_shape(t.model)
    keep_all = Importance(torch.ones(L, H), torch.ones(L, inner), torch.ones(D), "all", 0)
    with_proj, _ = extract_student("|".join([f"{D}:mha,ffn"] * L), teacher_space(t.model), t.model, keep_all)
    out = {"BERT encoder": Path(path), "NAS-BERT, projections": work / "proj", "NAS-BERT, no projections": work / "id"}
    with_proj.save_pretrained(out["NAS-BERT, projections"])
    without_projections(with_proj).save_pretrained(out["NAS-BERT, no projections"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default=None, help="a local BERT encoder folder (default: the offline MiniLM-L6)")
    ap.add_argument("--devices", default="cpu-ort,cpu-openvino")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    ap.add_argument("--json", type=Path, default=None, help="write the figures and the machine here")
    args = ap.parse_args()
    from nasbert_deploy.devices import load_device
    from nasbert_deploy.errors import NasBertDeployError
    from nasbert_deploy.student.baselines import measure_encoders

    if args.seq_len < 2 or args.rounds < 1:
        bad_input(f"--seq-len {args.seq_len} / --rounds {args.rounds}: give at least 2 tokens and 1 round")
    try:
        specs = [load_device(d) for d in args.devices.split(",")]
    except NasBertDeployError as exc:
        bad_input(str(exc))
    torch.set_num_threads(1)
    console = Console()
    res: dict[str, object] = {"machine": machine(), "seq_len": args.seq_len, "rounds": args.rounds, "clock": args.clock}
    with tempfile.TemporaryDirectory(prefix="teacher-forms-") as work:
        try:
            folders = write_forms(args.teacher, Path(work))
        except NasBertDeployError as exc:
            bad_input(str(exc))
        t = Table(title=f"teacher forms, batch 1 x {args.seq_len}, 1 thread ({args.clock} clock)")
        for col in ("form", *[s.name for s in specs]):
            t.add_column(col)
        per = {s.name: measure_encoders(folders, s, seq_len=args.seq_len, rounds=args.rounds, clock=args.clock) for s in specs}
    for name in folders:
        t.add_row(name, *[f"{per[s.name][name]['median_ms']:.2f} ms ({per[s.name][name]['ratio_to_first']:.3f}x)"
                          for s in specs])
    console.print(t)
    res["devices"] = per
    if args.json:
        from nasbert_deploy.fileio import write_json_atomic

        write_json_atomic(args.json, res)


if __name__ == "__main__":
    main()
