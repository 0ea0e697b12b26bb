"""Full vs reduced 8-bit weight grid on an existing KDLSQ folder, *not retrained*: the same learned step sizes,
weights clipped to [-63, 63] for the reduced grid; each variant exported to QDQ ONNX and compared on ONNX Runtime
(1 thread) with its own fake-quantized PyTorch model on the first --rows valid rows. On x86 CPUs without VNNI the
full-range export saturates int16 in ORT's u8 x s8 kernels (`lowbit.grid`); the reduced one cannot.

    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python benchmarks/bench_reduce_range.py --folder /tmp/kdlsq/bench/q8 \
        --valid /work/shared/tasks/debian-sections/valid.jsonl --rows 200 --max-len 64
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nasbert_deploy.lowbit.grid import cpu_flags, saturates_int16
from nasbert_deploy.lowbit.lsq import quant_linears, weight_spec
from nasbert_deploy.lowbit.qdq import export_quantized_onnx
from nasbert_deploy.quantize.check import onnx_weight_range, task_logits, torch_runner
from nasbert_deploy.quantize.run import _example, load_quantized
from nasbert_deploy.student.tasks import load_task


def _ort(path: Path, fused: bool = True):  # noqa: ANN202
    """ORT on 1 thread; `fused` False: no graph optimisation (DequantizeLinear + float MatMul, no integer kernels)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if not fused:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return lambda inputs: s.run(None, dict(inputs))[0]


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", type=Path, required=True)
    ap.add_argument("--valid", type=Path, required=True)
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--max-len", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    full, tokenizer, meta = load_quantized(args.folder)
    reduced = copy.deepcopy(full)
    n_clipped = 0
    for _, q in quant_linears(reduced):  # same step sizes, integers clipped to [-63, 63]
        n_clipped += int((q.w_quant.integers(q.weight).abs() > 63).sum())
        q.w_quant.spec = weight_spec(8, reduce_range=True)
    task = load_task(args.valid)
    task = task.subset(range(min(args.rows, len(task))))
    flags = cpu_flags() or frozenset()
    print(f"cpu flags: {sorted(flags & {'avx2', 'avx512f', 'avx512bw', 'avx512_vnni', 'avx_vnni', 'amx_int8'})}; "
          f"saturates int16: {saturates_int16()}; weights clipped by the reduced grid: {n_clipped}")
    torch_logits = {}
    print("| grid | ONNX int8 range | max abs diff export vs fake-quant | mean cosine | min cosine "
          "| prediction flips | flips vs full-range fake-quant |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="nasbert-rr-") as work:
        for name, model in (("full [-127, 127]", full), ("reduced [-63, 63]", reduced)):
            t0 = time.perf_counter()
            example = _example(model, task.pairs is not None)
            path = export_quantized_onnx(model, Path(work) / f"{name.split()[0]}.onnx", example, 8)
            ref = task_logits(torch_runner(model), tokenizer, task, args.max_len)
            torch_logits[name] = ref
            got = task_logits(_ort(path), tokenizer, task, args.max_len)
            plain = task_logits(_ort(path, fused=False), tokenizer, task, args.max_len)
            print(f"  {name}: unfused ORT (float MatMul on the dequantized weights) vs fake-quant: max abs diff "
                  f"{np.abs(ref - plain).max():.4f}, min cosine {_cos(ref, plain).min():.5f}; fused vs unfused: "
                  f"max abs diff {np.abs(got - plain).max():.4f}, min cosine {_cos(got, plain).min():.5f}")
            cos = _cos(ref, got)
            flips = int((ref.argmax(1) != got.argmax(1)).sum())
            vs_full = int((got.argmax(1) != torch_logits["full [-127, 127]"].argmax(1)).sum())
            print(f"| {name} | {list(onnx_weight_range(path))} | {np.abs(ref - got).max():.4f} | {cos.mean():.5f} | "
                  f"{cos.min():.5f} | {flips} / {len(task)} | {vs_full} / {len(task)} |  ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
