"""Where does a classifier lose its loyalty when quantized? Fake quantization of one part at a time, no training.

Scores a fine-tuned classifier (any folder `quantize` takes) on a labelled task file in float, then with fake
quantization (`lowbit.lsq`, the grids and initial step sizes `quantize` starts from) switched on for:

- every Linear's weights; the same plus the word-embedding table; every Linear's input (activations) only;
  everything at once (what `quantize` trains from);
- the weights of one group of Linears at a time: a group is a Linear's name up to its first layer index
  (`nasbert.blocks.3`, `nasbert.boundaries.0`, `bert.encoder.layer.2`) or the whole name (`nasbert.embed_proj`,
  `classifier`);
- the inputs of one kind of Linear at a time (weights float): every Linear whose name ends in that kind (`fc2`,
  `query`, ...), with the Linears that share its input quantizer (query, key and value read one tensor).

Each row gives accuracy and label / probability loyalty to the float model on the same rows. A group whose weights
alone cost several points of loyalty is what to look at before training step sizes (docs/quantization.md: the
identity projections of a converted teacher, on the residual stream, held most of the wordnet teacher's loss).

    python benchmarks/quant_sensitivity.py --model checkpoints/teacher-wordnet-supersense \\
        --task ../shared/tasks/wordnet-supersense/valid.jsonl --calibration ../shared/tasks/wordnet-supersense/train.jsonl \\
        --max-len 64 --json sensitivity.json
"""

from __future__ import annotations

import argparse
import copy
import itertools
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_quality import machine
from rich.console import Console
from rich.table import Table
from torch import nn

from nasbert_deploy.quantize.run import SMOOTH_BATCHES
from nasbert_deploy.student.metrics import label_loyalty, probability_loyalty, softmax

BITS = (8, 4, 2)


