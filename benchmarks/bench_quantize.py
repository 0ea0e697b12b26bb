"""KDLSQ vs post-training quantization on a real task, side by side: accuracy, macro-F1, loyalty to fp32, file size,
and latency on cpu-ort and cpu-openvino (1 thread, batch 1, one run, interleaved rounds).

    taskset -c 0 .venv/bin/python benchmarks/bench_quantize.py --model /tmp/work/ft/teacher-debian \
        --train /work/shared/tasks/debian-sections/train.jsonl --valid /work/shared/tasks/debian-sections/valid.jsonl \
        --out /tmp/kdlsq/bench --steps 200 --train-len 64 [--transfer corpus.txt --transfer-rows 30000] \
        [--phase train|score|latency|all]

Phases cache their results in --out (rerun to resume): `train` runs `quantize` for 8, 4 and 2 bits
(training at --train-len tokens), `score` scores every artefact on the valid split at --eval-len tokens,
`latency` times them (run it on an otherwise idle core, or with `--clock cpu`: process CPU time, which leaves out
the time other processes take from the core; `--extra NAME=PATH` adds more files to the same rounds). Rows:

    fp32 (ORT / OpenVINO) | PTQ: ORT dynamic INT8 (`export --int8`), NNCF INT8 | KDLSQ 8-bit QDQ (ORT, OpenVINO)
    | KDLSQ 4-bit weights (ORT MatMulNBits; OpenVINO u4) | KDLSQ 2-bit (simulated: PyTorch fake quantization)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nasbert_deploy.devices import load_device
from nasbert_deploy.quantize.check import task_logits, torch_runner
from nasbert_deploy.quantize.run import load_quantized, onnx_name, quantize
from nasbert_deploy.quantize.train import QuantizeConfig
from nasbert_deploy.runtimes.base import get_runtime, time_compiled
from nasbert_deploy.runtimes.convert import EXAMPLE_BATCH, EXAMPLE_SEQ, FirstOutput
from nasbert_deploy.runtimes.onnxruntime_rt import OrtCompiled
from nasbert_deploy.runtimes.openvino_rt import OvCompiled
from nasbert_deploy.runtimes.timing import CLOCKS, round_statistic
from nasbert_deploy.student.finetune import load_classifier, model_labels, transfer_texts
from nasbert_deploy.student.metrics import evaluate_logits
from nasbert_deploy.student.tasks import iter_batches, load_task

FORMATS = {8: ("onnx", "openvino"), 4: ("onnx", "openvino"), 2: ()}


def cpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), platform.processor())


def train_phase(a: argparse.Namespace, out: Path) -> None:
    train, valid = load_task(a.train), load_task(a.valid)
    extra = transfer_texts(a.transfer, train, valid, a.transfer_rows, 0) if a.transfer else None
    for bits in a.bits:
        target = out / f"q{bits}"
        if (target / "quantize_report.json").is_file():
            continue
        cfg = QuantizeConfig(bits=bits, steps=a.steps, batch_size=16, max_len=a.train_len, ce_weight=a.ce_weight,
                             checkpoint_every=50, embedding_bits=a.embedding_bits, attention_bits=a.attention_bits,
                             hidden_weight=a.hidden_weight, smooth=a.smooth)
        t0 = time.perf_counter()

        def progress(s: int, t: int, v: dict[str, float], bits: int = bits) -> None:
            if s % 25 == 0:
                print(f"{bits}-bit step {s}/{t} " + " ".join(f"{k} {x:.4f}" for k, x in v.items()), flush=True)

        quantize(a.model, train, valid, target, cfg, FORMATS[bits], progress=progress, note=print, transfer=extra)
        print(f"{bits}-bit trained and exported in {time.perf_counter() - t0:.0f} s", flush=True)


def baselines(a: argparse.Namespace, out: Path) -> dict[str, Path]:
    """fp32 ONNX / IR, ORT dynamic INT8 and NNCF INT8 of the fp32 model, through the project's runtime path."""
    base = out / "baselines"
    files = {"fp32-ort": base / "ort" / "model.onnx", "ptq-ort-dynamic-int8": base / "ort-int8" / "model.int8.onnx",
             "fp32-openvino": base / "ov" / "openvino_model.xml", "ptq-nncf-int8": base / "ov-int8" / "openvino_model.int8.xml"}
    if all(p.is_file() for p in files.values()):
        return files
    model, tok = load_classifier(a.model)
    calib = [{k: v.numpy() for k, v in b.items()}
             for _, b in iter_batches(tok, load_task(a.train).subset(range(64)), 1, a.eval_len)]
    build_exports(model, [("cpu-ort", base / "ort"), ("cpu-ort-int8", base / "ort-int8"), ("cpu-openvino", base / "ov"),
                          ("cpu-openvino-int8", base / "ov-int8")], calib)
    return files


