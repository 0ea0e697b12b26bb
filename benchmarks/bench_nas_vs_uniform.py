"""Searched NAS-BERT students vs hand-designed uniform BERTs of equal MEASURED latency (NAS-BERT Table 3 analogue).

For each size (NAS-BERT's 5M/10M/30M/60M, scaled by teacher/BERT-base non-embedding parameters):

1. the uniform baseline: every block at one hidden size, mha/ffn alternating, the depth whose
   non-embedding parameter count is closest to the target; its latency is MEASURED on the device
   (default cpu-ort: ONNX Runtime, fp32, 1 thread, batch 1, `--latency-seq` tokens);
2. the searched student: the least-loss architecture of the supernet's candidate table whose
   PREDICTED latency fits the baseline's measured one; measured too, and the budget is tightened
   (up to 4 times) until the measured latency is within +3% of the baseline's;
3. both start from their supernet weights (both are members of the space), get the same
   distillation budget from the same teacher (`--steps`), are fine-tuned on the task with task
   distillation from the fine-tuned teacher, and are scored: held-out distillation MSE, accuracy,
   macro-F1, label/probability loyalty, measured latency, speed-up over the teacher.

Every stage writes into `--out` and is skipped when its output exists: rerun to resume.

    python benchmarks/bench_nas_vs_uniform.py --corpus /path/pydoc-train.txt --valid-corpus /path/pydoc-valid.txt \
        [--supernet DIR] [--table profiles/cpu-ort.json] [--sizes 5M,10M,30M,60M] [--steps 2000] [--out bench-nas-vs-uniform]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from nasbert_deploy.devices import load_device
from nasbert_deploy.export.pipeline import select_arch
from nasbert_deploy.fileio import write_json_atomic
from nasbert_deploy.runtimes.base import get_runtime, time_compiled
from nasbert_deploy.runtimes.convert import FirstOutput
from nasbert_deploy.search.problem import Budget
from nasbert_deploy.space import Arch, BlockArch, Op, SearchSpace
from nasbert_deploy.student.distill import DistillConfig, distill, make_student
from nasbert_deploy.student.finetune import FinetuneConfig, evaluate, finetune, finetune_teacher
from nasbert_deploy.student.tasks import load_task, sample_task_path
from nasbert_deploy.supernet.default import resolve_supernet_dir
from nasbert_deploy.supernet.network import Supernet
from nasbert_deploy.supernet.teacher_cache import read_paragraphs
from nasbert_deploy.teacher import load_teacher

BERT_BASE_NON_EMBEDDING = 85_054_464  # 12 x (4 x 768^2 + 2 x 768 x 3072 + biases + 2 LayerNorms), NAS-BERT's reference
console = Console(width=200)


def non_embedding_params(space: SearchSpace, arch: Arch) -> int:
    return space.params(arch, embeddings=False)


def uniform_arch(space: SearchSpace, hidden: int, depth: int) -> Arch:
    """All blocks at `hidden`, `depth` layers alternating mha/ffn, identities after."""
    ops = tuple(Op("mha") if j % 2 == 0 else Op("ffn") for j in range(depth))
    ops += (Op("id"),) * (space.layers_per_block - depth)
    return space.validate(Arch(tuple(BlockArch(hidden, ops) for _ in range(space.num_blocks))))


def closest_uniform(space: SearchSpace, target: int) -> Arch:
    """The uniform arch closest in non-embedding parameters; whole BERT layers (mha+ffn pairs) where the space allows."""
    depths = [d for d in range(2, space.layers_per_block + 1, 2)] or [1]
    options = [uniform_arch(space, h, d) for h in space.hidden_sizes for d in depths]
    return min(options, key=lambda a: abs(non_embedding_params(space, a) - target))


def measure_ms(model: torch.nn.Module, spec: Any, seq_len: int, vocab: int, workdir: Path) -> dict[str, float]:
    """Median/p90 latency (ms) of the encoder on `spec`'s runtime at batch 1, `seq_len` tokens."""
    g = torch.Generator().manual_seed(0)
    example = {"input_ids": torch.randint(5, vocab, (2, 37), generator=g), "attention_mask": torch.ones(2, 37, dtype=torch.long)}
    compiled = get_runtime(spec.runtime).compile(FirstOutput(model.eval()), example, ["last_hidden_state"], spec, workdir)
    ids = np.random.default_rng(0).integers(5, vocab, size=(1, seq_len), dtype=np.int64)
    inputs = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    t = time_compiled(compiled, inputs, warmup=10, runs=50, min_time_s=1.0, max_cv=0.1)
    return {"median_ms": t.median_ms, "p90_ms": t.p90_ms, "cv": t.cv}


