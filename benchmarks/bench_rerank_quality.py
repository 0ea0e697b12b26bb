"""Does the search's order predict frozen-embedding quality? The table loss against the whole-network held-out MSE.

The candidate table scores an architecture by the sum of its block losses, each measured with the teacher's own
input to the block (block-wise distillation); the whole extracted network feeds every block its predecessor's
output. `search --rerank T` orders the top T by the whole network's held-out MSE to the teacher instead
(`search/rerank.py`). This script takes the top `--top` architectures under one budget (the README quick start's by
default), extracts each from the supernet with its inherited weights, and scores it on frozen mean-pooled
embeddings: linear-probe accuracy on the classification tasks, MRR on retrieval, cosine to the teacher. It prints
one row per architecture, Spearman's rho of each ranking against the quality, and the quality of the model each
order would export (its first).

    python benchmarks/bench_rerank_quality.py --tasks ../shared/tasks --top 12 --stride 8 --out rerank-quality.json
    python benchmarks/bench_rerank_quality.py --smoke      # shipped samples, 4 archs: checks the wiring
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_quality import CLASSIFICATION, RETRIEVAL, machine, task_files
from rich.console import Console
from rich.table import Table

from nasbert_deploy.devices import load_device
from nasbert_deploy.fileio import write_json_atomic
from nasbert_deploy.search.problem import Budget
from nasbert_deploy.search.run import SearchRequest, run_search

console = Console(width=170)


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rho (average ranks for ties)."""

    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.mean(ra), statistics.mean(rb)
    num = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    den = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return num / den if den else 0.0


class Cached:
    """The teacher's embeddings, computed once per list of texts (every architecture is scored against them)."""

    def __init__(self, embedder: Any) -> None:
        self.embedder, self.memo = embedder, {}

    def encode(self, texts: Any) -> Any:
        key = tuple(texts)
        if key not in self.memo:
            self.memo[key] = self.embedder.encode(texts)
        return self.memo[key]


