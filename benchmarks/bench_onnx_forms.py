"""The 8-bit ONNX forms of `quantize` side by side on trained folders (issue #14's ORT latency target).

`integer` (the default since 2026-12-06): QuantizeLinear -> MatMulIntegerToFloat with the bias inside; `qdq`: standard
Q/DQ operators, which ONNX Runtime runs as MatMulIntegerToFloat / QGemm with a float bias Add after some of them.
Each `quantize` folder is exported again in every form from its saved state (`load_quantized`, no training), then:

- numerics: max and mean |logit difference| to the fake-quantized PyTorch model on the first --rows valid rows, and the
  argmax agreement with it, on ONNX Runtime and OpenVINO;
- with --score: accuracy, macro-F1 and label / probability loyalty on every valid row, loyalty to the fp32 model the
  folder was quantized from (its report's `model`, in PyTorch), and the same for ORT dynamic INT8;
- latency: every form on both runtimes beside the folder's float model quantized by ORT dynamic INT8 (`export --int8`),
  1 thread, batch 1 x --seq tokens, interleaved rounds in alternating order; the ratio is the median over rounds of
  the per-round ratio to ORT dynamic INT8 (ONNX Runtime rows) or to the integer IR (OpenVINO rows).

    taskset -c 1 python benchmarks/bench_onnx_forms.py --valid ../shared/tasks/debian-sections/valid.jsonl \
        --folder lr0=runs/q-debian/lr0-s1/q8 --folder smooth=runs/q-debian/sm-lr0-att8/q8 [--out result.json]

Run it on an otherwise idle core. Bad input (a folder that is not a `quantize` output of 8 bits, a missing valid
file) is one line, exit 2, before any export.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from bench_quantize import _open, cpu_model

from nasbert_deploy.devices import load_device
from nasbert_deploy.lowbit import ONNX_FORMS
from nasbert_deploy.lowbit.qdq import export_quantized_onnx
from nasbert_deploy.quantize.check import first_output, runtime_runners, task_logits, torch_runner
from nasbert_deploy.quantize.run import _example, load_quantized
from nasbert_deploy.runtimes.base import get_runtime, time_compiled
from nasbert_deploy.runtimes.convert import FirstOutput, onnx_to_openvino
from nasbert_deploy.runtimes.timing import round_statistic
from nasbert_deploy.student.finetune import load_classifier, model_labels
from nasbert_deploy.student.metrics import evaluate_logits
from nasbert_deploy.student.tasks import load_task


def _fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def check(a: argparse.Namespace) -> dict[str, tuple[Path, Path]]:
    """name -> (quantize folder, the fp32 model it was quantized from); one line and exit 2 on bad input."""
    if a.rows < 1 or a.rounds < 1 or a.seq < 2:
        _fail(f"--rows {a.rows}, --rounds {a.rounds}, --seq {a.seq}: give --rows and --rounds >= 1, --seq >= 2")
    if not a.valid.is_file():
        _fail(f"--valid {a.valid}: no such file; give a task file (.jsonl/.csv/.tsv with text, label)")
    folders = {}
    for spec in a.folder:
        name, _, path = spec.rpartition("=")
        p = Path(path)
        meta = p / "quantization.json"
        if not meta.is_file() or json.loads(meta.read_text()).get("bits") != 8:
            _fail(f"--folder {spec}: not an 8-bit `nasbert-deploy quantize` output folder (no quantization.json with "
                  "bits 8); give NAME=DIR")
        fp = Path(json.loads((p / "quantize_report.json").read_text())["model"])
        if not (fp / "config.json").is_file():
            _fail(f"--folder {spec}: the fp32 model it was quantized from ({fp}, its report's `model`) is not there; run "
                  "this from the directory `quantize` ran in")
        folders[name or p.name] = (p, fp)
    if not folders:
        _fail("give at least one --folder NAME=DIR")
    return folders


def build(name: str, folder: Path, fp_dir: Path, valid: Any, a: argparse.Namespace, work: Path
          ) -> tuple[dict[str, Any], dict[str, tuple[Path, bool]]]:
    """Every form's file and IR, and ORT dynamic INT8 of the fp32 model; numerics and scores."""
    model, tok, _ = load_quantized(folder)
    rows = a.rows
    ex = _example(model, valid.pairs is not None)
    sub = valid.subset(list(range(min(rows, len(valid)))))
    ref = task_logits(torch_runner(model), tok, sub, 128)
    files: dict[str, tuple[Path, bool]] = {}
    numerics: dict[str, Any] = {}
    for form in ONNX_FORMS:
        path = export_quantized_onnx(model, work / f"{name}-{form}.onnx", ex, 8, form=form)
        xml = Path(onnx_to_openvino(path, work / f"{name}-{form}.xml", fp16=False, convert=False))
        files[f"{name} {form} (ORT)"], files[f"{name} {form} (OpenVINO)"] = (path, False), (xml, True)
        for rt in ("onnxruntime", "openvino"):
            got = task_logits(first_output(runtime_runners({rt: path})[rt]), tok, sub, 128)
            d = np.abs(got - ref)
            numerics[f"{form} {rt}"] = {"max_abs_diff": round(float(d.max()), 4), "mean_abs_diff": round(float(d.mean()), 5),
                                        "argmax_agreement": round(float((got.argmax(1) == ref.argmax(1)).mean()), 4)}
    spec = load_device("cpu-ort-int8")
    fp_model = load_classifier(fp_dir)[0].eval()
    get_runtime(spec.runtime).compile(FirstOutput(fp_model), ex, ["logits"], spec, work / f"{name}-dyn")
    files[f"{name} ORT dynamic INT8"] = (work / f"{name}-dyn" / "model.int8.onnx", False)
    out: dict[str, Any] = {"rows": len(sub), "numerics_vs_pytorch": numerics, "fp32_model": str(fp_dir)}
    if a.score:
        y = valid.label_ids({n: i for i, n in enumerate(model_labels(fp_model))})
        ref = task_logits(torch_runner(fp_model), tok, valid, a.seq)
        out["scores"] = {"fp32 (PyTorch)": evaluate_logits(y, ref).to_dict()}
        for label, (path, ov) in files.items():
            rt = "openvino" if ov else "onnxruntime"
            runner = first_output(runtime_runners({rt: path})[rt])
            out["scores"][label] = evaluate_logits(y, task_logits(runner, tok, valid, a.seq), ref).to_dict()
            sc = out["scores"][label]
            print(f"{label:40s} acc {sc['accuracy']:.4f} f1 {sc['macro_f1']:.4f} label / prob. loyalty "
                  f"{sc['label_loyalty']:.4f} / {sc['probability_loyalty']:.4f}", flush=True)
    return out, files


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--valid", type=Path, required=True)
    p.add_argument("--folder", action="append", default=[], metavar="NAME=DIR", help="a `quantize` folder (8-bit)")
    p.add_argument("--rows", type=int, default=300, help="valid rows compared with the PyTorch model")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--score", action="store_true", help="score every export on all valid rows (accuracy, loyalty)")
    p.add_argument("--out", type=Path, default=None, help="JSON with every figure (written atomically)")
    a = p.parse_args()
    folders = check(a)
    valid = load_task(a.valid)
    result: dict[str, Any] = {"machine": {"cpu": cpu_model(), "threads": 1, "batch": 1, "seq": a.seq, "rounds": a.rounds,
                                          "pinned": sorted(os.sched_getaffinity(0))}, "folders": {}}
    with tempfile.TemporaryDirectory(prefix="bench-forms-") as tmp:
        files: dict[str, tuple[Path, bool]] = {}
        for name, (folder, fp_dir) in folders.items():
            result["folders"][name], f = build(name, folder, fp_dir, valid, a, Path(tmp))
            files.update(f)
            print(f"{name}: " + "; ".join(f"{k} mean |d| {v['mean_abs_diff']} max {v['max_abs_diff']}"
                                          for k, v in result["folders"][name]["numerics_vs_pytorch"].items()), flush=True)
        rng = np.random.default_rng(1)
        vocab = int(json.loads((next(iter(folders.values()))[0] / "config.json").read_text())["vocab_size"])
        inputs = {"input_ids": rng.integers(5, vocab, (1, a.seq)), "attention_mask": np.ones((1, a.seq), np.int64)}
        compiled = {n: _open(path, ov) for n, (path, ov) in files.items()}
        rounds: dict[str, list[float]] = {n: [] for n in compiled}
        for r in range(a.rounds):
            for n in (list(compiled) if r % 2 == 0 else list(reversed(compiled))):
                rounds[n].append(time_compiled(compiled[n], inputs, warmup=5, runs=20, min_time_s=0.3).median_ms)
    print(f"{result['machine']['cpu']}, 1 thread, batch 1 x {a.seq}, {a.rounds} rounds, load average "
          f"{os.getloadavg()[0]:.2f}")
    print(f"{'export':40s} {'ms':>8s} {'ratio':>7s}  vs")
    for name in folders:
        for n in [k for k in rounds if k.startswith(f"{name} ")]:
            ref = f"{name} ORT dynamic INT8" if "(ORT)" in n or n.endswith("dynamic INT8") else f"{name} integer (OpenVINO)"
            ratio = statistics.median(x / y for x, y in zip(rounds[n], rounds[ref]))
            result["folders"][name].setdefault("latency", {})[n] = {
                "ms": round(round_statistic(rounds[n], "min"), 3), "rounds_ms": [round(x, 3) for x in rounds[n]],
                "ratio": round(ratio, 4), "ratio_to": ref}
            print(f"{n:40s} {round_statistic(rounds[n], 'min'):8.3f} {ratio:7.3f}  {ref}")
    if a.out:
        tmp_out = a.out.with_suffix(".tmp")
        tmp_out.write_text(json.dumps(result, indent=1))
        tmp_out.replace(a.out)


if __name__ == "__main__":
    main()