def build_exports(model: Any, targets: list[tuple[str, Path]], calib: list[dict[str, np.ndarray]] | None = None) -> None:
    """The classifier's logits exported for each (device spec, folder) through the project's runtime path: fp32, or
    post-training INT8 (ORT dynamic, NNCF with `calib`) where the spec's precision says int8."""
    model.eval()
    g = torch.Generator().manual_seed(0)
    ex = {"input_ids": torch.randint(5, int(model.config.vocab_size), (EXAMPLE_BATCH, EXAMPLE_SEQ), generator=g),
          "attention_mask": torch.ones(EXAMPLE_BATCH, EXAMPLE_SEQ, dtype=torch.long)}
    for spec_name, folder in targets:
        spec = load_device(spec_name)
        folder.mkdir(parents=True, exist_ok=True)
        get_runtime(spec.runtime).compile(FirstOutput(model), ex, ["logits"], spec, folder,
                                          calibration=calib if spec.precision == "int8" else None)
        print("built", spec_name, "->", folder, flush=True)


def _open(path: Path, ov: bool, int8: bool = False) -> Any:
    """A 1-thread session: ORT as `cpu-ort` specs open it; OpenVINO as the device specs do: a float IR pinned to f32
    (cpu-openvino), a quantized one (NNCF INT8, KDLSQ: any IR with FakeQuantize nodes, or `int8`) unpinned like
    cpu-openvino-int8 / -kdlsq8 (what stays float runs at the CPU's default precision: bf16 on AVX-512 BF16 / AMX
    hosts). Opening KDLSQ IRs pinned to f32 beside NNCF unpinned made them look 7-20% slower (2026-12-03)."""
    if not ov:
        return OrtCompiled(path, load_device("cpu-ort"))
    return OvCompiled(path, load_device("cpu-openvino-int8" if int8 or is_quantized_ir(path) else "cpu-openvino"))


def interleaved_rounds(compiled: dict[Any, Any], inputs: dict[str, np.ndarray], rounds: int, clock: str = "wall"
                       ) -> dict[Any, list[float]]:
    """Each compiled model's median ms per round: `rounds` rounds, every model once per round, the order alternating
    (forward, then reversed) so drift on a shared host spreads evenly; 5 warm-up runs, 20 timed, at least 0.3 s."""
    out: dict[Any, list[float]] = {k: [] for k in compiled}
    for r in range(rounds):
        for k in list(compiled) if r % 2 == 0 else list(reversed(compiled)):
            out[k].append(time_compiled(compiled[k], inputs, warmup=5, runs=20, min_time_s=0.3,
                                        clock=CLOCKS[clock]).median_ms)
    return out


def is_quantized_ir(path: Path) -> bool:
    """Whether an OpenVINO IR (.xml) holds FakeQuantize nodes (NNCF INT8, KDLSQ exports)."""
    return 'type="FakeQuantize"' in Path(path).read_text(encoding="utf-8", errors="replace")


