"""Exported models on the CPU runtimes: predicted vs measured latency, runtime vs torch eager, ours vs stock BERT, memory.

1. `--models` random architectures (random weights: latency only) are exported with `export.export_model`
   (ONNX, OpenVINO IR, INT8) and timed with `runtimes.time_compiled` on every CPU device spec at
   (`--batch`, `--seq-len`); the prediction comes from the device's latency table when one exists.
2. Each runtime's latency relative to torch eager (cpu-torch), per model, measured side by side.
3. A BERT-shaped architecture of the standard space (4 blocks x `384:mha,ffn,mha,ffn,mha,ffn` = 12 BERT
   layers of hidden 384) exported by us vs the same shape as a stock `transformers.BertModel`
   (vocab 30522, 12 layers, 6 heads, FFN 1536, no pooler) exported by optimum, on cpu-ort and
   cpu-openvino (and torch eager). Goal: ours / stock <= 1.0 on cpu-ort.
4. Memory: `memory.estimate_memory` vs measured peak RSS of ORT running the exported ONNX.

Ratios come from interleaved rounds (A, B, A, B, ...), the median of the per-round ratios.

    python benchmarks/bench_export.py                 # 10 models; takes /tmp/nasbert-timing.lock itself
    python benchmarks/bench_export.py --models 2 --runs 10 --no-memory
"""

from __future__ import annotations

import argparse
import fcntl
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from nasbert_deploy.devices import DeviceSpec, load_device
from nasbert_deploy.errors import NasBertDeployError
from nasbert_deploy.export.measure import load_latency_table, measure_onnx_memory
from nasbert_deploy.export.pipeline import (
    ExportOptions,
    default_calibration_texts,
    export_model,
    random_model,
)
from nasbert_deploy.model.memory import estimate_memory
from nasbert_deploy.runtimes.base import Compiled, availability, export_artefact, get_runtime
from nasbert_deploy.runtimes.timing import measure
from nasbert_deploy.space import STANDARD, SearchSpace, format_params, get_space

CPU_DEVICES = ("cpu-torch", "cpu-ort", "cpu-ort-int8", "cpu-openvino", "cpu-openvino-int8")
BERT_ARCH = "|".join(["384:mha,ffn,mha,ffn,mha,ffn"] * 4)
console = Console()


def side_by_side(
    fns: dict[str, Callable[[], Any]], rounds: int, **kw: Any
) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """Interleaved `timing.measure` of each callable for `rounds` rounds.

    Returns (median of the per-round medians in ms per name, median per-round ratio name / first name,
    lowest per-round median per name: the statistic a latency table's entries and fits are made of).
    """
    per: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            per[name].append(measure(fn, **kw).median_ms)
    base = next(iter(fns))
    med = {k: statistics.median(v) for k, v in per.items()}
    ratio = {k: statistics.median(a / b for a, b in zip(v, per[base])) for k, v in per.items()}
    return med, ratio, {k: min(v) for k, v in per.items()}


