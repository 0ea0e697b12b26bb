"""Numeric validation of exported models against PyTorch, and measured peak memory of an ONNX model.

Validation runs the reference (the torch model in memory) and every exported artefact on a grid of
shapes (batch x sequence length) with padding, and compares only real-token positions:

- fp32 artefacts (transformers reload, ONNX Runtime, OpenVINO): max |ref - out| must be within
  `rtol * max(1, scale)`, where `scale` is max |ref| over real tokens and `rtol` depends on the precision
  the artefact runs at (`precision_rtol`): f32 `FP32_RTOL`; fp16 weights or f16 inference `FP16_RTOL`;
  bf16 inference (OpenVINO's default on CPUs with AVX-512 BF16 / AMX) `BF16_RTOL`. bf16 keeps 8
  significant bits (relative rounding 2^-9 ~ 2e-3 per operation); through a MiniLM-sized encoder
  OpenVINO's bf16 output differed from PyTorch by 1.3e-2 to 2.0e-2 (outputs of scale ~1-3), so the
  bound is 5e-2 x max(1, scale): headroom of ~2.5x, while a broken conversion is off by ~scale;
- INT8 artefacts: the deviation from fp32 is reported (mean and min cosine similarity over real
  tokens, max abs difference); the check fails when the mean cosine is below `INT8_MIN_COSINE` (a classifier's
  logits: `INT8_MIN_COSINE_LOGITS`).

Every failure is collected; `raise_failures` raises one `ExportError` listing all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from nasbert_deploy.errors import ExportError

FP32_RTOL = 1e-4
FP16_RTOL = 1e-2
BF16_RTOL = 5e-2
RELOAD_RTOL = 1e-6
INT8_MIN_COSINE = 0.98
# A classifier's INT8 logits on the random-token grid: post-training INT8 (ORT dynamic) of the 6-layer MiniLM
# wordnet-supersense classifier gave mean cosines of 0.79-0.95 per grid shape against fp32 (0.98 on real valid-split
# text, 99% of the fp32 accuracy; 2026-12-05), where hidden states stay above 0.98: logits of nonsense input sit near
# their decision ties. The bar catches a broken graph (cosine ~0); task quality is `evaluate --runtime *-int8`.
INT8_MIN_COSINE_LOGITS = 0.5
VALIDATION_BATCHES = (1, 2, 4)
VALIDATION_SEQ_LENS = (8, 37, 128)


def precision_rtol(precision: str, fp16_weights: bool = False) -> float:
    """The relative tolerance for an artefact run at OpenVINO inference precision `precision` ('f32', 'bf16', 'f16';
    others as f16), with fp16 weights at least `FP16_RTOL` (read at call time, so tests can tighten them)."""
    rtol = {"f32": FP32_RTOL, "bf16": BF16_RTOL}.get(precision, FP16_RTOL)
    return max(rtol, FP16_RTOL) if fp16_weights else rtol


@dataclass(frozen=True)
class Check:
    """One comparison of an artefact with the reference on one (batch, seq_len) input.

    `max_abs_diff` and `tolerance` are in output units; `cosine_mean`/`cosine_min` are per-token
    cosine similarities with the reference over real (non-padding) tokens.
    """

    runtime: str
    output: str
    batch: int
    seq_len: int
    max_abs_diff: float
    tolerance: float
    cosine_mean: float
    cosine_min: float
    kind: str  # "fp32" (absolute tolerance) or "int8" (cosine threshold)
    passed: bool
    precision: str = ""  # the inference precision the runtime ran at, where it has a choice (OpenVINO: f32, bf16)
    min_cosine: float = INT8_MIN_COSINE  # an "int8" check's bar on the mean cosine

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        what = f"max_abs_diff {self.max_abs_diff:.3g} > tol {self.tolerance:.3g}"
        if self.kind == "int8":
            what = f"mean cosine {self.cosine_mean:.4f} < {self.min_cosine} (max_abs_diff {self.max_abs_diff:.3g})"
        return f"({self.runtime}, {self.output}, batch {self.batch} x seq {self.seq_len}, {what})"


def is_classifier_model(model: Any) -> bool:
    """Whether `model` (in memory) is a sequence classifier: its ONNX output is `logits` (batch, labels)."""
    return type(model).__name__.endswith("ForSequenceClassification")


def output_name(model: Any) -> str:
    """The name of the exported model's one output."""
    return "logits" if is_classifier_model(model) else "last_hidden_state"