def score(folder: Path, tf: dict[str, dict[str, Path]], teacher: Any, max_len: int = 128) -> dict[str, float]:
    """Frozen-embedding quality of one encoder folder: probe accuracy per task, MRR, cosine to the teacher."""
    from nasbert_deploy.student.embeddings import Embedder
    from nasbert_deploy.student.quality import probe_scores, retrieval_quality
    from nasbert_deploy.student.tasks import load_task

    model = Embedder(folder, "torch", max_len=max_len)
    out: dict[str, float] = {}
    for t in CLASSIFICATION:
        r = probe_scores(model, load_task(tf[t]["train"]), load_task(tf[t]["valid"]), teacher)
        out[t] = r["probe_accuracy"]
        out[f"{t}_loyalty"] = r["label_loyalty"]
    r = retrieval_quality(model, tf[RETRIEVAL]["valid"], teacher)
    out["mrr"], out["cosine"] = r["mrr"], r.get("cosine_to_teacher", float("nan"))
    out["quality"] = statistics.mean([out[t] for t in CLASSIFICATION] + [out["mrr"]])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="../shared/tasks")
    ap.add_argument("--smoke", action="store_true", help="shipped samples, 4 architectures")
    ap.add_argument("--device", default="cpu-ort")
    ap.add_argument("--max-latency-ms", type=float, default=3.0, help="the README quick start's budget")
    ap.add_argument("--max-params", type=float, default=10e6)
    ap.add_argument("--table", default=None, help="latency table (default: the device's)")
    ap.add_argument("--top", type=int, default=30, help="architectures scored")
    ap.add_argument("--stride", type=int, default=1, help="take every Kth of the top top*K by table loss (spread)")
    ap.add_argument("--out", default=None, help="JSON of every row and the summary")
    args = ap.parse_args()
    if args.smoke:
        args.top, args.stride = 3, 2
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tf = task_files(args)

    from nasbert_deploy.search.rerank import read_heldout, rerank
    from nasbert_deploy.student.embeddings import Embedder
    from nasbert_deploy.supernet.default import resolve_supernet_dir
    from nasbert_deploy.supernet.network import Supernet
    from nasbert_deploy.teacher import load_teacher, load_tokenizer, resolve_teacher_path

    t0 = time.perf_counter()
    request = SearchRequest(Budget(args.max_latency_ms, int(args.max_params)), load_device(args.device),
                            table=Path(args.table) if args.table else None, top=args.top * args.stride)  # fmt: skip
    outcome = run_search(request)
    table_order = sorted(outcome.result.best, key=lambda s: s.loss)[:: args.stride][: args.top]
    net, _ = Supernet.load(resolve_supernet_dir(None))
    key = {"budget": [args.max_latency_ms, args.max_params, args.device], "table": str(outcome.latency_table),
           "archs": [str(s.arch) for s in table_order]}  # fmt: skip
    done = {}
    if args.out and Path(args.out).is_file():
        old = json.loads(Path(args.out).read_text())
        if old.get("key") == key:
            done = {r["arch"]: r for r in old["rows"]}
            console.print(f"resuming: {len(done)} of {len(table_order)} architectures already scored in {args.out}")
    mse = {r["arch"]: r["heldout_mse"] for r in done.values()}
    todo = [s for s in table_order if str(s.arch) not in mse]
    if todo:
        ranked = rerank([s.arch for s in todo], [s.loss for s in todo], net, load_teacher(None), read_heldout(None), 128)
        mse.update({str(r.arch): r.heldout_mse for r in ranked})
    console.print(f"{len(table_order)} architectures (every {args.stride}th of the top {args.top * args.stride} by table "
                  f"loss) under {args.max_latency_ms} ms / {args.max_params / 1e6:.0f}M params ({outcome.latency_table}); "
                  f"held-out MSE in {time.perf_counter() - t0:.0f} s")  # fmt: skip
    tok = load_tokenizer(None)
    teacher = Cached(Embedder(resolve_teacher_path(None), "torch", max_len=128))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, s in enumerate(table_order):
            if str(s.arch) in done:
                rows.append(done[str(s.arch)])
                continue
            folder = Path(tmp) / f"m{i}"
            net.extract(s.arch).save_pretrained(folder)
            tok.save_pretrained(folder)
            q = score(folder, tf, teacher)
            rows.append({"arch": str(s.arch), "table_loss": s.loss, "heldout_mse": mse[str(s.arch)],
                         "latency_ms": s.latency_ms, "params": s.params, **q})  # fmt: skip
            console.print(f"[dim]{i + 1}/{len(table_order)} {s.arch}: quality {q['quality']:.3f}[/dim]")
            if args.out:  # after every architecture: an interrupted run resumes from here
                write_json_atomic(Path(args.out), {"key": key, "rows": rows, "partial": True})
    t = Table(title="top architectures by table loss: frozen-embedding quality (valid splits)")
    for col in ("arch", "pred ms", "table loss", "held-out MSE", "debian", "wordnet", "MRR", "cosine", "quality"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["arch"], f"{r['latency_ms']:.2f}", f"{r['table_loss']:.4f}", f"{r['heldout_mse']:.4f}",
                  f"{r['debian-sections']:.3f}", f"{r['wordnet-supersense']:.3f}", f"{r['mrr']:.3f}", f"{r['cosine']:.3f}",
                  f"{r['quality']:.3f}")  # fmt: skip
    console.print(t)
    qual = [r["quality"] for r in rows]
    rho_table = spearman([-r["table_loss"] for r in rows], qual)
    rho_mse = spearman([-r["heldout_mse"] for r in rows], qual)
    by_mse = min(rows, key=lambda r: r["heldout_mse"])
    summary = {"rho_table_loss": rho_table, "rho_heldout_mse": rho_mse, "pick_table": rows[0], "pick_rerank": by_mse,
               "best_quality": max(qual), "median_quality": statistics.median(qual), "machine": machine(),
               "budget": {"latency_ms": args.max_latency_ms, "params": args.max_params, "device": args.device},
               "latency_table": str(outcome.latency_table), "seconds": time.perf_counter() - t0}  # fmt: skip
    console.print(f"Spearman rho with quality: table loss {rho_table:+.2f}, held-out MSE {rho_mse:+.2f}")
    console.print(f"export pick by table loss: {rows[0]['arch']} quality {rows[0]['quality']:.3f}; "
                  f"by held-out MSE: {by_mse['arch']} quality {by_mse['quality']:.3f}; best of the {len(rows)} "
                  f"{max(qual):.3f}, median {statistics.median(qual):.3f}")  # fmt: skip
    if args.out:
        write_json_atomic(Path(args.out), {"key": key, "rows": rows, "summary": summary})


if __name__ == "__main__":
    main()
