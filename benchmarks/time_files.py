"""Time exported model files side by side: ONNX files on ONNX Runtime, IRs or ONNX files on OpenVINO.

For exports that already exist (`quantize` folders' `onnx/model_q8.onnx` and `openvino/*.xml`, a PTQ baseline from
`bench_plane.py`'s work folder, any classifier ONNX): each file is opened as the device specs open it (1 thread; an
OpenVINO IR with FakeQuantize nodes unpinned like cpu-openvino-int8, `bench_quantize._open`) and timed in interleaved
rounds in alternating order, batch 1 x --seq tokens (random ids, full mask), min over rounds of the round medians.
The first file of each runtime is the reference of the ratio column: put the baseline (ORT dynamic INT8, NNCF) first.

    taskset -c 1 python benchmarks/time_files.py --clock cpu --rounds 15 \\
        --ort "PTQ dynamic INT8=runs/plane/teacher/cpu-ort-int8/model.int8.onnx" --ort "KDLSQ=q8/onnx/model_q8.onnx" \\
        --openvino "NNCF=runs/plane/teacher/cpu-openvino-int8/openvino_model.int8.xml" \\
        --openvino "KDLSQ=q8/openvino/openvino_model_q8.xml"

`--ort-default NAME=FILE` opens an ONNX file as a user's `ort.InferenceSession(path)` does (ORT's default graph
optimizations, SkipLayerNormFusion included, which our sessions disable: docs/export.md), 1 thread:

    taskset -c 1 python benchmarks/time_files.py --clock cpu --rounds 9 --ort teacher=bert.onnx \\
        --ort-default teacher=bert.onnx --ort-default "teacher (before)=bert-fused.onnx"
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from bench_quantize import _open, cpu_model, interleaved_rounds

from nasbert_deploy.devices import load_device
from nasbert_deploy.runtimes.onnxruntime_rt import OrtCompiled
from nasbert_deploy.runtimes.timing import CLOCKS, round_statistic


def bad_input(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def parse(items: list[str], flag: str, suffixes: tuple[str, ...]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.rpartition("=")
        if not sep or not name or not Path(path).is_file() or not path.endswith(suffixes):
            bad_input(f"{flag} {item!r} is not NAME=FILE with an existing {' or '.join(suffixes)} file")
        if name in out:
            bad_input(f"{flag} name {name!r} is given twice; give each file its own name")
        out[name] = Path(path)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ort", action="append", default=[], metavar="NAME=FILE", help="an ONNX file for ONNX Runtime")
    p.add_argument("--ort-default", action="append", default=[], metavar="NAME=FILE",
                   help="an ONNX file for ONNX Runtime in a default session (as a user opens it)")
    p.add_argument("--openvino", action="append", default=[], metavar="NAME=FILE", help="an IR (.xml) or ONNX file")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--vocab", type=int, default=30522, help="token ids are drawn below this")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall", help="cpu: process CPU time (shared host)")
    a = p.parse_args()
    ort_files, ov_files = parse(a.ort, "--ort", (".onnx",)), parse(a.openvino, "--openvino", (".xml", ".onnx"))
    default_files = parse(a.ort_default, "--ort-default", (".onnx",))
    if not ort_files and not ov_files and not default_files:
        bad_input("no files: give --ort NAME=FILE, --ort-default NAME=FILE and / or --openvino NAME=FILE")
    if a.seq < 2 or a.rounds < 1 or a.vocab < 6:
        bad_input(f"--seq {a.seq} / --rounds {a.rounds} / --vocab {a.vocab}: give at least 2 tokens, 1 round and a "
                  "vocabulary of 6 ids (ids are drawn from 5 up)")
    files = {("onnxruntime", n): (f, False) for n, f in ort_files.items()}
    files |= {("openvino", n): (f, True) for n, f in ov_files.items()}
    rng = np.random.default_rng(1)
    inputs = {"input_ids": rng.integers(5, a.vocab, (1, a.seq)), "attention_mask": np.ones((1, a.seq), np.int64),
              "token_type_ids": np.zeros((1, a.seq), np.int64)}  # each session takes the inputs its file names
    # an ONNX file with QuantizeLinear nodes opens on OpenVINO as a quantized IR does (unpinned, as cpu-openvino-int8)
    compiled = {k: _open(f, ov, int8=ov and f.suffix == ".onnx" and b"QuantizeLinear" in f.read_bytes())
                for k, (f, ov) in files.items()}
    compiled |= {("ort-default", n): OrtCompiled(f, load_device("cpu-ort"), disabled_optimizers=())
                 for n, f in default_files.items()}
    rounds = interleaved_rounds(compiled, inputs, a.rounds, a.clock)
    ms = {k: round_statistic(v, "min") for k, v in rounds.items()}
    print(f"{cpu_model()}, 1 thread, batch 1 x {a.seq}, {a.rounds} rounds, clock {a.clock}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'runtime':12s} {'file':48s} {'ms (min)':>9s} {'median':>8s} {'ratio':>6s}")
    first: dict[str, float] = {}
    for (rt, name), v in ms.items():
        first.setdefault(rt, v)
        print(f"{rt:12s} {name:48s} {v:9.3f} {float(np.median(rounds[(rt, name)])):8.3f} {v / first[rt]:6.3f}")


if __name__ == "__main__":
    main()
