"""Numeric checks of quantized exports against the fake-quantized PyTorch model, and their task scores.

The grid is the one `export` validates on (`export.validate.shape_grid`: batch 1/2/4 x sequence 8/37/128, clipped
to the model's positions, right padding from `padded_inputs`); the compared output is the classifier's logits
(b, c). The criterion is `export`'s INT8 one (`export.validate.INT8_MIN_COSINE`: mean cosine similarity of the
logit rows >= 0.98; max |diff| reported), not an absolute bound: the integer kernels sum exactly where PyTorch
sums in float, so an activation whose x / s lands within float error of .5 rounds the other way, and such flips
add up through a network. On the tiny test models the runtimes matched to ~1e-8 (tests use an absolute bound
there); on the 6-layer MiniLM classifier they differed by up to 0.17 (ONNX Runtime) and 0.38 (OpenVINO) on logits
of size ~4 on the random-token grid, so a 2e-2 relative bound failed them.

A classifier gives one logit row per sequence, where `export` compares every token's hidden state: a grid batch
of 1, 2 or 4 sequences is too small a sample for a mean. Each grid shape is therefore filled with seeded batches
until it holds at least `MIN_ROWS` (16) sequences, and the mean is taken over all of them. On the 6-layer
wordnet-supersense teacher after 600 KDLSQ steps (2026-12-03), 100 random sequences per length gave mean
cosines of 0.992-0.995 (ONNX Runtime and OpenVINO) with 3-8 rows below 0.98 (lowest 0.93), and real valid-split
texts 0.9985-0.999: the 2-row mean of the old grid failed it (0.979) on one tail row, not on a systematic gap.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nasbert_deploy.errors import ExportError
from nasbert_deploy.export.validate import INT8_MIN_COSINE, Check, compare, padded_inputs, shape_grid
from nasbert_deploy.student.finetune import fit_max_len
from nasbert_deploy.student.tasks import TaskData, iter_batches

Runner = Callable[[Mapping[str, np.ndarray]], np.ndarray]
MIN_ROWS = 16  # sequences per grid shape: the mean cosine is over at least this many logit rows


def torch_runner(model: Any) -> Runner:
    """inputs (numpy) -> logits (b, c) float32 of a torch classifier in eval mode."""

    def run(inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            return model(**{k: torch.as_tensor(v) for k, v in inputs.items()}).logits.float().numpy()

    return run


def check_logits(
    reference: Runner, targets: Mapping[str, Runner], max_positions: int, vocab_size: int, token_type_ids: bool = False,
    rtol: float | None = None,
) -> list[Check]:
    """Compare every target's logits with the reference's on the validation grid (each shape filled with seeded
    batches up to `MIN_ROWS` sequences); all checks, failures included.
    `rtol` None: the INT8 criterion (mean cosine >= INT8_MIN_COSINE); else max |diff| <= rtol * max(1, max |ref|)."""
    checks = []
    for b, t in shape_grid(max_positions):
        batches = [padded_inputs(b, t, vocab_size, seed=k, token_type_ids=token_type_ids) for k in range(-(-MIN_ROWS // b))]
        ref = np.concatenate([reference(x) for x in batches])[:, None, :]  # (rows, 1, c): one "token" per row
        ones = np.ones((ref.shape[0], 1), dtype=np.int64)
        for name, run in targets.items():
            out = np.concatenate([run(x) for x in batches])[:, None, :]
            diff, scale, cmean, cmin = compare(ref, out, ones)
            if rtol is None:
                ok = bool(np.isfinite(diff)) and cmean >= INT8_MIN_COSINE
                checks.append(Check(name, "logits", b, t, diff, float("inf"), cmean, cmin, "int8", ok))
            else:
                tol = rtol * max(1.0, scale)
                checks.append(Check(name, "logits", b, t, diff, tol, cmean, cmin, "fp32", bool(diff <= tol)))
    return checks


def task_logits(run: Runner, tokenizer: Any, task: TaskData, max_len: int, batch_size: int = 64) -> np.ndarray:
    """Logits (n, c) of `run` for every row of `task`, in order."""
    out = []
    for _, batch in iter_batches(tokenizer, task, batch_size, max_len):
        out.append(run({k: v.numpy() for k, v in batch.items()}))
    return np.concatenate(out)


def runtime_runners(paths: Mapping[str, Path], threads: int = 1) -> dict[str, Any]:
    """Compiled models (`runtimes` plug-ins, 1 thread, fp32 inference precision) for {'onnxruntime'|'openvino': file}.

    OpenVINO opens the QDQ ONNX (or its IR) directly; its Q/DQ pairs become FakeQuantize and run in INT8."""
    from nasbert_deploy.devices import load_device
    from nasbert_deploy.runtimes.onnxruntime_rt import OrtCompiled

    out: dict[str, Any] = {}
    for runtime, path in paths.items():
        if runtime == "onnxruntime":
            out[runtime] = OrtCompiled(Path(path), _spec(load_device("cpu-ort"), threads))
        else:
            from nasbert_deploy.runtimes.openvino_rt import OvCompiled

            out[runtime] = OvCompiled(Path(path), _spec(load_device("cpu-openvino"), threads))
    return out


def _spec(spec: Any, threads: int) -> Any:
    import dataclasses

    return dataclasses.replace(spec, threads=threads) if threads else spec


def first_output(compiled: Any) -> Runner:
    return lambda inputs: compiled.run(inputs)[0]


def max_len_for(model: Any, max_len: int) -> int:
    return fit_max_len(model, max_len)


def summarize(checks: Sequence[Check]) -> dict[str, Any]:
    """Per target: checks passed, worst max-abs difference, lowest mean and min cosine of the logit rows."""
    out: dict[str, Any] = {}
    for c in checks:
        d = out.setdefault(c.runtime, {"passed": 0, "checks": 0, "max_abs_diff": 0.0, "min_mean_cosine": 1.0,
                                       "min_cosine": 1.0, "criterion": f"mean cosine >= {INT8_MIN_COSINE}"})
        d["checks"] += 1
        d["passed"] += int(c.passed)
        d["max_abs_diff"] = max(d["max_abs_diff"], c.max_abs_diff)
        d["min_mean_cosine"] = min(d["min_mean_cosine"], c.cosine_mean)
        d["min_cosine"] = min(d["min_cosine"], c.cosine_min)
    return out


def onnx_weight_range(path: str | Path) -> tuple[int, int]:
    """(min, max) over the int8 weight initializers of a QDQ ONNX model (the integers the u8 x s8 kernels read)."""
    import onnx
    from onnx import numpy_helper

    ints = [numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer
            if i.data_type == onnx.TensorProto.INT8 and i.name.endswith(".w_int8")]
    if not ints:
        raise ExportError(f"{path} has no int8 weights (.w_int8 initializers): not a QDQ export")
    return min(int(a.min()) for a in ints), max(int(a.max()) for a in ints)


def check_weight_range(path: str | Path, levels: Sequence[int]) -> list[int]:
    """The exported int8 weights lie on the trained grid `levels` [lo, hi] (reduced: [-63, 63], no int16
    saturation on ORT's non-VNNI kernels); returns their [min, max], `ExportError` if outside."""
    lo, hi = onnx_weight_range(path)
    if lo < levels[0] or hi > levels[1]:
        raise ExportError(f"{path}: int8 weights span [{lo}, {hi}], outside the trained grid [{levels[0]}, {levels[1]}]")
    return [lo, hi]
