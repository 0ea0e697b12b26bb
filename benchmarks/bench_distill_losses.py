"""Which distillation losses and which start make a student keep the teacher's frozen-embedding quality?

Distils one student (default: the quick-start architecture, weights inherited from the shipped
supernet; `--init etd-impt|etd-rand --space minilm-wide` extracts it from the teacher instead) for
`--steps` steps with each loss variant, then scores its frozen embeddings on the
valid splits (linear probes on debian-sections and wordnet-supersense, MRR / ranking loyalty on
debian-retrieval) against the teacher. Results append to `--results` (JSON lines); finished
variants are skipped, so an interrupted run resumes. The figures of 2026-12-02 are in
`benchmarks/results/distill-losses-2026-12-02.jsonl` and docs/training.md.

    python benchmarks/bench_distill_losses.py --shared ../shared --steps 150 --variants hidden,hidden+emb,emb
    python benchmarks/bench_distill_losses.py --shared ../shared --steps 1000 --variants hidden \
        --init etd-impt --space minilm-wide --arch '256:mha,ffn,id,id|256:mha,ffn,id,id|256:mha,ffn,id,id'
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from make_corpus import corpus

from nasbert_deploy.space import get_space
from nasbert_deploy.student.distill import DistillConfig, Student, build_student, distill
from nasbert_deploy.student.embeddings import Embedder, linear_probe
from nasbert_deploy.student.extraction import etd_student, extraction_summary
from nasbert_deploy.student.metrics import label_loyalty
from nasbert_deploy.student.retrieval import load_retrieval, ranking_loyalty, retrieval_scores, top_k
from nasbert_deploy.student.tasks import load_task
from nasbert_deploy.teacher import default_teacher_path, load_teacher

ARCH = "256:sep7,sep5,ffn|256:mha,ffn,id|256:sep5,mha,id"
VARIANTS: dict[str, dict[str, float]] = {
    "hidden": {"hidden_weight": 1.0},
    "hidden+emb": {"hidden_weight": 1.0, "embedding_weight": 1.0, "similarity_weight": 1.0},
    "emb": {"hidden_weight": 0.0, "embedding_weight": 1.0, "similarity_weight": 1.0},
    # docs/quality.md s10 (2026-12-04): a softer similarity KL, weighted 1 and 4
    "hidden+emb+sim-t0.1": {"hidden_weight": 1.0, "embedding_weight": 1.0, "similarity_weight": 1.0,
                            "similarity_temperature": 0.1},
    "hidden+emb+sim4-t0.1": {"hidden_weight": 1.0, "embedding_weight": 1.0, "similarity_weight": 4.0,
                             "similarity_temperature": 0.1},
    "hidden+emb+sim+query-t0.1": {"hidden_weight": 1.0, "embedding_weight": 1.0, "similarity_weight": 1.0,
                                  "query_weight": 1.0, "similarity_temperature": 0.1},
}
class CachedEncoder:
    """The teacher's embeddings of each text list, computed once and kept in `folder` (every variant and every
    later run compares with the same ones)."""

    def __init__(self, embedder: Embedder, folder: Path) -> None:
        self.embedder, self.folder = embedder, folder

    def encode(self, texts: list[str]) -> np.ndarray:
        path = self.folder / f"teacher-{hashlib.sha1(chr(0).join(texts).encode()).hexdigest()[:16]}.npy"
        if path.is_file():
            return np.load(path)
        out = self.embedder.encode(texts)
        self.folder.mkdir(parents=True, exist_ok=True)
        np.save(path.with_suffix(".tmp.npy"), out)
        path.with_suffix(".tmp.npy").replace(path)
        return out


def frozen_scores(model_dir: Path, teacher: Any, shared: Path, threads: int) -> dict[str, Any]:
    emb = Embedder(model_dir, threads=threads)
    r = load_retrieval(shared / "tasks/debian-retrieval/valid.jsonl")
    q, d = emb.encode(r.queries), emb.encode(r.documents)
    tq, td = teacher.encode(r.queries), teacher.encode(r.documents)
    out: dict[str, Any] = {**retrieval_scores(q, d, r.gold), "rank_loyalty": ranking_loyalty(top_k(q, d), top_k(tq, td))}
    out["cos_retrieval"] = float((np.concatenate([q, d]) * np.concatenate([tq, td])).sum(1).mean())
    for task in ("debian-sections", "wordnet-supersense"):
        tr, va = load_task(shared / "tasks" / task / "train.jsonl"), load_task(shared / "tasks" / task / "valid.jsonl")
        m = {n: i for i, n in enumerate(sorted(set(tr.labels)))}
        res = linear_probe(emb.encode(tr.texts), tr.label_ids(m), emb.encode(va.texts), va.label_ids(m))
        t = linear_probe(teacher.encode(tr.texts), tr.label_ids(m), teacher.encode(va.texts), va.label_ids(m))
        out[task] = {"acc": res.accuracy, "f1": res.macro_f1, "teacher_acc": t.accuracy,
                     "loyalty": label_loyalty(t.pred, res.pred)}
    return out


def make(args: argparse.Namespace, teacher: Any, texts: list[str]) -> Student:
    if args.init.startswith("etd-"):
        student = etd_student(args.arch, get_space(args.space), teacher, texts, args.init)
        print("extracted:", extraction_summary(student)["layer_map"])
        return student
    return build_student(args.arch, init=args.init, space=get_space(args.space))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", default="../shared", help="folder with tasks/ and corpus/")
    ap.add_argument("--arch", default=ARCH)
    ap.add_argument("--variants", default="hidden,hidden+emb,emb")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--init", default="supernet", choices=("supernet", "random", "etd-impt", "etd-rand"))
    ap.add_argument("--space", default="minilm", help="space of --arch for --init random / etd-*")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--paragraphs", type=int, default=60000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", default="runs/distill-losses")
    ap.add_argument("--results", default="runs/distill-losses/results.jsonl")
    args = ap.parse_args()
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        print(f"error: --variants: unknown {', '.join(unknown)}; valid: {', '.join(VARIANTS)}", file=sys.stderr)
        raise SystemExit(2)
    torch.set_num_threads(args.threads)
    shared, work, results = Path(args.shared), Path(args.work), Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    done = {json.loads(ln)["tag"] for ln in results.read_text().splitlines()} if results.is_file() else set()
    texts = corpus(shared, args.paragraphs)
    teacher = CachedEncoder(Embedder(default_teacher_path(), threads=args.threads), work / "teacher-embeddings")
    for variant in args.variants.split(","):
        default = args.init == "supernet" and args.arch == ARCH  # the tags of the first runs
        tag = f"{variant}-{args.steps}" + ("" if default else f"-{args.init}-{args.arch}")
        if tag in done:
            print(f"{tag}: done, skipped")
            continue
        out = work / tag
        if not (out / "config.json").is_file():
            cfg = DistillConfig(steps=max(1, args.steps), batch_size=args.batch_size, seq_len=args.seq_len, lr=3e-4,
                                checkpoint_every=50, **VARIANTS[variant])
            t0 = time.time()
            teacher_model = load_teacher(None)
            student = make(args, teacher_model, texts)
            if args.steps == 0:  # the start itself, scored without any distillation
                student.model.save_pretrained(out)
                teacher_model.tokenizer.save_pretrained(out)
            else:
                distill(student, teacher_model, texts, out, cfg, note=print, metadata=extraction_summary(student))
            print(f"{tag}: distilled in {time.time() - t0:.0f} s")
        row = {"tag": tag, **frozen_scores(out, teacher, shared, args.threads)}
        with results.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row))


if __name__ == "__main__":
    main()
