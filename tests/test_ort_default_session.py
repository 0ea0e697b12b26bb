"""A NAS-BERT export opened the way a user opens it (`ort.InferenceSession(path)`, default options) stays off ONNX
Runtime's SkipLayerNormalization, whose CPU kernel is ~7x slower than Add + LayerNormalization in ORT 1.31
(docs/export.md); our own sessions disable that fusion, a user's default session does not."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from test_quantize import EXAMPLE, nasbert_classifier

from nasbert_deploy.runtimes.convert import FirstOutput, export_onnx

pytestmark = pytest.mark.usefixtures("one_thread")


def _ops_after_default_optimization(path, tmp_path):
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return session, collections.Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)


def test_default_ort_session_of_a_nasbert_export_has_no_skip_layer_norm(tmp_path):
    model = nasbert_classifier().eval()
    path = export_onnx(FirstOutput(model), tmp_path / "model.onnx", EXAMPLE, ["logits"])
    session, ops = _ops_after_default_optimization(path, tmp_path)
    assert ops["LayerNormalization"] > 0 and ops["SkipLayerNormalization"] == 0, ops
    feed = {k: v.numpy() for k, v in EXAMPLE.items()}
    with torch.no_grad():
        want = model(**EXAMPLE).logits.numpy()
    np.testing.assert_allclose(session.run(None, feed)[0], want, rtol=1e-4, atol=1e-5)