def inputs_for(batch: int, seq_len: int, vocab: int) -> dict[str, np.ndarray]:
    ids = np.random.default_rng(0).integers(1, vocab, size=(batch, seq_len), dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def usable_specs(names: list[str]) -> list[DeviceSpec]:
    specs = []
    for n in names:
        spec = load_device(n)
        reason = availability(spec)
        if reason:
            console.print(f"skipping {n}: {reason}")
        else:
            specs.append(spec)
    return specs


def predictor(spec: DeviceSpec, space: SearchSpace) -> tuple[Any, str | None]:
    try:
        return load_latency_table(spec, space), None
    except NasBertDeployError as exc:
        return None, str(exc)


def export_one(arch: Any, space: SearchSpace, tok: Any, folder: Path, int8: bool, seq_len: int) -> Any:
    model, info = random_model(arch, space)
    opts = ExportOptions(
        int8=int8,
        validate=False,
        measure_latency=False,
        measure_memory=False,
        seq_len=seq_len,
        calibration_texts=default_calibration_texts(16),
    )
    export_model(model, folder, tok, load_device("cpu-ort"), opts, info)
    return model


def bench_models(args: argparse.Namespace, space: SearchSpace, specs: list[DeviceSpec], tok: Any, work: Path) -> list[dict]:
    rng = random.Random(args.seed)
    archs = [space.random_arch(rng) for _ in range(args.models)]
    int8 = any(s.precision == "int8" for s in specs)
    tables = {s.name: predictor(s, space) for s in specs}
    for name, (table, why) in tables.items():
        if table is None:
            console.print(f"[yellow]{name}: no prediction[/] ({why})", highlight=False)
    inputs = inputs_for(args.batch, args.seq_len, space.vocab_size)
    kw = {"warmup": 3, "runs": args.runs, "min_time_s": args.min_time_s}
    rows = []
    for i, arch in enumerate(archs):
        t0 = time.perf_counter()
        folder = work / f"m{i}"
        export_one(arch, space, tok, folder, int8, args.seq_len)
        compiled: dict[str, Compiled] = {s.name: get_runtime(s.runtime).load(folder, s) for s in specs}
        med, ratio, best = side_by_side({n: c.bind(inputs) for n, c in compiled.items()}, args.rounds, **kw)
        row: dict[str, Any] = {
            "arch": str(arch),
            "params": space.params(arch),
            "measured": best,  # compared with the prediction: the table's statistic (lowest-median round)
            "median": med,
            "vs_first": ratio,
            "predicted": {},
        }
        for s in specs:
            table = tables[s.name][0]
            if table is not None:
                row["predicted"][s.name] = table.predict(arch, args.batch, args.seq_len).total_ms
        if args.memory:
            est = estimate_memory(space, arch, args.batch, args.seq_len)
            m = measure_onnx_memory(export_artefact(folder, "onnx"), args.batch, args.seq_len, space.vocab_size)
            row["memory"] = {"estimate_mb": est.total_mb, "weights_mb": est.weights_mb, "measured_peak_mb": m.peak_mb}
        rows.append(row)
        console.print(f"model {i + 1}/{len(archs)} ({format_params(row['params'])}) in {time.perf_counter() - t0:.0f} s")
    return rows


def print_models(rows: list[dict], specs: list[DeviceSpec], args: argparse.Namespace) -> None:
    t = Table(title=f"exported models, batch {args.batch}, seq {args.seq_len}: measured ms, lowest-median round as in the "
                    "tables (predicted, error)")
    t.add_column("#")
    t.add_column("params", justify="right")
    for s in specs:
        t.add_column(s.name, justify="right")
    errs: dict[str, list[float]] = {s.name: [] for s in specs}
    for i, r in enumerate(rows, 1):
        cells = []
        for s in specs:
            m, p = r["measured"][s.name], r["predicted"].get(s.name)
            if p is None:
                cells.append(f"{m:.2f}")
            else:
                e = 100 * (p - m) / m
                errs[s.name].append(e)
                cells.append(f"{m:.2f} ({p:.2f}, {e:+.0f}%)")
        t.add_row(str(i), format_params(r["params"]), *cells)
    console.print(t)
    for name, e in errs.items():
        if e:
            within = sum(abs(x) <= 10 for x in e) / len(e)
            console.print(f"{name}: MAPE {statistics.fmean(abs(x) for x in e):.1f}%, within +-10%: {100 * within:.0f}%")
        else:
            console.print(f"{name}: no latency table, predicted vs measured not available (run `nasbert-deploy profile`)")
    r0 = specs[0].name
    t2 = Table(title=f"latency relative to {r0} (median over models of per-round ratios; < 1 = faster)")
    for c in ("runtime", "median", "min", "max"):
        t2.add_column(c, justify="right")
    for s in specs:
        v = [r["vs_first"][s.name] for r in rows]
        t2.add_row(s.name, f"{statistics.median(v):.2f}", f"{min(v):.2f}", f"{max(v):.2f}")
    console.print(t2)
    if rows and "memory" in rows[0]:
        t3 = Table(title=f"memory (MiB) at batch {args.batch}, seq {args.seq_len}: estimate vs ORT peak RSS growth")
        for c in ("#", "weights", "estimate", "measured peak", "measured / estimate"):
            t3.add_column(c, justify="right")
        for i, r in enumerate(rows, 1):
            m = r["memory"]
            t3.add_row(
                str(i),
                f"{m['weights_mb']:.1f}",
                f"{m['estimate_mb']:.1f}",
                f"{m['measured_peak_mb']:.1f}",
                f"{m['measured_peak_mb'] / m['estimate_mb']:.2f}",
            )
        console.print(t3)


def stock_bert(work: Path) -> tuple[Any, Path]:
    """A stock BertModel of our BERT-shaped arch's shape, exported by optimum's ONNX exporter (feature-extraction)."""
    import torch
    from optimum.exporters.onnx import export
    from optimum.exporters.onnx.model_configs import BertOnnxConfig
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        intermediate_size=1536,
        max_position_embeddings=512,
    )
    model = BertModel(cfg, add_pooling_layer=False).eval()
    path = work / "stock_bert.onnx"
    export(model, BertOnnxConfig(cfg, task="feature-extraction"), path)
    return model, path


def _ort_bind(path: Path, spec: DeviceSpec, inputs: dict[str, np.ndarray], disabled: list[str]) -> Callable[[], Any]:
    """An ORT session with the spec's options and some graph optimizers disabled, bound to `inputs`."""
    import onnxruntime as ort

    from nasbert_deploy.runtimes.onnxruntime_rt import session_options

    sess = ort.InferenceSession(
        str(path), session_options(spec), providers=["CPUExecutionProvider"], disabled_optimizers=disabled
    )
    feed = {i.name: inputs[i.name] for i in sess.get_inputs()}
    return lambda: sess.run(None, feed)


