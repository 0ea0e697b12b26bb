"""The memory estimate (`memory.estimate_memory`) against measured peak RSS of ORT running the exported ONNX.

Loose bounds: ORT keeps the weights (so peak >= 0.8 x weights), and adds arena and runtime state
(so peak <= 2.5 x estimate + 48 MiB). Longer inputs must cost more.
"""

from __future__ import annotations

import pytest
import torch

from nasbert_deploy.export.measure import measure_onnx_memory
from nasbert_deploy.export.pipeline import random_model
from nasbert_deploy.model.memory import estimate_memory
from nasbert_deploy.runtimes.convert import FirstOutput, export_onnx
from nasbert_deploy.space import STANDARD, TINY

MEDIUM = "|".join(["128:mha,ffn,id,id,id,id"] * 4)


def _onnx(space, arch, path):
    model, _ = random_model(arch, space)
    ids = torch.randint(1, 100, (2, 37))
    example = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    return export_onnx(FirstOutput(model), path, example, ["last_hidden_state"])


@pytest.mark.slow
def test_tiny_model_runtime_overhead_is_bounded(tmp_path):
    path = _onnx(TINY, "32:mha,ffn|64:sep3,ffn", tmp_path / "tiny.onnx")
    est = estimate_memory(TINY, TINY.parse("32:mha,ffn|64:sep3,ffn"), 1, 64)
    m = measure_onnx_memory(path, 1, 64, TINY.vocab_size)
    assert est.total_mb < 1.0
    assert 0.0 <= m.peak_mb <= est.total_mb * 2.5 + 48


@pytest.mark.slow
def test_medium_model_estimate_vs_measured(tmp_path):
    arch = STANDARD.parse(MEDIUM)
    path = _onnx(STANDARD, MEDIUM, tmp_path / "medium.onnx")
    short, long = estimate_memory(STANDARD, arch, 1, 128), estimate_memory(STANDARD, arch, 4, 512)
    assert 15 < short.weights_mb < 30  # ~4.9M parameters, fp32
    m_short = measure_onnx_memory(path, 1, 128, STANDARD.vocab_size)
    m_long = measure_onnx_memory(path, 4, 512, STANDARD.vocab_size)
    for est, m in ((short, m_short), (long, m_long)):
        assert 0.8 * est.weights_mb <= m.session_mb <= m.peak_mb <= 2.5 * est.total_mb + 48, (est, m)
    assert m_long.peak_mb > m_short.peak_mb
