"""Where students disagree with their teacher: label loyalty per band of the teacher's own margin.

Label loyalty (the share of rows where the student picks the teacher's class) mixes two kinds of rows: those the
teacher is sure of and near ties, where any model trained differently (another seed of the teacher itself) may
pick the runner-up. This scores the teacher and each classifier folder on a task file (PyTorch, one pass each),
bands the rows by the teacher's margin (top-1 minus top-2 probability) and prints, per band: its share of the
rows, the teacher's accuracy there, and each model's label loyalty there. With two or more models it adds their
averaged probabilities (an ensemble, not a deployable model: it says how much of the disagreement is seed noise)
and the agreement between the first two models.

    python benchmarks/loyalty_by_margin.py --teacher-model checkpoints/teacher-wordnet-supersense \\
        --task ../shared/tasks/wordnet-supersense/valid.jsonl --max-len 64 --model s0=runs/ft-s0 --model s1=runs/ft-s1

Writes the table's figures as JSON with `--json FILE`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
from bench_quality import machine
from rich.console import Console
from rich.table import Table

BANDS = (0.0, 0.1, 0.3, 0.6, 1.0001)  # teacher margin (top-1 - top-2 probability) band edges


def margins(probs: np.ndarray) -> np.ndarray:
    top2 = np.sort(probs, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def band_figures(t_probs: np.ndarray, gold: np.ndarray, preds: dict[str, np.ndarray]) -> list[dict]:
    """Per margin band (and 'all'): rows, share, teacher accuracy, each model's label loyalty."""
    m, t_pred = margins(t_probs), t_probs.argmax(1)
    out = []
    bands = [(lo, hi, f"{lo:.1f}-{min(hi, 1):.1f}") for lo, hi in zip(BANDS, BANDS[1:], strict=False)]
    for lo, hi, name in [*bands, (0.0, 1.0001, "all")]:
        rows = (m >= lo) & (m < hi)
        n = int(rows.sum())
        t_acc = float((t_pred[rows] == gold[rows]).mean()) if n else None
        row = {"band": name, "rows": n, "share": n / len(m), "teacher_accuracy": t_acc}
        row["loyalty"] = {k: float((p[rows] == t_pred[rows]).mean()) if n else None for k, p in preds.items()}
        out.append(row)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher-model", required=True, help="the fine-tuned teacher classifier folder")
    ap.add_argument("--task", required=True, help="labelled task file (the valid split)")
    ap.add_argument("--model", action="append", required=True, help="NAME=DIR: a classifier folder to band (repeat)")
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    named = {}
    for item in args.model:
        name, sep, folder = item.partition("=")
        if not sep or not Path(folder).is_dir():
            print(f"--model {item}: give NAME=DIR with an existing classifier folder", file=sys.stderr)
            return 2

        named[name] = folder
    from nasbert_deploy.errors import NasBertDeployError
    from nasbert_deploy.student.finetune import load_classifier
    from nasbert_deploy.student.metrics import softmax
    from nasbert_deploy.student.task_training import model_labels, predict_logits
    from nasbert_deploy.student.tasks import load_task

    try:
        task = load_task(args.task)
        teacher, tok = load_classifier(args.teacher_model)
        labels = model_labels(teacher)
        gold = np.asarray(task.label_ids({n: i for i, n in enumerate(labels)}))
        t_probs = softmax(predict_logits(teacher, tok, task, max_len=args.max_len))
        probs = {}
        for name, folder in named.items():
            model, mtok = load_classifier(folder)
            if model_labels(model) != labels:
                print(f"--model {folder}: its labels differ from the teacher's", file=sys.stderr)
                return 2
            probs[name] = softmax(predict_logits(model, mtok, task, max_len=args.max_len))
    except NasBertDeployError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    preds = {k: p.argmax(1) for k, p in probs.items()}
    if len(probs) > 1:
        preds["mean of models"] = np.mean(list(probs.values()), axis=0).argmax(1)
    figs = band_figures(t_probs, gold, preds)
    table = Table(title=f"label loyalty by the teacher's margin: {args.task} ({len(gold)} rows)")
    for col in ("teacher margin", "rows", "share", "teacher acc", *preds):
        table.add_column(col, justify="right")
    for r in figs:
        table.add_row(r["band"], str(r["rows"]), f"{r['share']:.1%}",
                      "-" if r["teacher_accuracy"] is None else f"{r['teacher_accuracy']:.3f}",
                      *("-" if v is None else f"{v:.3f}" for v in r["loyalty"].values()))
    Console(width=160).print(table)
    result = {"task": args.task, "teacher": args.teacher_model, "models": named, "max_len": args.max_len, "bands": figs,
              "machine": machine()}
    t_pred = t_probs.argmax(1)
    result["flips"] = {}
    for name, pred in preds.items():  # on the rows a model leaves the teacher: who has the gold label?
        off = pred != t_pred
        result["flips"][name] = {"rows": int(off.sum()), "model_right": int((pred[off] == gold[off]).sum()),
                                 "teacher_right": int((t_pred[off] == gold[off]).sum())}
        f = result["flips"][name]
        print(f"{name}: leaves the teacher on {f['rows']} rows; right there {f['model_right']}, the teacher {f['teacher_right']}")
    names = list(named)
    if len(names) > 1:
        agree = float((preds[names[0]] == preds[names[1]]).mean())
        result["agreement_first_two"] = agree
        print(f"{names[0]} and {names[1]} pick the same class on {agree:.3f} of the rows")
    if args.json:
        tmp = Path(args.json).with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