def artefacts(a: argparse.Namespace, out: Path) -> dict[str, tuple[Path, bool]]:
    """name -> (file, is OpenVINO)"""
    b = baselines(a, out)
    arts = {"fp32 (ORT)": (b["fp32-ort"], False), "PTQ ORT dynamic INT8": (b["ptq-ort-dynamic-int8"], False),
            "fp32 (OpenVINO)": (b["fp32-openvino"], True), "PTQ NNCF INT8 (OpenVINO)": (b["ptq-nncf-int8"], True)}
    if (out / "q8" / onnx_name(8)).is_file():
        arts["KDLSQ 8-bit QDQ (ORT)"] = (out / "q8" / onnx_name(8), False)
        arts["KDLSQ 8-bit (OpenVINO IR)"] = (out / "q8" / "openvino" / "openvino_model_q8.xml", True)
    if (out / "q4" / onnx_name(4)).is_file():
        arts["KDLSQ 4-bit weights (ORT MatMulNBits)"] = (out / "q4" / onnx_name(4), False)
        arts["KDLSQ 4-bit weights (OpenVINO u4)"] = (out / "q4" / onnx_name(4), True)  # reads MatMulNBits as u4
    return arts


def score_phase(a: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Scores on the valid split; loyalty against the fp32 ONNX Runtime export (equal to PyTorch fp32 within 1e-5)."""
    cache = out / "scores.json"
    scores = json.loads(cache.read_text()) if cache.is_file() else {}
    fp_model, tok = load_classifier(a.model)
    valid = load_task(a.valid)
    y = valid.label_ids({n: i for i, n in enumerate(model_labels(fp_model))})
    arts = artefacts(a, out)
    runs: dict[str, Any] = {}
    for name, (path, ov) in arts.items():
        if name == "fp32 (OpenVINO)" or (a.baselines_only and name.startswith("KDLSQ")):
            continue  # fp32 OpenVINO: the same function as the ORT export (validated by `export`); timed, not scored
        runs[name] = lambda p=path, o=ov, n=name: task_logits(lambda x, c=_open(p, o, int8="NNCF" in n): c.run(x)[0],
                                                              tok, valid, a.eval_len)
    if a.torch_scores:
        for bits in a.bits:
            if (out / f"q{bits}" / "quantization.json").is_file():
                label = f"KDLSQ {bits}-bit (PyTorch fake quant{', simulated only' if bits == 2 else ''})"
                runs[label] = lambda b=bits: task_logits(torch_runner(load_quantized(out / f"q{b}")[0]), tok, valid, a.eval_len)
    ref_path = out / "fp32_ort_logits.npy"
    if not ref_path.is_file():
        np.save(ref_path, runs["fp32 (ORT)"]())
    ref = np.load(ref_path)
    for name, fn in runs.items():
        if name in scores:
            continue
        t0 = time.perf_counter()
        logits = ref if name == "fp32 (ORT)" else fn()
        scores[name] = {**evaluate_logits(y, logits, ref).to_dict(), "score_s": round(time.perf_counter() - t0, 1)}
        cache.write_text(json.dumps(scores, indent=1))
        print(f"{name}: acc {scores[name]['accuracy']:.4f} f1 {scores[name]['macro_f1']:.4f} "
              f"prob-loyalty {scores[name]['probability_loyalty']:.4f}", flush=True)
    return scores


def latency_phase(a: argparse.Namespace, out: Path) -> dict[str, Any]:
    tok = load_classifier(a.model)[1]
    row = load_task(a.valid).subset([0])
    _, batch = next(iter_batches(tok, row, 1, a.eval_len))
    ids = np.full((1, a.eval_len), tok.pad_token_id or 0, dtype=np.int64)
    n = batch["input_ids"].shape[1]
    ids[0, :n] = batch["input_ids"][0].numpy()
    ids[0, n:] = ids[0, 1:1 + a.eval_len - n] if n > 1 else ids[0, n:]
    inputs = {"input_ids": ids, "attention_mask": np.ones_like(ids)}  # batch 1 x eval_len real tokens
    arts = artefacts(a, out)
    for spec in a.extra:  # NAME=PATH: another artefact timed in the same rounds (e.g. an older export)
        name, _, path = spec.partition("=")
        arts[name] = (Path(path), path.endswith(".xml"))
    compiled = {name: _open(p, ov, int8="NNCF" in name) for name, (p, ov) in arts.items()}
    rounds = interleaved_rounds(compiled, inputs, a.rounds, a.clock)
    res = {name: {"median_ms": round(round_statistic(v, "min"), 3), "rounds_ms": [round(x, 3) for x in v],
                  "file_mb": round(_size(arts[name][0]) / 2**20, 2)} for name, v in rounds.items()}
    res["_machine"] = {"cpu": cpu_model(), "threads": 1, "batch": 1, "seq": a.eval_len, "rounds": a.rounds,
                       "clock": a.clock, "load_average": os.getloadavg(),
                       "statistic": "min over rounds of the round medians", "pinned": os.sched_getaffinity(0).__repr__()}
    (out / "latency.json").write_text(json.dumps(res, indent=1))
    for name, v in res.items():
        if not name.startswith("_"):
            print(f"{name:40s} {v['median_ms']:8.2f} ms  {v['file_mb']:7.2f} MB", flush=True)
    return res


def _size(path: Path) -> int:
    return path.stat().st_size + (path.with_suffix(".bin").stat().st_size if path.suffix == ".xml" else 0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--train", required=True)
    p.add_argument("--valid", required=True)
    p.add_argument("--out", default="/tmp/kdlsq/bench")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--train-len", type=int, default=64)
    p.add_argument("--ce-weight", type=float, default=1.0, help="gold-label CE weight (0: distillation only)")
    p.add_argument("--embedding-bits", type=int, default=None, help="word-embedding table bits (0: float; default: as --bits)")
    p.add_argument("--attention-bits", type=int, default=0, choices=(0, 8), help="attention products' bits (0: float)")
    p.add_argument("--smooth", type=float, default=0.0, help="SmoothQuant alpha in (0, 1) before training (0: off)")
    p.add_argument("--hidden-weight", type=float, default=1.0, help="hidden-state MSE weight (0: logits and labels only)")
    p.add_argument("--transfer", default=None, help="unlabelled in-domain text (one paragraph per line), distilled only")
    p.add_argument("--transfer-rows", type=int, default=0, help="use this many --transfer lines (0: all)")
    p.add_argument("--eval-len", type=int, default=128)
    p.add_argument("--bits", type=int, nargs="+", default=[8, 4, 2])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                   help="Latency clock: wall time, or this process's CPU time (a shared, oversubscribed host).")
    p.add_argument("--extra", nargs="*", default=[], metavar="NAME=PATH",
                   help="More ONNX files / OpenVINO IRs (.xml) to time in the same rounds.")
    p.add_argument("--torch-scores", action="store_true", help="Also score the PyTorch fake-quantized models (slow).")
    p.add_argument("--baselines-only", action="store_true",
                   help="Score fp32 and PTQ only (the KDLSQ rows are in each q*/quantize_report.json, at --train-len).")
    p.add_argument("--phase", choices=("train", "score", "latency", "all"), default="all")
    a = p.parse_args()
    if not 0.0 <= a.smooth < 1.0:
        print(f"error: --smooth {a.smooth}: give an alpha in (0, 1), or 0 for off", file=sys.stderr)
        raise SystemExit(2)
    torch.set_num_threads(1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.phase in ("train", "all"):
        train_phase(a, out)
    if a.phase in ("score", "all"):
        score_phase(a, out)
    if a.phase in ("latency", "all"):
        latency_phase(a, out)


if __name__ == "__main__":
    main()