def bench_bert(args: argparse.Namespace, tok: Any, work: Path) -> None:
    from nasbert_deploy.runtimes.convert import onnx_to_openvino
    from nasbert_deploy.runtimes.onnxruntime_rt import OrtCompiled
    from nasbert_deploy.runtimes.openvino_rt import OvCompiled
    from nasbert_deploy.runtimes.torch_rt import TorchCompiled

    space = STANDARD
    ours_dir = work / "bert_shaped"
    ours = export_one(space.parse(BERT_ARCH), space, tok, ours_dir, False, args.seq_len)
    stock, stock_onnx = stock_bert(work)
    stock_xml = onnx_to_openvino(stock_onnx, work / "stock_bert.xml")
    inputs = inputs_for(args.batch, args.seq_len, space.vocab_size)
    kw = {"warmup": 3, "runs": args.runs, "min_time_s": args.min_time_s}
    t = Table(title=f"BERT-shaped (12 x 384) ours vs stock BertModel via optimum, batch {args.batch}, seq {args.seq_len}")
    for c in ("device", "ours ms", "stock ms", "ours / stock"):
        t.add_column(c, justify="right")
    for name in ("cpu-ort", "cpu-openvino", "cpu-torch"):
        spec = load_device(name)
        if availability(spec):
            continue
        if spec.runtime == "onnxruntime":
            a, b = OrtCompiled(export_artefact(ours_dir, "onnx"), spec), OrtCompiled(stock_onnx, spec)
        elif spec.runtime == "openvino":
            a, b = OvCompiled(export_artefact(ours_dir, "openvino"), spec), OvCompiled(stock_xml, spec)
        else:
            a = TorchCompiled(ours, ["input_ids", "attention_mask"], ["last_hidden_state"], spec)
            b = TorchCompiled(stock, ["input_ids", "attention_mask", "token_type_ids"], ["last_hidden_state"], spec)
        med, ratio, _ = side_by_side({"ours": a.bind(inputs), "stock": b.bind(inputs)}, args.rounds, **kw)
        t.add_row(name, f"{med['ours']:.2f}", f"{med['stock']:.2f}", f"{1 / ratio['stock']:.3f}")
        if spec.runtime == "onnxruntime":  # ORT's SkipLayerNormalization fusion is slow on CPU here (see docs/export.md)
            fns = {
                k: _ort_bind(p, spec, inputs, ["SkipLayerNormFusion"])
                for k, p in (("ours", export_artefact(ours_dir, "onnx")), ("stock", stock_onnx))
            }
            med, ratio, _ = side_by_side(fns, args.rounds, **kw)
            t.add_row(
                f"{name}, SkipLayerNormFusion off", f"{med['ours']:.2f}", f"{med['stock']:.2f}", f"{1 / ratio['stock']:.3f}"
            )
    console.print(t)
    p_ours, p_stock = space.params(space.parse(BERT_ARCH)), sum(p.numel() for p in stock.parameters())
    console.print(f"params: ours {format_params(p_ours)} (factorized 128-wide embeddings), stock {format_params(p_stock)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", type=int, default=10)
    ap.add_argument("--space", default=None, help="space of the random models (default: the cpu-ort table's, else standard)")
    ap.add_argument("--devices", default=",".join(CPU_DEVICES), help="comma-separated CPU device specs; the first is the base")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--min-time-s", type=float, default=0.3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-memory", dest="memory", action="store_false")
    ap.add_argument("--no-bert", dest="bert", action="store_false")
    ap.add_argument("--no-lock", dest="lock", action="store_false", help="do not take /tmp/nasbert-timing.lock")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from nasbert_deploy.teacher import load_tokenizer

    specs = usable_specs([d.strip() for d in args.devices.split(",") if d.strip()])
    if not specs:
        sys.exit("no usable device")
    if args.space:
        space = get_space(args.space)
    else:
        table, _ = predictor(load_device("cpu-ort"), None)  # type: ignore[arg-type]
        space = table.space if table is not None else STANDARD
    tok = load_tokenizer(None)
    lock = open("/tmp/nasbert-timing.lock", "w")  # noqa: SIM115  (held for the whole run)
    if args.lock:
        console.print("waiting for /tmp/nasbert-timing.lock ...")
        fcntl.flock(lock, fcntl.LOCK_EX)
    console.print(f"space {space.name}, {len(specs)} devices, threads per spec: {[s.threads for s in specs]}")
    with tempfile.TemporaryDirectory(prefix="bench_export_") as tmp:
        work = Path(tmp)
        if args.models:
            print_models(bench_models(args, space, specs, tok, work), specs, args)
        if args.bert:
            bench_bert(args, tok, work)
    lock.close()


if __name__ == "__main__":
    main()
