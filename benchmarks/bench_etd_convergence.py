"""Issue #15's convergence measurement: held-out distillation loss against steps for one student under each start
(random, supernet, ETD-Rand, ETD-Impt), same budget, several seeds; how many steps each start needs to reach the
random start's final held-out loss.

Every run is `nasbert-deploy distill ... --valid-corpus HELDOUT --heldout-every N` as a subprocess (the report's
`heldout_curve`: the held-out losses at step 0 and every N steps); a run whose folder exists is skipped and an
interrupted one resumes, so rerunning the same command continues.

    python benchmarks/bench_etd_convergence.py --corpus corpus.txt --heldout heldout.txt --steps 1000 --every 100 \\
        --seeds 0,1 --work runs/etd-convergence
    python benchmarks/bench_etd_convergence.py --smoke     # shipped sample text, a tiny budget: checks the wiring

The student is `--arch` in `--space` (default `256:mha,ffn,id,id` x 3 in `minilm-wide`, MiniLM-L6's geometry, for
random and ETD starts); the supernet start needs a supernet of that space, and the shipped one is `minilm`, so it
runs `--supernet-arch` (default `256:mha,ffn,id` x 3: the same widths and operations, blocks of three layers) in
it. The metric is the held-out hidden-state FVU (MSE over the teacher's variance: comparable across spaces) on
the first 20 batches of `--heldout`. Prints a table (mean and spread over seeds), appends one JSON row per run to
`--rows`, and draws the curves to `--plot`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench_quality import machine
from rich.console import Console
from rich.table import Table

from nasbert_deploy.search.rerank import SAMPLE_TEXT

console = Console(width=160)
INITS = ("random", "supernet", "etd-rand", "etd-impt")


def run(args: argparse.Namespace, init: str, seed: int) -> dict[str, Any]:
    """The distill report of one (init, seed), made first if missing."""
    out = Path(args.work) / f"{init}-s{seed}"
    report = out / "distill_report.json"
    if not report.is_file():
        arch, space = (args.supernet_arch, []) if init == "supernet" else (args.arch, ["--space", args.space])
        cmd = [sys.executable, "-m", "nasbert_deploy.cli.app", "distill", "--arch", arch, "--init", init, *space,
               "--corpus", args.corpus, "--valid-corpus", args.heldout, "--heldout-every", str(args.every),
               "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
               "--lr", str(args.lr), "--seed", str(seed), "--threads", "1", "--out", str(out)]
        console.print(f"[dim]$ nasbert-deploy {' '.join(cmd[3:])}[/dim]")
        t0 = time.perf_counter()
        with (Path(args.work) / f"{out.name}.log").open("a") as log:
            rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
        if rc:
            raise SystemExit(f"error: distill failed (exit {rc}); see {args.work}/{out.name}.log")
        console.print(f"[dim]  done in {time.perf_counter() - t0:.0f} s[/dim]")
    return json.loads(report.read_text())


def steps_to_reach(curve: list[dict[str, Any]], target: float, key: str) -> float | None:
    """First step at which the curve is at or below `target` (linear between points), or None if it never is."""
    prev = None
    for p in curve:
        if p[key] <= target:
            if prev is None or prev[key] == p[key]:
                return float(p["step"])
            frac = (prev[key] - target) / (prev[key] - p[key])
            return prev["step"] + frac * (p["step"] - prev["step"])
        prev = p
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", help="distillation text, one paragraph per line")
    ap.add_argument("--heldout", help="held-out text for the curves")
    ap.add_argument("--arch", default="256:mha,ffn,id,id|256:mha,ffn,id,id|256:mha,ffn,id,id")
    ap.add_argument("--space", default="minilm-wide")
    ap.add_argument("--supernet-arch", default="256:mha,ffn,id|256:mha,ffn,id|256:mha,ffn,id")
    ap.add_argument("--inits", default=",".join(INITS))
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--metric", default="hidden_fvu", choices=("hidden_fvu", "hidden"))
    ap.add_argument("--work", default="runs/etd-convergence")
    ap.add_argument("--rows", default=None, help="JSONL to append rows to (default: WORK/rows.jsonl)")
    ap.add_argument("--plot", default=None, help="PNG of the curves (default: WORK/curves.png)")
    ap.add_argument("--smoke", action="store_true", help="shipped sample text, tiny budget: checks the wiring")
    args = ap.parse_args()
    if args.smoke:
        sample = SAMPLE_TEXT
        args.corpus = args.corpus or str(sample)
        args.heldout = args.heldout or str(sample)
        args.steps, args.every, args.batch_size, args.seq_len, args.seeds = 4, 2, 4, 16, "0"
    if not args.corpus or not args.heldout:
        raise SystemExit("error: give --corpus and --heldout (or --smoke)")
    inits = [i for i in args.inits.split(",") if i]
    bad = [i for i in inits if i not in INITS]
    if bad:
        raise SystemExit(f"error: unknown --inits {', '.join(bad)}; valid: {', '.join(INITS)}")
    Path(args.work).mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    reports = {(i, s): run(args, i, s) for i in inits for s in seeds}
    key = args.metric
    final = {k: r["heldout_curve"][-1][key] for k, r in reports.items()}
    target = statistics.mean(final[("random", s)] for s in seeds) if "random" in inits else None
    rows = []
    for (init, seed), r in reports.items():
        # 0.1% slack: the random runs end on both sides of their own mean, and each should count as reaching it
        reach = steps_to_reach(r["heldout_curve"], target * 1.001, key) if target is not None else None
        rows.append({"init": init, "seed": seed, "arch": r["arch"], "steps": r["steps"], "every": args.every,
                     "metric": key, "curve": [[p["step"], p[key]] for p in r["heldout_curve"]], "final": final[(init, seed)],
                     "random_final_mean": target, "steps_to_random_final": reach,
                     "share_of_random_steps": None if reach is None else reach / r["steps"], "train_s": r["train_s"],
                     "machine": machine()})
    with Path(args.rows or Path(args.work) / "rows.jsonl").open("a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    t = Table(title=f"held-out {key} after {args.steps} steps (mean ± sd over seeds {args.seeds}); target = random's final")
    for col in ("start", "step 0", "final", "steps to random's final", "share of its steps", "train s"):
        t.add_column(col)

    def ms(v: list[float], fmt: str = "{:.4f}") -> str:
        return fmt.format(statistics.mean(v)) + (f" ± {fmt.format(statistics.stdev(v))}" if len(v) > 1 else "")

    for init in inits:
        rs = [r for r in rows if r["init"] == init]
        reach = [r["steps_to_random_final"] for r in rs]
        t.add_row(init, ms([r["curve"][0][1] for r in rs]), ms([r["final"] for r in rs]),
                  "never" if None in reach else ms(reach, "{:.0f}"),
                  "-" if None in reach else ms([r["share_of_random_steps"] for r in rs], "{:.2f}"),
                  ms([r["train_s"] for r in rs], "{:.0f}"))
    console.print(t)
    plot(rows, key, Path(args.plot or Path(args.work) / "curves.png"))


def plot(rows: list[dict[str, Any]], key: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = dict(zip(INITS, ("tab:grey", "tab:blue", "tab:orange", "tab:red")))
    for r in rows:
        xs, ys = zip(*r["curve"])
        ax.plot(xs, ys, color=colours[r["init"]], label=f"{r['init']} (seed {r['seed']})", alpha=0.9 if r["seed"] == 0 else 0.5)
    ax.set_xlabel("distillation step")
    ax.set_ylabel(f"held-out {key}")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    console.print(f"curves -> {path}")


if __name__ == "__main__":
    main()