def bad_input(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def group_of(name: str) -> str:
    """A Linear's group: its qualified name up to and including the first numeric part, else the whole name."""
    parts = name.split(".")
    for i, p in enumerate(parts):
        if p.isdigit():
            return ".".join(parts[: i + 1])
    return name


def variants(model: nn.Module, bits: int, calib: dict[str, torch.Tensor], smooth: Sequence[float] = (),
             smooth_batches: Sequence[dict[str, torch.Tensor]] = (), residual: bool = False,
             ratios: Sequence[float] = ()) -> dict[str, Callable[[], nn.Module]]:
    """Name -> builder of a fake-quantized copy of `model` (weights `bits`, activations 8 bit); for each alpha in
    `smooth`, the activations-only and everything rows again with SmoothQuant (`lowbit.smooth`, max |x| over
    `smooth_batches`), as `quantize --smooth` starts, and the everything row once more for each outlier ratio in
    `ratios` (only the inputs that stand out that far smoothed, `quantize --smooth-min-ratio`). `residual`:
    near-identity square Linears in the residual form x + (W - I) x first (`lowbit.residual`,
    `quantize --residual-projections auto`)."""
    from nasbert_deploy.lowbit.embedding import quantize_embeddings
    from nasbert_deploy.lowbit.lsq import quant_linears, quantize_linears, shared_input_groups
    from nasbert_deploy.lowbit.residual import split_residual
    from nasbert_deploy.lowbit.smooth import input_absmax, smooth_model

    if residual:
        model = copy.deepcopy(model)
        split_residual(model)
    absmax = input_absmax(model, smooth_batches) if smooth else {}

    def build(weights: str | None = "", acts: bool = False, table: bool = False, kind: str | None = None,
              alpha: float = 0.0, ratio: float = 0.0) -> nn.Module:
        """`weights`: "" all Linears, a group name: that group only, None: no weights. `kind`: only the inputs of
        the Linears so named (last name part), with every Linear sharing their quantizer (query, key, value)."""
        m = copy.deepcopy(model).eval()
        quantize_linears(m, bits, 8 if acts else None, example_inputs=calib if acts else None)
        if alpha:
            smooth_model(m, absmax, alpha, ratio)
        keep = {n for n, _ in quant_linears(m) if n.removesuffix(".delta").rsplit(".", 1)[-1] == kind}
        keep |= {n for g in shared_input_groups(m) if keep & set(g) for n in g}
        for name, q in quant_linears(m):
            if weights is None or (weights and group_of(name.removesuffix(".delta")) != weights):
                q.w_quant = nn.Identity()  # type: ignore[assignment]  (QuantLinear.quantized_weight: the float weight)
            if kind is not None and name not in keep:
                q.a_quant = None
        if table:
            quantize_embeddings(m, bits)
        if acts:
            with torch.no_grad():
                m(**calib)  # activation step sizes from the calibration batch, as `quantize` starts
        return m

    # the float model's Linears (a residual form's `delta` under the Linear's own name)
    names = [n.removesuffix(".delta") for n, mod in model.named_modules() if isinstance(mod, nn.Linear)]
    groups = list(dict.fromkeys(group_of(n) for n in names))
    out: dict[str, Callable[[], nn.Module]] = {
        "all weights": lambda: build(),
        "all weights + word table": lambda: build(table=True),
        "activations only": lambda: build(weights=None, acts=True),
        "everything": lambda: build(acts=True, table=True),
    }
    for a in smooth:
        out[f"activations only, SmoothQuant {a}"] = lambda a=a: build(weights=None, acts=True, alpha=a)
        out[f"everything, SmoothQuant {a}"] = lambda a=a: build(acts=True, table=True, alpha=a)
        for r in ratios:
            out[f"everything, SmoothQuant {a} where max/median >= {r}"] = (
                lambda a=a, r=r: build(acts=True, table=True, alpha=a, ratio=r))
    for g in groups:
        out[f"weights of {g}"] = lambda g=g: build(weights=g)
    for k in dict.fromkeys(n.rsplit(".", 1)[-1] for n in names):
        out[f"inputs of {k}"] = lambda k=k: build(weights=None, acts=True, kind=k)
    return out


def run(model_dir: Path, task: Path, calibration: Path, max_len: int, bits: int, log: Callable[[str], None],
        smooth: Sequence[float] = (), only: str | None = None, residual: bool = False,
        ratios: Sequence[float] = ()) -> dict[str, Any]:
    from nasbert_deploy.errors import NasBertDeployError
    from nasbert_deploy.student.finetune import load_classifier
    from nasbert_deploy.student.tasks import iter_batches, load_task

    try:
        model, tok = load_classifier(model_dir)
        data, cal = load_task(task), load_task(calibration)
        labels = {str(v): int(k) for k, v in model.config.id2label.items()}
        gold = np.array(data.label_ids(labels))
    except NasBertDeployError as exc:
        bad_input(str(exc))
    model.eval()
    # batches of 16 rows, as `quantize` calibrates: the first sets the activation step sizes, all of them SmoothQuant's
    batches = [b for _, b in itertools.islice(iter_batches(tok, cal, 16, max_len), SMOOTH_BATCHES)]
    calib = batches[0]

    @torch.no_grad()
    def logits(m: nn.Module) -> np.ndarray:
        return np.concatenate([m(**b).logits.double().numpy() for _, b in iter_batches(tok, data, 64, max_len)])

    ref = logits(model)
    p_ref, y_ref = softmax(ref), ref.argmax(1)
    rows = {"float": {"accuracy": float((y_ref == gold).mean()), "label_loyalty": 1.0, "probability_loyalty": 1.0}}
    log(f"float: accuracy {rows['float']['accuracy']:.4f} on {len(gold)} rows")
    for name, build in variants(model, bits, calib, smooth, batches, residual, ratios).items():
        if only and not re.search(only, name):
            continue
        lg = logits(build())
        rows[name] = {"accuracy": float((lg.argmax(1) == gold).mean()), "label_loyalty": label_loyalty(y_ref, lg.argmax(1)),
                      "probability_loyalty": probability_loyalty(p_ref, softmax(lg))}
        log(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in rows[name].items()))
    return {"model": str(model_dir), "task": str(task), "calibration": str(calibration), "examples": len(gold),
            "max_len": max_len, "bits": bits, "smooth_alphas": list(smooth), "residual_projections": residual,
            "smooth_min_ratios": list(ratios),
            "rows": rows, "machine": machine()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="fine-tuned classifier folder")
    ap.add_argument("--task", type=Path, required=True, help="labelled task file to score (the valid split)")
    ap.add_argument("--calibration", type=Path, default=None, help="task file whose first 16 rows set the activation "
                    "step sizes (and first 256 rows SmoothQuant's scales; default: --task; use the train split)")
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--bits", type=int, default=8, help="weight bits (activations 8): 8, 4 or 2")
    ap.add_argument("--smooth", type=float, nargs="*", default=[], help="SmoothQuant alphas in (0, 1): the activations-"
                    "only and everything rows again with each (max |x| over the calibration file's first 256 rows)")
    ap.add_argument("--smooth-ratio", type=float, nargs="*", default=[], help="with --smooth: the everything row again "
                    "smoothing only the inputs whose largest channel max |x| is at least this many times the median's")
    ap.add_argument("--residual", action="store_true", help="write near-identity square Linears as x + (W - I) x "
                    "first and quantize only W - I (`quantize --residual-projections auto`)")
    ap.add_argument("--only", default=None, help="score only the rows whose name matches this regular expression")
    ap.add_argument("--json", type=Path, default=None, help="write the figures and the machine here")
    args = ap.parse_args()
    calibration = args.calibration or args.task
    if args.bits not in BITS:
        bad_input(f"--bits {args.bits} is not supported; valid: {', '.join(map(str, BITS))}")
    if any(not 0.0 < a < 1.0 for a in args.smooth):
        bad_input(f"--smooth {args.smooth}: every alpha must lie strictly between 0 and 1")
    if args.smooth_ratio and (not args.smooth or any(r < 0 for r in args.smooth_ratio)):
        bad_input(f"--smooth-ratio {args.smooth_ratio}: give ratios >= 0 together with --smooth ALPHA (they select "
                  "which inputs SmoothQuant divides)")
    if args.only is not None:
        try:
            re.compile(args.only)
        except re.error as exc:
            bad_input(f"--only {args.only!r} is not a regular expression ({exc})")
    if args.max_len < 2:
        bad_input(f"--max-len {args.max_len} is too short; give at least 2 tokens")
    for opt, f in (("--task", args.task), ("--calibration", calibration)):
        if not f.is_file():
            bad_input(f"{opt} {f} is not a file; give a labelled task file (.jsonl/.csv/.tsv)")
    if not (args.model / "config.json").is_file():
        bad_input(f"--model {args.model} has no config.json; give a fine-tuned classifier folder")
    torch.set_num_threads(1)
    console = Console()
    res = run(args.model, args.task, calibration, args.max_len, args.bits, lambda s: console.print(s, highlight=False),
              args.smooth, args.only, args.residual, args.smooth_ratio)
    t = Table(title=f"{args.bits}-bit fake quantization, one part at a time, no training: {args.model} on {args.task} "
                    f"({res['examples']} rows)")
    for col in ("quantized", "accuracy", "label loyalty", "prob. loyalty"):
        t.add_column(col)
    for k, v in res["rows"].items():
        t.add_row(k, f"{v['accuracy']:.4f}", f"{v['label_loyalty']:.4f}", f"{v['probability_loyalty']:.4f}")
    console.print(t)
    if args.json:
        from nasbert_deploy.fileio import write_json_atomic

        write_json_atomic(args.json, res)


if __name__ == "__main__":
    main()
