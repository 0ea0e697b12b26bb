"""Share of the fine-tuned teacher's accuracy against the measured speed-up, from `bench_task_distill.py` rows.

One panel per task; one point per (arch, init, transfer rows) with its mean and spread over seeds; issue #12's lines
(≥ 97% at ≥ 4×, ≥ 93% at ≥ 10×) dotted. Rows from several runs (and machines: each run's speed-ups were measured
side by side on its own host, named in the legend) can share one plot.

    python benchmarks/plot_task_distill.py benchmarks/results/task-distill-transfer-2026-12-02.jsonl \\
        benchmarks/results/task-distill-10x-2026-12-04-h200-xeon.jsonl --device cpu-ort --out plane.png
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any, NoReturn

TARGETS = ((4.0, 0.97), (10.0, 0.93))  # issue #12: (speed-up, share of the teacher's accuracy)
ROW_KEYS = ("task", "arch", "seed", "distill_steps", "transfer_rows", "accuracy", "macro_f1", "label_loyalty",
            "probability_loyalty", "teacher_accuracy", "share_of_teacher", "machine")  # every bench_task_distill row


def bad_input(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def read_rows(path: str | Path, what: str) -> list[dict[str, Any]]:
    """The rows of a `bench_task_distill.py` rows file; one line and exit 2 when it is missing, binary, not JSON
    lines, a row lacks a field, or it holds no row (checked before any work)."""
    from nasbert_deploy.errors import NasBertDeployError
    from nasbert_deploy.fileio import read_input_text

    try:
        text = read_input_text(path, what)
    except NasBertDeployError as exc:
        bad_input(str(exc))
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad_input(f"{what} {path}:{n} is not a JSON row of bench_task_distill.py")
        missing = [k for k in ROW_KEYS if k not in row] if isinstance(row, dict) else list(ROW_KEYS)
        if missing:
            bad_input(f"{what} {path}:{n} lacks {', '.join(missing)} (fields of a bench_task_distill.py row)")
        rows.append(row)
    if not rows:
        bad_input(f"{what} {path} holds no rows")
    return rows


def load(paths: list[Path], device: str) -> list[dict[str, Any]]:
    rows = [{**r, "source": p.name} for p in paths for r in read_rows(p, "rows file") if device in (r.get("speedup") or {})]
    if not rows:
        bad_input(f"no rows with a {device} speed-up in {', '.join(map(str, paths))}")
    return rows


def points(rows: list[dict[str, Any]], device: str) -> list[dict[str, Any]]:
    """Mean ± sd over seeds per (task, arch, init, transfer rows, source)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        key = (r["task"], r["arch"], r.get("init", "etd-impt"), r.get("transfer_rows", 0), r["source"])
        groups.setdefault(key, []).append(r)
    out = []
    for (task, arch, init, transfer, source), rs in groups.items():
        share = [r["share_of_teacher"] for r in rs]
        speed = [r["speedup"][device] for r in rs]
        out.append({"task": task, "arch": arch, "init": init, "transfer": transfer, "source": source, "seeds": len(rs),
                    "share": statistics.mean(share), "share_sd": statistics.stdev(share) if len(rs) > 1 else 0.0,
                    "speedup": statistics.mean(speed), "cpu": rs[0]["machine"]["cpu"], "date": rs[0]["machine"]["date"][:10]})
    return out


def plot(pts: list[dict[str, Any]], device: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nasbert_deploy.fileio import atomic_path

    tasks = list(dict.fromkeys(p["task"] for p in pts))
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 6.0), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    kinds = list(dict.fromkeys((p["arch"], p["transfer"]) for p in pts))
    low = min(0.92, min(p["share"] - p["share_sd"] for p in pts) - 0.01)
    for ax, task in zip(axes[0], tasks, strict=True):
        for p in (p for p in pts if p["task"] == task):
            label = f"{p['arch']} ({p['init']}, transfer {p['transfer']}; {p['seeds']} seeds, {p['date']})"
            ax.errorbar(p["speedup"], p["share"], yerr=p["share_sd"], fmt="os^Dv"[kinds.index((p["arch"], p["transfer"])) % 5],
                        capsize=3, color=colours[kinds.index((p["arch"], p["transfer"])) % len(colours)], label=label)
        for speed, share in TARGETS:
            ax.plot([speed, speed], [share, 1.05], color="grey", ls=":", lw=1)
            ax.plot([speed, 20], [share, share], color="grey", ls=":", lw=1)
            ax.annotate(f"≥ {share:.0%} at ≥ {speed:g}×", (speed, share), fontsize=7, color="grey",
                        xytext=(3, -10), textcoords="offset points")
        ax.set_title(task)
        ax.set_xscale("log")
        ax.set_xticks([2, 3, 4, 6, 8, 10, 15, 20], labels=["2×", "3×", "4×", "6×", "8×", "10×", "15×", "20×"])
        ax.set_xlim(min(3.0, min(p["speedup"] for p in pts) * 0.9), 20)
        ax.set_ylim(low, 1.03)
        ax.set_xlabel(f"speed-up over the teacher on {device} (batch 1 × 128, measured side by side)")
        ax.set_ylabel("share of the fine-tuned teacher's accuracy (valid; mean ± sd)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    hosts = sorted({p["cpu"] for p in pts})
    fig.suptitle(f"task distillation: quality against measured speed ({'; '.join(hosts)})", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    print(f"plot -> {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rows", nargs="+", type=Path, help="rows files of bench_task_distill.py")
    ap.add_argument("--device", default="cpu-ort")
    ap.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = ap.parse_args()
    pts = points(load(args.rows, args.device), args.device)
    for p in sorted(pts, key=lambda p: (p["task"], p["speedup"])):
        print(f"{p['task']:<20} {p['speedup']:6.2f}x  {p['share']:.3f} ± {p['share_sd']:.3f}  {p['arch']}  "
              f"(transfer {p['transfer']}, {p['seeds']} seeds, {p['source']})")
    plot(pts, args.device, args.out)


if __name__ == "__main__":
    main()
