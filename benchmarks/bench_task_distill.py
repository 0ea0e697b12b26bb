"""The student recipe of docs/quality.md, end to end, with its seeds and its measured speed-up.

For each student architecture and seed: Extract-Then-Distill (`--init etd-impt`) from the teacher, then
pre-training-stage distillation on a corpus (`distill --steps N`, N = 0 keeps the extracted weights), then,
per task, fine-tuning with task distillation from the fine-tuned teacher (`finetune --teacher-model`),
optionally with a transfer set (`--transfer`: unlabelled in-domain text the teacher labels), and
`evaluate` on the valid split. `--task-steps N` puts TinyBERT's task-specific stage before the fine-tuning: the
encoder's hidden states distilled N steps from the fine-tuned teacher (`distill --teacher <teacher-ft>`) on the task's
train texts and transfer file, less every valid text (`task_corpus`). Then the teacher and every student encoder
are timed side by side (batch 1, 128 tokens, interleaved rounds; speed-up = median per-round ratio to the teacher).

Every step is a `nasbert-deploy` command run as a subprocess, exactly as docs/training.md gives it; a step
whose output exists is skipped and an interrupted one resumes, so rerunning the same command continues.

    python benchmarks/bench_task_distill.py --tasks ../shared/tasks --work runs/task-distill \\
        --corpus corpus.txt --heldout heldout.txt --teacher-ft debian-sections=runs/teacher-debian \\
        --teacher-ft wordnet-supersense=runs/teacher-wordnet --transfer debian-sections=debian.txt \\
        --archs "256:mha,ffn,id,id|256:mha,ffn,id,id|256:mha,ffn,id,id" --seeds 0,1 --distill-steps 1000
    python benchmarks/bench_task_distill.py --smoke      # shipped samples and a tiny budget: checks the wiring

Prints one table (mean and spread over seeds) and appends one JSON row per (task, arch, seed) to `--rows`.

Training on a GPU host, timing on the deployment host (speed-ups belong to the machine they are measured on):
`--no-timing --jobs N` there (the training commands pick the GPU; N (arch, seed) runs share it at once; `--stage
distill` / `--stage task` split the two halves), then here (each row's `init` and `space` are used; older rows
without `space` take `--space`):

    python benchmarks/bench_task_distill.py --time-rows rows-from-gpu.jsonl \
        --devices cpu-ort,cpu-openvino --rows rows-timed.jsonl    # rows keep `trained_on` and `train_machine`
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench_quality import machine
from plot_task_distill import bad_input, read_rows
from rich.console import Console
from rich.table import Table

from nasbert_deploy.student.tasks import SAMPLE_DIR

console = Console(width=170)
MAX_LEN = {"debian-sections": 128, "wordnet-supersense": 64}  # tokens: the tasks' texts (docs/quality.md)
TASK_DEFAULTS = {"kd": "mse", "epochs": 3, "lr": 1e-4}  # the task distillation's defaults (finetune's)
UNNAMED = {**TASK_DEFAULTS, "kd": "kl"}  # what folder names leave out: the recipe before --kd (old folders keep names)


def cli(*args: Any, log: Path) -> None:
    """One `nasbert-deploy` command, its output appended to `log`; exits with its code when it fails."""
    cmd = [sys.executable, "-m", "nasbert_deploy.cli.app", *map(str, args)]
    console.print(f"[dim]$ nasbert-deploy {' '.join(map(str, args))}[/dim]")
    t0 = time.perf_counter()
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
    if rc:
        raise SystemExit(f"error: step failed (exit {rc}); see {log}")
    console.print(f"[dim]  done in {time.perf_counter() - t0:.0f} s[/dim]")


def whole(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (0 or more)")
    return int(text)


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def pairs(values: list[str], what: str) -> dict[str, str]:
    out = {}
    for v in values:
        if "=" not in v:
            bad_input(f"{what} {v!r}: expected TASK=VALUE")
        k, val = v.split("=", 1)
        out[k] = val
    return out


def start_options(args: argparse.Namespace, init: str, space: str) -> list[str]:
    """The students' start for `distill` (`--supernet` only when given)."""
    return ["--init", init, "--space", space] + (["--supernet", args.supernet] if args.supernet else [])


def slug(arch: str) -> str:
    return arch.replace("|", "_").replace(":", "-").replace(",", ".")


