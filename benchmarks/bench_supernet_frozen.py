"""Which supernet should ship? Frozen-embedding quality of the models each supernet gives, side by side.

For every supernet named with `--supernet NAME=DIR` (`shipped` = the package's default), this script
- searches its own candidate table under each budget of `--budgets` (ms on the given latency table, all supernets
  on the same table, `--max-params`) and extracts the pick with its inherited weights (what `export` would ship);
- extracts every fixed architecture of `--archs` too (the same shapes for every supernet, so the weights alone
  differ);
and scores each model on frozen mean-pooled embeddings (no task training): linear-probe accuracy and label loyalty
on debian-sections and wordnet-supersense, MRR on debian-retrieval, cosine to the teacher; "quality" is the mean
of the two probes and the MRR. Every scored row is kept in `--out` at once, so an interrupted run resumes.

    python benchmarks/bench_supernet_frozen.py --tasks ../shared/tasks --supernet shipped=default \\
        --supernet broad=runs/sn-broad --budgets 3,6 --out supernet-frozen.json
    python benchmarks/bench_supernet_frozen.py --smoke      # shipped samples and supernet, one budget: the wiring
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NoReturn

from bench_quality import CLASSIFICATION, RETRIEVAL, machine, task_files
from bench_rerank_quality import Cached, score
from rich.console import Console
from rich.table import Table

from nasbert_deploy.fileio import write_json_atomic

console = Console(width=170)
# the README quick start's pick on the shipped table before this comparison, and a BERT-like uniform shape
FIXED = ("256:sep7,sep5,ffn|256:mha,ffn,id|256:sep5,mha,id", "256:mha,ffn,id|256:mha,ffn,id|256:mha,ffn,id")


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_supernets(items: list[str]) -> dict[str, Path]:
    """NAME=DIR pairs (`DIR` = `default`: the shipped supernet) -> resolved supernet folders; exits 2 with one line
    on a bad one."""
    from nasbert_deploy.errors import CheckpointError
    from nasbert_deploy.supernet.default import resolve_supernet_dir

    out: dict[str, Path] = {}
    for item in items or ["shipped=default"]:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder or name in out:
            fail(f"--supernet {item!r}: use NAME=DIR (a new NAME each time; DIR 'default' = the shipped one)")
        try:
            out[name] = resolve_supernet_dir(None if folder == "default" else Path(folder))
        except CheckpointError as exc:  # no trained supernet there
            fail(f"--supernet {item!r}: {exc}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="../shared/tasks")
    ap.add_argument("--smoke", action="store_true", help="shipped samples, one budget, no fixed archs")
    ap.add_argument("--supernet", action="append", default=[], help="NAME=DIR, repeatable (default: shipped=default)")
    ap.add_argument("--device", default="cpu-ort")
    ap.add_argument("--table", default=None, help="latency table for every search (default: the device's shipped one)")
    ap.add_argument("--budgets", default="3", help="latency budgets in ms, comma-separated (3 = the README quick start)")
    ap.add_argument("--max-params", type=float, default=10e6)
    ap.add_argument("--archs", default=";".join(FIXED), help="fixed architectures for every supernet, ';'-separated")
    ap.add_argument("--out", default=None, help="JSON of every row (resumes from it)")
    args = ap.parse_args()
    supernets = parse_supernets(args.supernet)
    try:
        budgets = [float(b) for b in args.budgets.split(",") if b.strip()]
    except ValueError:
        fail(f"--budgets {args.budgets!r}: use milliseconds separated by commas, e.g. 3,6")
    if not budgets or min(budgets) <= 0:
        fail(f"--budgets {args.budgets!r}: give at least one positive number of milliseconds")
    fixed = [a for a in args.archs.split(";") if a.strip()] if not args.smoke else []
    tf = task_files(args)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)

    from nasbert_deploy.devices import load_device
    from nasbert_deploy.search.problem import Budget
    from nasbert_deploy.search.run import SearchRequest, run_search
    from nasbert_deploy.student.embeddings import Embedder
    from nasbert_deploy.supernet.default import CANDIDATES_FILE
    from nasbert_deploy.supernet.network import Supernet
    from nasbert_deploy.teacher import load_tokenizer, resolve_teacher_path

    t0 = time.perf_counter()
    done: dict[str, dict[str, Any]] = {}
    if args.out and Path(args.out).is_file():
        done = {r["key"]: r for r in json.loads(Path(args.out).read_text()).get("rows", [])}
        console.print(f"resuming: {len(done)} rows already scored in {args.out}")
    tok = load_tokenizer(None)
    teacher = Cached(Embedder(resolve_teacher_path(None), "torch", max_len=128))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, folder in supernets.items():
            net, meta = Supernet.load(folder)
            todo: list[tuple[str, str, float | None]] = []
            for ms in budgets:
                table = Path(args.table) if args.table else None
                req = SearchRequest(Budget(ms, int(args.max_params)), load_device(args.device), table=table,
                                    candidates=folder / CANDIDATES_FILE)  # fmt: skip
                pick = run_search(req).result.best[0]
                todo.append((f"pick {ms:g} ms", str(pick.arch), pick.latency_ms))
            todo += [("fixed", a, None) for a in fixed]
            for kind, arch, pred in todo:
                key = f"{name}|{folder.resolve()}|{arch}"
                if key not in done:
                    model = Path(tmp) / f"m{len(rows)}"
                    net.extract(arch).save_pretrained(model)
                    tok.save_pretrained(model)
                    done[key] = {"key": key, "supernet": name, "dir": str(folder), "arch": str(arch),
                                 "steps": meta.get("steps"), **score(model, tf, teacher)}  # fmt: skip
                rows.append({**done[key], "kind": kind, "predicted_ms": pred})
                r = rows[-1]
                console.print(f"[dim]{name} {kind} {arch}: quality {r['quality']:.3f}[/dim]")
                if args.out:
                    write_json_atomic(Path(args.out), {"rows": list(done.values()), "partial": True})
    t = Table(title="frozen-embedding quality of each supernet's models (valid splits, no task training)")
    for col in ("supernet", "model", "arch", "pred ms", *CLASSIFICATION, "MRR", "cosine", "quality"):
        t.add_column(col)
    for r in rows:
        pred = "" if r["predicted_ms"] is None else f"{r['predicted_ms']:.2f}"
        scores = [r[c] for c in (*CLASSIFICATION, "mrr", "cosine", "quality")]
        t.add_row(r["supernet"], r["kind"], r["arch"], pred, *(f"{v:.3f}" for v in scores))
    console.print(t)
    console.print(f"{len(rows)} models in {time.perf_counter() - t0:.0f} s; machine {machine()['cpu']}")
    if args.out:
        write_json_atomic(Path(args.out), {"rows": rows, "machine": machine(), "retrieval": RETRIEVAL,
                                           "budgets_ms": budgets, "max_params": args.max_params})  # fmt: skip


if __name__ == "__main__":
    main()
