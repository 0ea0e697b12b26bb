"""File size and latency of one architecture's quantized exports, side by side (issue #14's size and latency targets).

File sizes depend on the shapes only and latency hardly on the weights' values, so this needs no training: the
architecture is built with random weights (non-zero biases, as trained models have), its step sizes initialised as
`quantize` does (LSQ weights, activation ranges from one batch of random tokens), and exported the way `quantize`
and `export` export:

    fp32 ONNX / IR | ORT dynamic INT8 (`export --int8`) | NNCF INT8 (OpenVINO) | KDLSQ 8-bit QDQ (ORT; OpenVINO IR),
      input grids centred as `quantize --signed-activations` (default auto; the asymmetric grids in a row beside)
    | the same with attention's score product Q·Kᵀ in 8 bits (`lowbit.attention`, as NNCF places it)
    | KDLSQ 4-bit MatMulNBits with and without the 4-bit word-embedding table (ORT; OpenVINO reads it as u4)
    | with --smooth ALPHA: KDLSQ 8-bit with a float word table, and with SmoothQuant (`lowbit.smooth`, max |x| from
      8 batches of random tokens: a Mul before each QuantizeLinear, the attention outputs' folded into the value
      Linears) with either table

    taskset -c 1 python benchmarks/bench_quantize_files.py --arch '256:mha,ffn,id,id|256:mha,ffn,id,id|256:mha,ffn,id,id' \
        --space minilm-wide --rounds 7 [--no-latency]

Latency: 1 thread, batch 1 x --seq random tokens, interleaved rounds in alternating order, min over rounds of the
round medians (as bench_quantize.py). Run it on an otherwise idle core, or with `--clock cpu`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from bench_quantize import _open, _size, cpu_model, interleaved_rounds

from nasbert_deploy.devices import load_device
from nasbert_deploy.lowbit.attention import quantize_attention
from nasbert_deploy.lowbit.embedding import quantize_embeddings
from nasbert_deploy.lowbit.grid import DEFAULT_SIGNED_ACTIVATIONS, SIGNED_ACTIVATIONS
from nasbert_deploy.lowbit.lsq import quantize_linears
from nasbert_deploy.lowbit.qdq import export_quantized_onnx
from nasbert_deploy.lowbit.smooth import input_absmax, smooth_model
from nasbert_deploy.model.modeling import NasBertForSequenceClassification
from nasbert_deploy.runtimes.base import get_runtime
from nasbert_deploy.runtimes.convert import EXAMPLE_BATCH, EXAMPLE_SEQ, FirstOutput
from nasbert_deploy.runtimes.signed import openvino_ir
from nasbert_deploy.runtimes.timing import CLOCKS, round_statistic
from nasbert_deploy.space import get_space
from nasbert_deploy.student.distill import build_student


def classifier(arch: str, space: str, labels: int) -> torch.nn.Module:
    torch.manual_seed(0)
    enc = build_student(arch, init="random", space=get_space(space)).model
    cfg = enc.config
    cfg.num_labels = labels
    m = NasBertForSequenceClassification(cfg)
    m.nasbert.load_state_dict(enc.state_dict())
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.Linear) and mod.bias is not None:
                mod.bias.normal_(0, 0.02)
    return m.eval()


def build(a: argparse.Namespace, work: Path) -> dict[str, tuple[Path, bool]]:
    """name -> (file, opened by OpenVINO)"""
    vocab = get_space(a.space).vocab_size
    g = torch.Generator().manual_seed(0)
    ex = {"input_ids": torch.randint(5, vocab, (EXAMPLE_BATCH, EXAMPLE_SEQ), generator=g),
          "attention_mask": torch.ones(EXAMPLE_BATCH, EXAMPLE_SEQ, dtype=torch.long)}
    calib = [{"input_ids": np.random.default_rng(i).integers(5, vocab, (1, a.seq)),
              "attention_mask": np.ones((1, a.seq), np.int64)} for i in range(32)]
    fp = classifier(a.arch, a.space, a.labels)
    files = {}
    for name, dev, stem in (("fp32", "cpu-ort", "model.onnx"), ("ORT dynamic INT8", "cpu-ort-int8", "model.int8.onnx"),
                            ("fp32 IR", "cpu-openvino", "openvino_model.xml"),
                            ("NNCF INT8", "cpu-openvino-int8", "openvino_model.int8.xml")):
        spec = load_device(dev)
        d = work / dev
        d.mkdir(parents=True, exist_ok=True)
        get_runtime(spec.runtime).compile(FirstOutput(fp), ex, ["logits"], spec, d, calibration=calib if "int8" in dev else None)
        files[name] = (d / stem, spec.runtime == "openvino")
    first = {k: torch.tensor(v) for k, v in calib[0].items()}
    absmax = input_absmax(fp, [{k: torch.tensor(v) for k, v in c.items()} for c in calib[:8]]) if a.smooth else {}
    mode = a.signed_activations
    variants = [(8, 8, False, 0.0, mode), (8, 8, True, 0.0, mode), (4, 0, False, 0.0, mode), (4, 4, False, 0.0, mode)]
    if mode != "off":  # the asymmetric grids beside them
        variants.insert(1, (8, 8, False, 0.0, "off"))
    if a.smooth:  # the 8-bit table's cost, then SmoothQuant's Muls with either table
        variants += [(8, 0, False, 0.0, mode), (8, 8, False, a.smooth, mode), (8, 0, False, a.smooth, mode)]
    for bits, emb, att, alpha, signed in [v for v in variants if v[0] in a.bits]:
        m = classifier(a.arch, a.space, a.labels)
        quantize_linears(m, bits, 8, ex, signed_activations=signed)
        if alpha:
            smooth_model(m, absmax, alpha)
        if emb:
            quantize_embeddings(m, emb)
        if att:
            quantize_attention(m)
        with torch.no_grad():
            m(**first)  # activation step sizes from one batch
        label = (f"KDLSQ {bits}-bit, {'float' if not emb else f'{emb}-bit'} embeddings" + (", 8-bit attention" if att else "")
                 + (f", SmoothQuant {alpha}" if alpha else "") + (", asymmetric inputs" if signed != mode else ""))
        stem = f"q{bits}e{emb}a{int(att)}s{alpha}{signed}"
        path = export_quantized_onnx(m, work / f"{stem}.onnx", ex, bits)
        files[label] = (path, False)
        if bits == 8 or emb:  # OpenVINO reads the graph with centred inputs as int8, as `quantize` converts it
            xml = openvino_ir(path, work / f"{stem}.xml")
            files[f"{label} (OpenVINO)"] = (Path(xml), True)
    return files


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="256:mha,ffn,id,id|256:mha,ffn,id,id|256:mha,ffn,id,id")
    p.add_argument("--space", default="minilm-wide")
    p.add_argument("--labels", type=int, default=12)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--clock", choices=tuple(CLOCKS), default="wall")
    p.add_argument("--no-latency", action="store_true", help="file sizes only")
    p.add_argument("--bits", type=int, nargs="+", default=[8, 4], choices=(8, 4), help="which KDLSQ exports to build")
    p.add_argument("--smooth", type=float, default=0.0, help="SmoothQuant alpha in (0, 1): adds 8-bit rows with it (and "
                   "with a float word table, without it); 0: off")
    p.add_argument("--signed-activations", choices=SIGNED_ACTIVATIONS, default=DEFAULT_SIGNED_ACTIVATIONS,
                   help="`quantize --signed-activations` of the KDLSQ rows (not off: an asymmetric-input row is added)")
    a = p.parse_args()
    if not 0.0 <= a.smooth < 1.0:
        print(f"error: --smooth {a.smooth}: give an alpha in (0, 1), or 0 for off", file=sys.stderr)
        raise SystemExit(2)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench-qfiles-") as tmp:
        files = build(a, Path(tmp))
        fp32_mb = _size(files["fp32"][0]) / 2**20
        ms: dict[str, float] = {}
        if not a.no_latency:
            rng = np.random.default_rng(1)
            inputs = {"input_ids": rng.integers(5, get_space(a.space).vocab_size, (1, a.seq)),
                      "attention_mask": np.ones((1, a.seq), np.int64)}
            compiled = {n: _open(path, ov, int8=n == "NNCF INT8") for n, (path, ov) in files.items()}
            rounds = interleaved_rounds(compiled, inputs, a.rounds, a.clock)
            ms = {n: round_statistic(v, "min") for n, v in rounds.items()}
        print(f"{a.arch} ({a.space}), {cpu_model()}, 1 thread, batch 1 x {a.seq}, {a.rounds} rounds, clock {a.clock}, "
              f"load average {os.getloadavg()[0]:.2f}")
        print(f"{'export':52s} {'MB':>7s} {'x smaller':>9s} {'ms':>8s}")
        for n, (path, _) in files.items():
            mb = _size(path) / 2**20
            print(f"{n:52s} {mb:7.2f} {fp32_mb / mb:9.2f} {ms.get(n, float('nan')):8.3f}")


if __name__ == "__main__":
    main()