def cached(path: Path, make: Any) -> Any:
    """JSON result of `make()`, stored at `path` and reused on rerun."""
    if path.is_file():
        return json.loads(path.read_text())
    value = make()
    write_json_atomic(path, value)
    return value


def pick_pair(
    label: str, target: int, net: Supernet, supernet_dir: Path, spec: Any, args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    space = net.space
    uni = closest_uniform(space, target)
    uni_ms = measure_ms(net.extract(uni), spec, args.latency_seq, space.vocab_size, work / "onnx-uniform")
    budget = uni_ms["median_ms"]
    tries = []
    for _ in range(4):
        best = select_arch(spec, Budget(budget), 1, args.latency_seq, supernet_dir)
        nas = best.arch
        nas_ms = measure_ms(net.extract(nas), spec, args.latency_seq, space.vocab_size, work / "onnx-nas")
        tries.append({"arch": str(nas), "budget_ms": budget, "measured_ms": nas_ms["median_ms"]})
        if nas_ms["median_ms"] <= 1.03 * uni_ms["median_ms"]:
            break
        budget *= uni_ms["median_ms"] / nas_ms["median_ms"]
    return {
        "label": label,
        "target_params": target,
        "uniform": {"arch": str(uni), "params": non_embedding_params(space, uni), "latency": uni_ms},
        "nas": {"arch": str(nas), "params": non_embedding_params(space, nas), "latency": nas_ms, "tries": tries},
    }


def train_and_score(arch: str, net: Supernet, teacher: Any, texts: list[str], held_out: list[str], teacher_ft: Path,
                    task: tuple[Any, Any], args: argparse.Namespace, work: Path) -> dict[str, Any]:  # fmt: skip
    distilled, tuned = work / "distilled", work / "finetuned"
    if not (distilled / "distill_report.json").is_file():
        cfg = DistillConfig(
            steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr, intermediate_weight=1.0
        )
        distill(make_student(net.extract(arch), net), teacher, texts, distilled, cfg, held_out)
    report = json.loads((distilled / "distill_report.json").read_text())
    if not (tuned / "finetune_report.json").is_file():
        fcfg = FinetuneConfig(epochs=args.ft_epochs, lr=args.ft_lr, lam=args.lam, max_len=args.seq_len)
        finetune(distilled, task[0], task[1], tuned, fcfg, teacher_model=teacher_ft)
    scores = evaluate(tuned, task[1], teacher_model=teacher_ft, max_len=args.seq_len)
    heldout = report["heldout"]
    return {"heldout_mse": heldout["hidden"], "heldout_fvu": heldout["hidden_fvu"], "distill_s": report["train_s"], **scores}


COLUMNS = ("size", "model", "arch", "params", "ms", "speed-up", "held-out MSE", "unexpl. var.", "acc", "macro-F1",
           "label loy.", "prob. loy.")  # fmt: skip


def markdown_rows(teacher_row: dict[str, Any], results: list[dict[str, Any]], minilm: bool) -> list[list[str]]:
    """Table rows (strings): the teacher, then uniform and searched per size."""
    t_ms = teacher_row["latency"]["median_ms"]
    rows = [["-", "MiniLM-L6 (teacher)" if minilm else "teacher", "-", f"{teacher_row['params'] / 1e6:.2f}M", f"{t_ms:.2f}",
             "1.00x", "-", "-", f"{teacher_row['accuracy']:.3f}", f"{teacher_row['macro_f1']:.3f}", "-", "-"]]  # fmt: skip
    for r in results:
        for kind in ("uniform", "nas"):
            m, s = r[kind], r[kind]["scores"]
            ms = m["latency"]["median_ms"]
            rows.append([r["label"], "uniform" if kind == "uniform" else "searched", m["arch"], f"{m['params'] / 1e6:.2f}M",
                         f"{ms:.2f}", f"{t_ms / ms:.2f}x", f"{s['heldout_mse']:.4f}", f"{s['heldout_fvu']:.3f}",
                         f"{s['accuracy']:.3f}", f"{s['macro_f1']:.3f}", f"{s['label_loyalty']:.3f}",
                         f"{s['probability_loyalty']:.3f}"])  # fmt: skip
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, required=True, help="unlabelled text, one paragraph per line")
    p.add_argument("--valid-corpus", type=Path, required=True, help="held-out text for the distillation loss")
    p.add_argument("--heldout-paragraphs", type=int, default=400)
    p.add_argument("--task", type=Path, default=sample_task_path("train"))
    p.add_argument("--valid-task", type=Path, default=sample_task_path("valid"))
    p.add_argument("--supernet", type=Path, default=None, help="supernet folder with candidates.json (default: shipped)")
    p.add_argument("--teacher", type=Path, default=None)
    p.add_argument("--device", default="cpu-ort")
    p.add_argument("--sizes", default="5M,10M,30M,60M", help="NAS-BERT sizes, scaled to the teacher")
    p.add_argument("--latency-seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--ft-epochs", type=int, default=5)
    p.add_argument("--ft-lr", type=float, default=2e-4)
    p.add_argument("--teacher-ft-epochs", type=int, default=5)
    p.add_argument("--teacher-ft-lr", type=float, default=1e-4)
    p.add_argument("--lam", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("bench-nas-vs-uniform"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    spec = load_device(args.device)
    supernet_dir = resolve_supernet_dir(args.supernet)
    net, _ = Supernet.load(supernet_dir)
    teacher = load_teacher(args.teacher)
    texts = read_paragraphs(args.corpus)
    held_out = read_paragraphs(args.valid_corpus, limit=args.heldout_paragraphs)
    task = (load_task(args.task), load_task(args.valid_task))

    teacher_ft = out / "teacher-ft"
    if not (teacher_ft / "finetune_report.json").is_file():
        console.print("fine-tuning the teacher ...")
        tcfg = FinetuneConfig(epochs=args.teacher_ft_epochs, lr=args.teacher_ft_lr, max_len=args.seq_len)
        finetune_teacher(args.teacher, task[0], task[1], teacher_ft, tcfg)
    teacher_row = cached(out / "teacher.json", lambda: {
        "params": sum(p.numel() for n, p in teacher.model.named_parameters() if "embeddings" not in n and "pooler" not in n),
        "latency": measure_ms(teacher.model, spec, args.latency_seq, len(teacher.tokenizer), out / "onnx-teacher"),
        **evaluate(teacher_ft, task[1], max_len=args.seq_len),
    })  # fmt: skip
    teacher_non_emb = teacher_row["params"]

    results, seen = [], {}
    for label in [s.strip() for s in args.sizes.split(",") if s.strip()]:
        target = round(float(label.rstrip("Mm")) * 1e6 / BERT_BASE_NON_EMBEDDING * teacher_non_emb)
        work = out / f"size-{label}"
        uni = str(closest_uniform(net.space, target))
        console.print(f"[bold]{label}[/]: target {target / 1e6:.2f}M non-embedding parameters, uniform {uni}")
        if uni in seen:
            console.print(f"  same uniform baseline as {seen[uni]} (the space has no closer one): skipped")
            continue
        seen[uni] = label
        pair = cached(work / "pair.json", lambda label=label, target=target, work=work: pick_pair(
            label, target, net, supernet_dir, spec, args, work))  # fmt: skip
        for kind in ("uniform", "nas"):
            pair[kind]["scores"] = cached(work / kind / "scores.json", lambda kind=kind, pair=pair, work=work: train_and_score(
                pair[kind]["arch"], net, teacher, texts, held_out, teacher_ft, task, args, work / kind))  # fmt: skip
        results.append(pair)

    rows = markdown_rows(teacher_row, results, args.teacher is None)
    table = Table(title=f"searched vs uniform at equal measured latency ({spec.name}, batch 1, seq {args.latency_seq})")
    for col in COLUMNS:
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    md = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
    md += "".join("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |\n" for r in rows)
    (out / "results.md").write_text(md, encoding="utf-8")
    summary = {"settings": {k: str(v) for k, v in vars(args).items()}, "teacher": teacher_row, "sizes": results,
               "wall_s": round(time.perf_counter() - t_start, 1)}  # fmt: skip
    write_json_atomic(out / "results.json", summary)
    console.print(f"results -> {out / 'results.json'}  ({summary['wall_s']} s)")


if __name__ == "__main__":
    main()
