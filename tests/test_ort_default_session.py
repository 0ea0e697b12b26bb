"""An export opened the way a user opens it (`ort.InferenceSession(path)`, default options) stays off ONNX Runtime's
SkipLayerNormalization, whose CPU kernel is ~7x slower than Add + LayerNormalization in ORT 1.31 (docs/export.md); our
own sessions disable that fusion, a user's default session does not. NAS-BERT graphs keep tokens flat; BERT-style
graphs get their residual LayerNorms on flat tokens at export (`runtimes.layernorm`)."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from helpers import make_tiny_teacher
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


def test_default_ort_session_of_a_bert_export_has_no_skip_layer_norm(tmp_path):
    """A Hugging Face BERT (what `prune` and `quantize` export for BERT-style models): one residual Add + LayerNorm
    pair per sublayer, 3-D; the export runs them on flat tokens, with the same outputs."""
    import onnx
    from transformers import BertModel

    from nasbert_deploy.runtimes.layernorm import flatten_residual_layernorms

    model = BertModel.from_pretrained(str(make_tiny_teacher(tmp_path / "bert"))).eval()
    path = export_onnx(FirstOutput(model), tmp_path / "bert.onnx", EXAMPLE, ["last_hidden_state"])
    graph = onnx.load(str(path)).graph
    assert sum(n.op_type == "LayerNormalization" for n in graph.node) == 5  # embeddings + 2 per layer
    assert sum(n.name.endswith("__flat_back") for n in graph.node) == 5  # each one fed by an Add
    session, ops = _ops_after_default_optimization(path, tmp_path)
    assert ops["LayerNormalization"] == 5 and ops["SkipLayerNormalization"] == 0, ops
    feed = {k: v.numpy() for k, v in EXAMPLE.items()}
    with torch.no_grad():
        want = model(**EXAMPLE).last_hidden_state.numpy()
    np.testing.assert_allclose(session.run(None, feed)[0], want, rtol=1e-4, atol=1e-5)
    nas = export_onnx(FirstOutput(nasbert_classifier().eval()), tmp_path / "nas.onnx", EXAMPLE, ["logits"])
    assert flatten_residual_layernorms(onnx.load(str(nas))) == 0  # flat already: nothing to rewrite
