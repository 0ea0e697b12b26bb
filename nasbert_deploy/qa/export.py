"""QA models through the runtimes: (input_ids, attention_mask, token_type_ids) -> (start_logits, end_logits)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nasbert_deploy.qa.features import MASKED, QAFeatures

OUTPUT_NAMES = ["start_logits", "end_logits"]


class SpanLogits(torch.nn.Module):
    """A question-answering model called with positional inputs, returning (start_logits, end_logits), each (b, t)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return out.start_logits, out.end_logits


def example_inputs(vocab: int) -> dict[str, torch.Tensor]:
    from nasbert_deploy.runtimes.convert import EXAMPLE_BATCH, EXAMPLE_SEQ

    shape = (EXAMPLE_BATCH, EXAMPLE_SEQ)
    return {"input_ids": torch.randint(5, vocab, shape, generator=torch.Generator().manual_seed(0)),
            "attention_mask": torch.ones(shape, dtype=torch.long), "token_type_ids": torch.zeros(shape, dtype=torch.long)}


def runtime_spans(model: Any, feats: QAFeatures, runtime: str, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) logits of every window from `model` exported to ONNX and run on `runtime` (fp32, CPU),
    padding set to `MASKED` as `train.predict_spans` does."""
    from nasbert_deploy.devices import load_device
    from nasbert_deploy.runtimes.base import get_runtime

    spec = load_device({"onnxruntime": "cpu-ort", "openvino": "cpu-openvino"}[runtime])
    n, t = feats.input_ids.shape
    start, end = np.full((n, t), MASKED, np.float32), np.full((n, t), MASKED, np.float32)
    with tempfile.TemporaryDirectory(prefix="nasbert-qa-") as work:
        compiled = get_runtime(runtime).compile(SpanLogits(model.eval()), example_inputs(int(model.config.vocab_size)),
                                                OUTPUT_NAMES, spec, Path(work))
        for i in range(0, n, batch_size):
            rows = np.arange(i, min(n, i + batch_size))
            batch = feats.batch(rows)
            s, e = compiled.run(batch)[:2]
            w = batch["input_ids"].shape[1]
            m = feats.attention_mask[rows, :w].astype(bool)
            start[rows, :w], end[rows, :w] = np.where(m, s, MASKED), np.where(m, e, MASKED)
    return start, end
