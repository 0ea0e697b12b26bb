"""The pruned model's deployment artefacts: HF folder (remote code), ONNX, OpenVINO IR, numeric validation,
and predicted vs measured latency of the unpruned and the pruned model side by side.

ONNX and OpenVINO go through `runtimes.convert` (the path `export` uses) into the layout `export` writes
(`onnx/model.onnx`, `openvino/openvino_model.xml`). Validation compares logits of the reloaded folder,
ONNX Runtime and OpenVINO (f32) with the PyTorch model on padded inputs over a grid of shapes
(`export.validate`: same tolerances, one `ExportError` listing every failure).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nasbert_deploy.devices import DeviceSpec
from nasbert_deploy.export.validate import (
    FP32_RTOL,
    RELOAD_RTOL,
    Check,
    compare,
    padded_inputs,
    raise_failures,
    shape_grid,
)
from nasbert_deploy.model.pruned_bert import write_pruned_remote_code
from nasbert_deploy.prune.latency import PruneLatencyTable
from nasbert_deploy.runtimes.timing import round_statistic
from nasbert_deploy.student.task_training import usable_positions

MEASURE_ROUNDS = 3


class Logits(torch.nn.Module):
    """A classifier called with positional (input_ids, attention_mask, token_type_ids) -> logits (b, c)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits


def _example() -> dict[str, torch.Tensor]:
    from nasbert_deploy.runtimes.convert import EXAMPLE_BATCH, EXAMPLE_SEQ

    shape = (EXAMPLE_BATCH, EXAMPLE_SEQ)
    return {"input_ids": torch.randint(5, 100, shape, generator=torch.Generator().manual_seed(0)),
            "attention_mask": torch.ones(shape, dtype=torch.long), "token_type_ids": torch.zeros(shape, dtype=torch.long)}


def wrapped(model: Any, qa: bool) -> tuple[torch.nn.Module, list[str]]:
    """The module the runtimes carry and its output names: logits (b, c), or start/end logits (b, t) for QA."""
    from nasbert_deploy.qa.export import OUTPUT_NAMES, SpanLogits

    return (SpanLogits(model.eval()), OUTPUT_NAMES) if qa else (Logits(model.eval()), ["logits"])


def write_artefacts(model: Any, tokenizer: Any, folder: Path, qa: bool = False) -> list[str]:
    """HF folder (+ remote code) and ONNX + OpenVINO IR of `model` into `folder`; the relative paths written."""
    from nasbert_deploy.runtimes.base import EXPORT_ARTEFACTS
    from nasbert_deploy.runtimes.convert import export_onnx, onnx_to_openvino

    model.eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_pruned_remote_code(folder)
    onnx = export_onnx(*wrapped(model, qa)[:1], folder / EXPORT_ARTEFACTS["onnx"], _example(), wrapped(model, qa)[1])
    onnx_to_openvino(onnx, folder / EXPORT_ARTEFACTS["openvino"])
    return ["config.json", "model.safetensors", EXPORT_ARTEFACTS["onnx"], EXPORT_ARTEFACTS["openvino"]]


def validate_artefacts(model: Any, folder: Path, on_check: Callable[[Check], None] | None = None,
                       qa: bool = False) -> list[Check]:
    """Logits of the reloaded folder, ONNX Runtime and OpenVINO (f32) vs PyTorch; `ExportError` on any failure.
    QA models: start and end logits of every real token."""
    from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification

    from nasbert_deploy.runtimes.base import export_artefact
    from nasbert_deploy.runtimes.onnxruntime_rt import OrtCompiled
    from nasbert_deploy.runtimes.openvino_rt import OvCompiled

    ort_spec = DeviceSpec(name="validate-ort", runtime="onnxruntime", target="cpu", threads=0)
    ov_spec = DeviceSpec(name="validate-openvino", runtime="openvino", target="cpu", threads=0, precision="fp32")
    auto = AutoModelForQuestionAnswering if qa else AutoModelForSequenceClassification
    reloaded = auto.from_pretrained(str(folder)).eval()

    def torch_run(m: Any) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
        def run(inputs: dict[str, np.ndarray]) -> np.ndarray:
            with torch.inference_mode():
                out = wrapped(m, qa)[0](*(torch.from_numpy(inputs[k]) for k in ("input_ids", "attention_mask",
                                                                                  "token_type_ids")))
            return np.stack([o.float().numpy() for o in out], -1) if qa else out.float().numpy()
        return run

    def stacked(outputs: list[np.ndarray]) -> np.ndarray:  # QA: (b, t, 2); classifier: (b, c)
        return np.stack(outputs[:2], -1) if qa else outputs[0]

    ort = OrtCompiled(export_artefact(folder, "onnx"), ort_spec)
    ov = OvCompiled(export_artefact(folder, "openvino"), ov_spec)
    targets = [("transformers", torch_run(reloaded), RELOAD_RTOL), ("onnxruntime", lambda x: stacked(ort.run(x)), FP32_RTOL),
               ("openvino", lambda x: stacked(ov.run(x)), FP32_RTOL)]
    reference = torch_run(model)
    checks = []
    for b, t in shape_grid(usable_positions(model.config)):
        inputs = padded_inputs(b, t, int(model.config.vocab_size), token_type_ids=True)
        ref = reference(inputs)
        mask = inputs["attention_mask"] if qa else np.ones((b, 1), np.int64)
        for name, run, rtol in targets:
            got = run(inputs)
            # classifier: (b, 1, c), one "token" per row for `compare`; QA: (b, t, 2) over the real tokens
            diff, scale, cmean, cmin = compare(ref if qa else ref[:, None, :], got if qa else got[:, None, :], mask)
            tol = rtol * max(1.0, scale)
            c = Check(name, "logits", b, t, diff, tol, cmean, cmin, "fp32", diff <= tol)
            checks.append(c)
            if on_check:
                on_check(c)
    raise_failures(checks)
    return checks