def shape_grid(
    max_positions: int, batches: Sequence[int] = VALIDATION_BATCHES, seq_lens: Sequence[int] = VALIDATION_SEQ_LENS
) -> list[tuple[int, int]]:
    """(batch, seq_len) pairs; sequence lengths above the model's `max_positions` are clipped to it."""
    seqs = sorted({min(s, max_positions) for s in seq_lens})
    return [(b, s) for b in batches for s in seqs]


def padded_inputs(
    batch: int, seq_len: int, vocab_size: int, seed: int = 0, token_type_ids: bool = False
) -> dict[str, np.ndarray]:
    """Random token ids (b, t) int64 with right padding: row 0 is full, later rows are shorter.

    Row i keeps `t - i * t // (2 b)` real tokens (at least 1), so every batch > 1 has padding.
    """
    rng = np.random.default_rng(seed + 1000 * batch + seq_len)
    ids = rng.integers(1, vocab_size, size=(batch, seq_len), dtype=np.int64)
    mask = np.zeros((batch, seq_len), dtype=np.int64)
    for i in range(batch):
        n = max(1, seq_len - i * seq_len // (2 * batch))
        mask[i, :n] = 1
    ids[mask == 0] = 0
    out = {"input_ids": ids, "attention_mask": mask}
    if token_type_ids:
        out["token_type_ids"] = np.zeros_like(ids)
    return out


def compare(ref: np.ndarray, out: np.ndarray, mask: np.ndarray) -> tuple[float, float, float, float]:
    """(max_abs_diff, scale = max |ref|, mean cosine, min cosine) over real tokens; ref/out (b, t, d), mask (b, t).
    A classifier's logits (b, c) are compared row by row (the mask is not needed)."""
    if ref.shape != out.shape:
        raise ExportError(f"output shape {tuple(out.shape)} differs from the reference's {tuple(ref.shape)}")
    if ref.ndim == 2:
        r, o = ref.astype(np.float64), out.astype(np.float64)  # (b, c)
    else:
        keep = mask.astype(bool)
        r, o = ref[keep].astype(np.float64), out[keep].astype(np.float64)  # (tokens, d)
    diff = float(np.abs(r - o).max()) if r.size else 0.0
    if not np.isfinite(o).all():
        diff = float("inf")
    scale = float(np.abs(r).max()) if r.size else 0.0
    denom = np.linalg.norm(r, axis=1) * np.linalg.norm(o, axis=1)
    cos = np.where(denom > 0, (r * o).sum(1) / np.maximum(denom, 1e-30), 1.0)
    return diff, scale, float(cos.mean()), float(cos.min())


@dataclass(frozen=True)
class Target:
    """One artefact to validate: a label, its runner (inputs -> first output (b, t, d)) and its kind."""

    runtime: str
    run: Callable[[Mapping[str, np.ndarray]], np.ndarray]
    kind: str = "fp32"  # "fp32", "fp16", "bf16" or "int8"
    rtol: float = FP32_RTOL
    precision: str = ""  # inference precision, recorded in the checks (OpenVINO)


def validate(
    reference: Callable[[Mapping[str, np.ndarray]], np.ndarray],
    targets: Sequence[Target],
    shapes: Sequence[tuple[int, int]],
    vocab_size: int,
    token_type_ids: bool = False,
    output: str = "last_hidden_state",
    on_check: Callable[[Check], None] | None = None,
) -> list[Check]:
    """Compare every target with `reference` on every shape; returns all checks (failures included)."""
    checks: list[Check] = []
    for b, t in shapes:
        inputs = padded_inputs(b, t, vocab_size, token_type_ids=token_type_ids)
        ref = reference(inputs)
        for tg in targets:
            diff, scale, cmean, cmin = compare(ref, tg.run(inputs), inputs["attention_mask"])
            tol = tg.rtol * max(1.0, scale)
            bar = INT8_MIN_COSINE_LOGITS if output == "logits" else INT8_MIN_COSINE
            if tg.kind == "int8":
                ok = bool(np.isfinite(diff)) and cmean >= bar
            else:
                ok = diff <= tol
            kind = "int8" if tg.kind == "int8" else "fp32"
            c = Check(tg.runtime, output, b, t, diff, tol, cmean, cmin, kind, ok, tg.precision, bar)
            checks.append(c)
            if on_check:
                on_check(c)
    return checks


def raise_failures(checks: Sequence[Check]) -> None:
    """One `ExportError` naming every failed check, if any failed."""
    bad = [c for c in checks if not c.passed]
    if bad:
        raise ExportError(
            f"numeric validation failed for {len(bad)} of {len(checks)} checks: " + "; ".join(c.describe() for c in bad)
        )