def recipe_tag(args: argparse.Namespace) -> str:
    """The task-distillation settings a fine-tuned folder's name must carry to not be mistaken for another run's (a
    finished folder is skipped): the loss, epochs and learning rate where they differ from `UNNAMED`."""
    kd = "" if args.kd == UNNAMED["kd"] else f"-kd{args.kd}"
    epochs = "" if args.epochs == UNNAMED["epochs"] else f"-e{args.epochs}"
    return kd + epochs + ("" if args.lr == UNNAMED["lr"] else f"-lr{args.lr:g}")


def run_student(args: argparse.Namespace, arch: str, seed: int, tasks: dict[str, dict[str, Path]]) -> dict[str, Any]:
    """Encoder, fine-tuned classifiers and their valid-split reports for one (arch, seed)."""
    work = Path(args.work)
    init = "" if args.init == "etd-impt" else f"-{args.init}"  # the ETD folders of earlier runs keep their names
    enc = work / f"enc-{slug(arch)}{init}-d{args.distill_steps}-s{seed}"
    log = work / f"{enc.name}.log"
    if not (enc / "config.json").is_file():
        if args.stage == "task":
            bad_input(f"--stage task: no encoder {enc}; run --stage distill first")
        steps, lr = (args.distill_steps, args.distill_lr) if args.distill_steps else (1, 0.0)  # 1 step at lr 0: extraction only
        cli("distill", "--arch", arch, *start_options(args, args.init, args.space), "--corpus", args.corpus,
            "--valid-corpus", args.heldout, "--steps", steps, "--batch-size", args.distill_batch, "--seq-len", 64,
            "--lr", lr, "--seed", seed, "--out", enc, *args.teacher_opt, log=log)  # fmt: skip
    out: dict[str, Any] = {"encoder": str(enc), "tasks": {}}
    if args.stage == "distill":
        return out
    for task, files in tasks.items():
        rows = args.transfer_rows.get(task, 0)  # 0: the whole file
        tag = f"-transfer{rows or ''}" if task in args.transfer else ""
        tsd = f"-tsd{args.task_steps}" if args.task_steps else ""
        ft = work / f"ft-{task}-{slug(arch)}{init}-d{args.distill_steps}{tsd}-s{seed}{tag}{recipe_tag(args)}"
        ml = MAX_LEN.get(task, 128) if not args.smoke else 32
        teacher_ft = ensure_teacher(args, task, files["train"], ml)
        start = enc
        if args.task_steps:  # task-specific distillation of hidden states from the fine-tuned teacher (TinyBERT 2a)
            start = work / f"enc-{task}-{slug(arch)}{init}-d{args.distill_steps}{tsd}-s{seed}"
            if not (start / "config.json").is_file():
                corpus, held = task_corpus(args, task, files, work)
                cli("distill", "--from-export", enc, "--teacher", teacher_ft, "--corpus", corpus,
                    *(["--valid-corpus", held, "--heldout-every", max(1, args.task_steps // 2)] if held else []),
                    "--steps", args.task_steps, "--batch-size", args.distill_batch, "--seq-len", ml, "--lr", args.lr,
                    "--seed", seed, "--out", start, log=work / f"{start.name}.log")  # fmt: skip
        if not (ft / "config.json").is_file():
            extra = []
            if task in args.transfer:
                extra = ["--transfer", args.transfer[task], "--transfer-rows", rows]
            cli("finetune", "--model", start, "--task", files["train"], "--teacher-model", teacher_ft, "--epochs", args.epochs,
                "--lr", args.lr, "--batch-size", 16, "--max-len", ml, "--seed", seed, "--kd", args.kd, "--out", ft, *extra,
                log=log)  # fmt: skip
        report = ft.parent / f"{ft.name}.eval.json"
        if not report.is_file():
            cli("evaluate", "--model", ft, "--task", files["valid"], "--teacher-model", teacher_ft, "--max-len", ml,
                "--json", report, log=log)  # fmt: skip
        out["tasks"][task] = {"folder": str(ft), **json.loads(report.read_text())}
    return out


def task_corpus(args: argparse.Namespace, task: str, files: dict[str, Path], work: Path) -> tuple[Path, Path | None]:
    """The text of `--task-steps`: the task's train texts and its whole transfer file less every text of train or
    valid (`finetune`'s rule: the valid split is never seen), shuffled (seed 1); held out: the first 1,000 transfer
    texts (seed 0 shuffle), or None without a transfer file. Written once (atomic), shared by every run."""
    import random

    from nasbert_deploy.fileio import atomic_path
    from nasbert_deploy.student.finetune import transfer_texts
    from nasbert_deploy.student.tasks import load_task

    corpus, held = work / f"task-corpus-{task}.txt", work / f"task-heldout-{task}.txt"
    with _GUARD:
        if not corpus.is_file():
            train, valid = load_task(files["train"]), load_task(files["valid"])
            extra = transfer_texts(args.transfer[task], train, valid) if task in args.transfer else []
            random.Random(0).shuffle(extra)
            text = list(train.texts) + extra[1000:]
            random.Random(1).shuffle(text)
            for path, lines in ((held, extra[:1000]), (corpus, text)):  # the held-out file first: corpus marks done
                if lines:
                    with atomic_path(path) as tmp:
                        tmp.write_text("\n".join(t.replace("\n", " ") for t in lines) + "\n", encoding="utf-8")
    return corpus, held if held.is_file() else None


_LOCKS: dict[str, threading.Lock] = {}  # --jobs: one run fine-tunes a missing teacher, the others wait for it
_GUARD = threading.Lock()


def ensure_teacher(args: argparse.Namespace, task: str, train: Path, max_len: int) -> str:
    """The fine-tuned teacher for `task`: `--teacher-ft TASK=DIR`, fine-tuned there first if missing."""
    with _GUARD:
        lock = _LOCKS.setdefault(task, threading.Lock())
    with lock:
        return _ensure_teacher(args, task, train, max_len)


def _ensure_teacher(args: argparse.Namespace, task: str, train: Path, max_len: int) -> str:
    folder = Path(args.teacher_ft.setdefault(task, str(Path(args.work) / f"teacher-{task}")))
    if not (folder / "config.json").is_file():
        epochs = ["--epochs", "1"] if args.smoke else []
        cli("finetune-teacher", "--task", train, "--max-len", max_len, "--out", folder, *epochs, *args.teacher_opt,
            log=Path(args.work) / f"teacher-{task}.log")  # fmt: skip
    return str(folder)


def speedups(args: argparse.Namespace, encoders: dict[str, str]) -> dict[str, dict[str, float]]:
    """Per device: encoder name -> speed-up over the teacher (median per-round ratio), measured side by side."""
    from nasbert_deploy.devices import load_device
    from nasbert_deploy.student.baselines import measure_encoders
    from nasbert_deploy.teacher import resolve_teacher_path

    folders = {"teacher": resolve_teacher_path(args.teacher), **{k: Path(v) for k, v in encoders.items()}}
    out = {}
    for device in args.devices.split(","):
        res = measure_encoders(folders, load_device(device), rounds=args.rounds, clock=args.clock)
        out[device] = {k: 1.0 / v["ratio_to_first"] for k, v in res.items()}
        out[device]["teacher_ms"] = res["teacher"]["median_ms"]
        console.print(f"{device}: teacher {res['teacher']['median_ms']:.2f} ms; "
                      + ", ".join(f"{k} {out[device][k]:.2f}x" for k in encoders))
    return out


def trained_on() -> str:
    """Where the training steps ran ('auto' picks a GPU when torch sees one): the GPU's name, or 'cpu'."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def extracted(args: argparse.Namespace, arch: str, init: str, space: str) -> str:
    """`arch` extracted for timing under WORK (`distill --steps 1 --lr 0` from the `init` start; latency does not
    depend on the weights); an existing folder is reused."""
    work = Path(args.work)
    folder = work / f"time-{slug(arch)}-{init}"
    if not (folder / "config.json").is_file():
        corpus = args.corpus or str(SAMPLE_DIR / "pydoc-sections-sample-train.jsonl")
        cli("distill", "--arch", arch, *start_options(args, init, space), "--corpus", corpus, "--steps", 1, "--lr", 0.0,
            "--batch-size", 2, "--seq-len", 16, "--out", folder, *args.teacher_opt, log=work / "time.log")  # fmt: skip
    return str(folder)


def time_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Rows of a `--no-timing` run (trained elsewhere, e.g. on a GPU host), timed on this machine: each arch is
    extracted once (`distill --steps 1 --lr 0`, same `--init`; latency does not depend on the weights) and timed
    side by side with the teacher. Returns the rows with `speedup`, `teacher_ms` and `machine` of this host."""
    rows = args.rows_to_time
    folders = {arch: extracted(args, arch, init, space) for arch, init, space in
               dict.fromkeys((r["arch"], r.get("init", "etd-impt"), r.get("space", args.space)) for r in rows)}
    speed, host = speedups(args, folders), machine()
    for r in rows:
        r["train_machine"] = r.get("train_machine", r.get("machine"))
        r["machine"] = host
        r["speedup"] = {d: round(v[r["arch"]], 3) for d, v in speed.items()}
        r["teacher_ms"] = {d: round(v["teacher_ms"], 3) for d, v in speed.items()}
    return rows


def table(rows: list[dict[str, Any]], device: str | None) -> None:
    t = Table(title=f"task distillation, valid splits (mean ± sd over seeds); speed-up on {device or '(not timed)'}")
    speed = f"speed-up {device}" if device else "speed-up"
    for col in ("task", "arch", "d-steps", "transfer", "kd · ep", "seeds", speed, "acc", "macro-F1", "label loy.",
                "prob. loy.", "teacher acc", "share"):
        t.add_column(col)
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        steps = r["distill_steps"] if not r.get("task_steps") else f"{r['distill_steps']}+{r['task_steps']} task"
        recipe = f"{r.get('kd', 'kl')} · {r.get('epochs', '?')}"  # rows from before --kd were KL
        groups.setdefault((r["task"], r["arch"], steps, r["transfer_rows"], recipe), []).append(r)

    def ms(rs: list[dict[str, Any]], k: str) -> str:
        v = [r[k] for r in rs]
        return f"{statistics.mean(v):.3f}" + (f" ± {statistics.stdev(v):.3f}" if len(v) > 1 else "")

    for (task, arch, steps, transfer, recipe), rs in groups.items():
        speed = f"{rs[0]['speedup'][device]:.2f}x" if device else "-"
        t.add_row(task, arch, str(steps), str(transfer), recipe, str(len(rs)), speed, ms(rs, "accuracy"),
                  ms(rs, "macro_f1"), ms(rs, "label_loyalty"), ms(rs, "probability_loyalty"),
                  f"{rs[0]['teacher_accuracy']:.3f}", ms(rs, "share_of_teacher"))
    console.print(t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="../shared/tasks", help="folder with debian-sections/ and wordnet-supersense/")
    ap.add_argument("--task-names", default="debian-sections,wordnet-supersense")
    ap.add_argument("--smoke", action="store_true", help="shipped samples, tiny budget: checks the wiring (a few minutes)")
    ap.add_argument("--archs", default="256:mha,ffn,id,id|256:mha,ffn,id,id|256:mha,ffn,id,id", help="';'-separated")
    ap.add_argument("--space", default="minilm-wide")
    ap.add_argument("--init", choices=("etd-impt", "etd-rand", "supernet", "random"), default="etd-impt",
                    help="the students' start (supernet: the shipped one, or --supernet DIR; use --space minilm)")
    ap.add_argument("--supernet", default=None, help="supernet folder for --init supernet (default: the shipped one)")
    ap.add_argument("--teacher", default=None, help="teacher encoder (default: the offline MiniLM-L6)")
    ap.add_argument("--teacher-ft", action="append", default=[], help="TASK=DIR: fine-tuned teacher (made if missing)")
    ap.add_argument("--transfer", action="append", default=[], help="TASK=FILE: transfer set for that task")
    ap.add_argument("--transfer-rows", action="append", default=[], help="TASK=N: lines of the transfer set to use")
    ap.add_argument("--corpus", default=None, help="distillation corpus (one paragraph per line)")
    ap.add_argument("--heldout", default=None, help="held-out text for the distillation report")
    ap.add_argument("--distill-steps", type=int, default=1000)
    ap.add_argument("--distill-lr", type=float, default=3e-4)
    ap.add_argument("--distill-batch", type=int, default=32)
    ap.add_argument("--task-steps", type=whole, default=0, help="N > 0: before fine-tuning, distil the encoder's hidden "
                    "states N steps from the fine-tuned teacher on the task's train texts + transfer file (less valid)")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--epochs", type=int, default=TASK_DEFAULTS["epochs"])
    ap.add_argument("--lr", type=float, default=TASK_DEFAULTS["lr"])
    ap.add_argument("--kd", choices=("kl", "mse"), default=TASK_DEFAULTS["kd"], help="finetune --kd: the distillation term")
    ap.add_argument("--devices", default="cpu-ort")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="cpu", help="cpu: robust to other load on a shared host")
    ap.add_argument("--jobs", type=positive, default=1, help="(arch, seed) runs at once (a GPU host: small students share "
                    "one GPU; timing still runs alone, after them)")
    ap.add_argument("--stage", choices=("all", "distill", "task"), default="all",
                    help="distill: the encoders only; task: fine-tune and evaluate distilled encoders (then time)")
    ap.add_argument("--no-timing", action="store_true", help="write rows without speed-ups (train on one host ...)")
    ap.add_argument("--time-rows", default=None, help="... then time the archs of those rows here, side by side")
    ap.add_argument("--work", default="runs/task-distill")
    ap.add_argument("--rows", default=None, help="JSONL to append rows to (default: WORK/rows.jsonl)")
    args = ap.parse_args()
    args.rows_to_time = read_rows(args.time_rows, "--time-rows") if args.time_rows else None
    work = Path(args.work)
    names = args.task_names.split(",")
    if args.smoke:
        work.mkdir(parents=True, exist_ok=True)
        tasks = {"pydoc-sections": {"train": SAMPLE_DIR / "pydoc-sections-sample-train.jsonl",
                                    "valid": SAMPLE_DIR / "pydoc-sections-sample-valid.jsonl"}}
        corpus = work / "corpus.txt"
        corpus.write_text("\n".join(json.loads(line)["text"] for line in tasks["pydoc-sections"]["train"].open()) + "\n")
        args.corpus = args.heldout = str(corpus)
        args.distill_steps, args.epochs, args.seeds, args.rounds = min(args.distill_steps, 2), 1, "0", 1
        args.archs = "128:mha,ffn,id,id|128:id,id,id,id|128:ffn,id,id,id"
    elif not args.time_rows:
        tasks = {t: {s: Path(args.tasks) / t / f"{s}.jsonl" for s in ("train", "valid")} for t in names}
        missing = [str(p) for d in tasks.values() for p in d.values() if not p.is_file()]
        if missing or not args.corpus or not args.heldout:
            bad_input(f"missing {', '.join(missing) or '--corpus/--heldout'}")
    args.teacher_opt = ["--teacher", args.teacher] if args.teacher else []
    args.teacher_ft = pairs(args.teacher_ft, "--teacher-ft")
    args.transfer = pairs(args.transfer, "--transfer")
    args.transfer_rows = {k: int(v) if v.isdigit() else bad_input(f"--transfer-rows {k}={v!r}: expected a whole number")
                          for k, v in pairs(args.transfer_rows, "--transfer-rows").items()}
    work.mkdir(parents=True, exist_ok=True)  # after every input check: a bad one leaves nothing behind
    if args.time_rows:
        rows = time_rows(args)
        write_rows(args, rows)
        return
    keys = [(a, int(s)) for a in args.archs.split(";") for s in args.seeds.split(",")]
    with ThreadPoolExecutor(args.jobs) as pool:  # each run is a chain of subprocesses: threads only wait
        futures = {k: pool.submit(run_student, args, k[0], k[1], tasks) for k in keys}
    runs = {k: f.result() for k, f in futures.items()}
    if args.stage == "distill":
        console.print(f"distilled {len(runs)} encoders; run --stage task next")
        return
    speed = {} if args.no_timing else speedups(args, {f"{a}#{s}": r["encoder"] for (a, s), r in runs.items()})
    rows, host, where = [], machine(), trained_on()
    for (arch, seed), r in runs.items():
        for task, rep in r["tasks"].items():
            ftr = json.loads((Path(rep["folder"]) / "finetune_report.json").read_text())
            rows.append({"task": task, "arch": arch, "init": args.init, "seed": seed, "distill_steps": args.distill_steps,
                         "task_steps": args.task_steps, "transfer_rows": ftr.get("transfer_rows", 0), "epochs": args.epochs,
                         "lr": args.lr, "kd": args.kd,
                         "speedup": {d: round(v[f"{arch}#{seed}"], 3) for d, v in speed.items()},
                         "teacher_ms": {d: round(v["teacher_ms"], 3) for d, v in speed.items()},
                         "share_of_teacher": rep["accuracy"] / rep["teacher_accuracy"],
                         "train_s": ftr.get("train_s"), "machine": host, "trained_on": where, "space": args.space,
                         **{k: rep[k] for k in ("examples", "accuracy", "macro_f1", "label_loyalty", "probability_loyalty",
                                                "teacher_accuracy", "teacher_macro_f1")}})  # fmt: skip
    write_rows(args, rows)


def write_rows(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    with Path(args.rows or Path(args.work) / "rows.jsonl").open("a") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    for device in rows[0]["speedup"] or [None]:
        table(rows, device)
    host = rows[0]["machine"]
    threads = os.environ.get("OMP_NUM_THREADS", "?")
    console.print(f"trained on {rows[0].get('trained_on', 'cpu')}; timed on {host['cpu']}, {host['cores']} logical CPUs, "
                  f"{threads} threads")


if __name__ == "__main__":
    main()