def measure_side_by_side(
    models: dict[str, Any], spec: DeviceSpec, batch: int, seq_len: int, timing_kwargs: dict[str, Any],
    folders: dict[str, Path] | None = None, qa: bool = False,
) -> dict[str, dict[str, Any]]:
    """Latency (ms) of each named classifier on `spec`'s runtime at (batch, seq_len): `MEASURE_ROUNDS` rounds
    interleaved across the models, each model's figure the lowest round median (as the table's entries).
    A model with an export folder in `folders` is timed from its artefact (`load`), the others are compiled."""
    from nasbert_deploy.runtimes.base import get_runtime, time_compiled

    rt = get_runtime(spec.runtime)
    vocab = min(int(m.config.vocab_size) for m in models.values())
    ids = np.random.default_rng(0).integers(5, vocab, size=(batch, seq_len), dtype=np.int64)
    inputs = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    rounds: dict[str, list[float]] = {k: [] for k in models}
    with tempfile.TemporaryDirectory(prefix="nasbert-prune-measure-") as tmp:
        compiled = {}
        for name, m in models.items():
            folder = (folders or {}).get(name)
            if folder is not None and spec.runtime != "torch":
                compiled[name] = rt.load(folder, spec)
            else:
                compiled[name] = rt.compile(*wrapped(m, qa)[:1], _example(), wrapped(m, qa)[1], spec, Path(tmp) / name)
        for _ in range(MEASURE_ROUNDS):
            for name, c in compiled.items():
                rounds[name].append(time_compiled(c, inputs, **timing_kwargs).median_ms)
    return {k: {"median_ms": round_statistic(v, "min"), "rounds_ms": v, "statistic": "min"} for k, v in rounds.items()}


def latency_rows(table: PruneLatencyTable, measured: dict[str, dict[str, Any]], shapes: dict[str, tuple[list[int], list[int]]],
                 budget_ms: float, factor: float = 1.0) -> dict[str, Any]:
    """Predicted (table x `factor`, its scale to this machine) vs measured per model, speed-up, and flags like
    `export`'s (>10% off budget or prediction); `table_ms`: the table's own figure."""
    rows: dict[str, Any] = {}
    for name, (hs, ws) in shapes.items():
        table_ms = table.predict_ms(hs, ws)
        pred, m = factor * table_ms, measured[name]["median_ms"]
        rows[name] = {"predicted_ms": pred, "table_ms": table_ms, "measured_ms": m,
                      "measured_over_predicted": m / pred, "rounds_ms": measured[name]["rounds_ms"]}
    flags = []
    p = rows.get("pruned")
    if p:
        if p["measured_ms"] > 1.1 * budget_ms:
            flags.append(f"measured {p['measured_ms']:.2f} ms is more than 10% over the budget {budget_ms:g} ms")
        if abs(p["measured_over_predicted"] - 1) > 0.1:
            flags.append(f"measured {p['measured_ms']:.2f} ms is more than 10% off the prediction {p['predicted_ms']:.2f} ms")
    out: dict[str, Any] = {"models": rows, "budget_ms": budget_ms, "table_factor": factor, "flags": flags}
    if "unpruned" in rows and p:
        out["measured_speedup"] = rows["unpruned"]["measured_ms"] / p["measured_ms"]
    return out
