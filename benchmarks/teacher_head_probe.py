"""How close is a student encoder's representation to the one a fine-tuned teacher's classifier reads?

Puts each student encoder under the fine-tuned teacher's own classifier head (mean pooling, then the teacher's linear
layer; no training at all) and scores it on a labelled task file: accuracy, label loyalty and probability loyalty to
the teacher. After task-specific distillation from that teacher (`distill --teacher <finetune-teacher output>`) the
student's last hidden state regresses the teacher's, so this says how much of the teacher's behaviour the hidden-state
match alone carries; a generally distilled encoder scores near chance (it matches the *pre-trained* teacher).

    python benchmarks/teacher_head_probe.py --teacher-model checkpoints/teacher-wordnet-supersense \\
        --task ../shared/tasks/wordnet-supersense/valid.jsonl --max-len 64 --model tsd-s0=enc-s0 --model general=enc \\
        --json results.json

Students must output the teacher's width (every NAS-BERT student of a space whose output_dim is the teacher's).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_quality import machine
from rich.console import Console
from rich.table import Table

from nasbert_deploy.student.metrics import probability_loyalty


def bad_input(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def probe(teacher_dir: Path, encoders: dict[str, Path], task: Path, max_len: int, batch: int = 64) -> dict[str, Any]:
    """{'teacher_accuracy', 'examples', 'models': {name: {accuracy, label_loyalty, probability_loyalty}}}."""
    from transformers import AutoTokenizer

    from nasbert_deploy.model.modeling import NasBertForSequenceClassification, NasBertModel
    from nasbert_deploy.student.tasks import load_task

    data = load_task(task)
    teacher = NasBertForSequenceClassification.from_pretrained(teacher_dir, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(teacher_dir, local_files_only=True)
    labels = [teacher.config.id2label[i] for i in range(teacher.config.num_labels)]
    unknown = sorted(set(data.labels) - set(labels))
    if unknown:
        bad_input(f"{task} has labels the teacher was not trained on: {unknown[:3]}; the teacher knows {labels}")
    gold = np.array([labels.index(label) for label in data.labels])
    students = {k: NasBertModel.from_pretrained(v, local_files_only=True).eval() for k, v in encoders.items()}
    probs: dict[str, list[np.ndarray]] = {"teacher": [], **{k: [] for k in students}}
    with torch.no_grad():
        for i in range(0, len(data.texts), batch):
            enc = tok(list(data.texts[i:i + batch]), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
            ids, mask = enc["input_ids"], enc["attention_mask"]
            probs["teacher"].append(teacher(ids, mask).logits.double().softmax(-1).numpy())
            m = mask[:, :, None].float()
            for k, model in students.items():
                pooled = (model(ids, mask).last_hidden_state * m).sum(1) / m.sum(1)
                probs[k].append(teacher.classifier(pooled).double().softmax(-1).numpy())
    p = {k: np.concatenate(v) for k, v in probs.items()}
    t_label = p["teacher"].argmax(-1)
    models = {k: {"accuracy": float((p[k].argmax(-1) == gold).mean()),
                  "label_loyalty": float((p[k].argmax(-1) == t_label).mean()),
                  "probability_loyalty": probability_loyalty(p["teacher"], p[k])} for k in students}
    return {"examples": len(gold), "teacher_accuracy": float((t_label == gold).mean()), "models": models}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher-model", type=Path, required=True, help="fine-tuned NAS-BERT teacher classifier folder")
    ap.add_argument("--task", type=Path, required=True, help="labelled task file (text, label)")
    ap.add_argument("--model", action="append", default=[], help="NAME=DIR: a NAS-BERT student encoder (repeatable)")
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--json", type=Path, default=None, help="write the figures and the machine here")
    args = ap.parse_args()
    encoders = {}
    for item in args.model:
        name, sep, folder = item.partition("=")
        if not sep or not (Path(folder) / "config.json").is_file():
            bad_input(f"--model {item!r}: expected NAME=DIR of a model folder with config.json")
        encoders[name] = Path(folder)
    if not encoders:
        bad_input("give at least one --model NAME=DIR")
    if not (args.teacher_model / "config.json").is_file() or not args.task.is_file():
        bad_input(f"need a --teacher-model folder with config.json and an existing --task file ({args.task})")
    from nasbert_deploy.errors import NasBertDeployError
    from nasbert_deploy.teacher import is_classifier, is_nasbert, read_model_config

    try:
        cfg = read_model_config(args.teacher_model, "--teacher-model")
        students = {k: read_model_config(v, f"--model {k}") for k, v in encoders.items()}
    except NasBertDeployError as exc:
        bad_input(str(exc))
    if not (is_nasbert(cfg) and is_classifier(cfg)):
        bad_input(f"--teacher-model {args.teacher_model} is not a mean-pooled NAS-BERT classifier (`finetune-teacher` "
                  "writes one)")
    wrong = [k for k, c in students.items() if not is_nasbert(c) or c.get("hidden_size") != cfg.get("hidden_size")]
    if wrong:
        bad_input(f"--model {wrong[0]}: not a NAS-BERT encoder of the teacher's width {cfg.get('hidden_size')}")
    torch.set_num_threads(1)
    res = {**probe(args.teacher_model, encoders, args.task, args.max_len), "teacher": str(args.teacher_model),
           "task": str(args.task), "max_len": args.max_len, "encoders": {k: str(v) for k, v in encoders.items()},
           "machine": machine()}
    t = Table(title=f"students under the teacher's own head, {args.task} ({res['examples']} rows; teacher accuracy "
                    f"{res['teacher_accuracy']:.3f})")
    for col in ("model", "accuracy", "label loyalty", "prob. loyalty"):
        t.add_column(col)
    for k, v in res["models"].items():
        t.add_row(k, f"{v['accuracy']:.3f}", f"{v['label_loyalty']:.3f}", f"{v['probability_loyalty']:.3f}")
    Console(width=150).print(t)
    if args.json:
        from nasbert_deploy.fileio import atomic_path

        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
