"""Attention's score product in 8 bits (`lowbit.attention`): symmetric int8 quantizers on the query and key of
NAS-BERT attention, Q/DQ pairs on the projections' outputs in the export (before the heads' reshapes), and
`quantize --attention-bits 8` end to end."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from helpers import TINY, make_tokenizer_dir, write_word_task

from nasbert_deploy.errors import ExportError
from nasbert_deploy.export.validate import padded_inputs
from nasbert_deploy.lowbit.attention import insert_attention_qdq, plain_attention, quantize_attention, quantized_attentions
from nasbert_deploy.lowbit.lsq import quantize_linears
from nasbert_deploy.lowbit.qdq import export_quantized_onnx, float_copy
from nasbert_deploy.model.modeling import NasBertConfig, NasBertForSequenceClassification
from nasbert_deploy.quantize.check import torch_runner
from nasbert_deploy.quantize.run import load_quantized, quantize
from nasbert_deploy.quantize.train import QuantizeConfig
from nasbert_deploy.student.tasks import load_task

pytestmark = pytest.mark.usefixtures("one_thread")
ARCH = f"{TINY.hidden_sizes[0]}:mha,ffn|{TINY.hidden_sizes[-1]}:sep3,mha"  # two attentions, a convolution between


def _classifier(seed: int = 0) -> NasBertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = NasBertConfig.from_arch(ARCH, TINY, num_labels=3, id2label=dict(enumerate("xyz")),
                                  label2id={c: i for i, c in enumerate("xyz")})
    return NasBertForSequenceClassification(cfg).eval()


def _example() -> dict[str, torch.Tensor]:
    ids = torch.randint(5, 50, (2, 37), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def test_quantized_attention_exports_to_integer_matmuls(tmp_path):
    import onnxruntime as ort

    from nasbert_deploy.quantize.check import runtime_runners

    m, ex = _classifier(), _example()
    linears = quantize_linears(m, 8, 8, ex)
    assert quantize_attention(m) == 2 and len(quantized_attentions(m)) == 2
    with torch.no_grad():
        want = m(**ex).logits.numpy()  # the first call sets every activation range, attention's included
    for _, aq in quantized_attentions(m):
        assert sorted(aq) == ["k", "q"] and all(bool(q.initialized) for q in aq.values())
        assert all(float(q.zero_point) == 0 and q.spec.lo == -127 for q in aq.values())  # symmetric int8, as NNCF's
    path = export_quantized_onnx(m, tmp_path / "m.onnx", ex, 8)
    graph = onnx.load(str(path)).graph
    ops = [n.op_type for n in graph.node]
    groups = len(linears) - 2 * 2  # query/key/value share one input quantizer per attention
    assert ops.count("QuantizeLinear") == groups + 2 * 2
    # each sits on a projection's output, before the reshape to heads, on an int8 grid
    producer = {o: n for n in graph.node for o in n.output}
    att_q = [n for n in graph.node if n.op_type == "QuantizeLinear" and n.name.endswith((".q.q", ".k.q"))]
    assert len(att_q) == 4 and all(producer[n.input[0]].op_type == "MatMulIntegerToFloat" for n in att_q)
    zero = {i.name: i for i in graph.initializer}[att_q[0].input[2]]
    assert zero.data_type == onnx.TensorProto.INT8
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {k: v.numpy() for k, v in ex.items()})[0]
    np.testing.assert_allclose(got, want, atol=0.03 * np.abs(want).max())
    ov = runtime_runners({"openvino": path})["openvino"]
    np.testing.assert_allclose(ov.run({k: v.numpy() for k, v in ex.items()})[0], want, atol=0.03 * np.abs(want).max())
    # the float copy that is exported first has no attention quantizers left
    assert not quantized_attentions(float_copy(m)) and len(quantized_attentions(m)) == 2


def test_a_graph_whose_attention_changed_is_refused(tmp_path):
    from nasbert_deploy.runtimes.convert import FirstOutput, export_onnx

    m, ex = _classifier(), _example()
    path = export_onnx(FirstOutput(float_copy(m)), tmp_path / "f.onnx", ex, ["logits"])
    graph = onnx.load(str(path)).graph
    quantize_attention(m)
    with torch.no_grad():
        m(**ex)
    # NAS-BERT's Linears export as Gemm on flattened tokens: every MatMul is attention's; drop one
    del graph.node[[n.op_type for n in graph.node].index("MatMul")]
    with pytest.raises(ExportError, match="2 attention MatMuls per quantized attention"):
        insert_attention_qdq(graph, m)



@pytest.mark.parametrize("onnx_attention", [True, False])
def test_quantize_with_attention_bits_trains_checks_and_reloads(tmp_path, onnx_attention):
    """`--attention-bits 8` (both files 8-bit) and `auto` (OpenVINO's IR 8-bit, ONNX Runtime's file float: each checked
    against the trained model with the attention it has)."""
    from transformers import AutoTokenizer

    from nasbert_deploy.model.remote_code import write_remote_code

    tok = AutoTokenizer.from_pretrained(str(make_tokenizer_dir(tmp_path / "tok")))
    clf = _classifier()
    clf.save_pretrained(tmp_path / "clf")
    tok.save_pretrained(tmp_path / "clf")
    write_remote_code(tmp_path / "clf")
    train = load_task(write_word_task(tmp_path / "train.jsonl", 24, 0))
    valid = load_task(write_word_task(tmp_path / "valid.jsonl", 8, 1))
    cfg = QuantizeConfig(bits=8, attention_bits=8, onnx_attention=onnx_attention, steps=3, batch_size=8, max_len=16)
    rep = quantize(tmp_path / "clf", train, valid, tmp_path / "q", cfg, ("onnx", "openvino"))
    ort_bits = 8 if onnx_attention else 0
    assert rep["attention"] == {"quantized": 2, "bits": 8, "runtimes": {"onnxruntime": ort_bits, "openvino": 8}}
    assert "onnx_attention" not in rep["config"]  # an export choice: a checkpoint resumes under either
    # NAS-BERT returns every operation's output: KDLSQ matches them to the fp32 model's, as for HF BERT
    assert rep["training"]["hidden_state_loss"] is True and rep["training"]["last"]["hidden"] > 0
    for rt in ("onnxruntime", "openvino"):
        assert rep["checks"][rt]["passed"] == rep["checks"][rt]["checks"]
    model, _, meta = load_quantized(tmp_path / "q")
    assert meta["attention_bits"] == 8 and meta["onnx_attention_bits"] == ort_bits and len(quantized_attentions(model)) == 2
    score_inputs = [n for n in onnx.load(str(tmp_path / "q" / "onnx" / "model_q8.onnx")).graph.node
                    if n.op_type == "QuantizeLinear" and n.input[1].endswith((".q.a_scale", ".k.a_scale"))]
    assert len(score_inputs) == (4 if onnx_attention else 0)  # query and key of two attentions
    steps = [float(aq["q"].step.detach()) for _, aq in quantized_attentions(model)]
    assert any(s != 1.0 for s in steps)  # learned (relative step sizes start at 1)
    inputs = padded_inputs(2, 12, 50)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / "q" / "onnx" / "model_q8.onnx"), providers=["CPUExecutionProvider"])
    if not onnx_attention:
        plain_attention(model)  # what ONNX Runtime's file computes
    want = torch_runner(model)(inputs)
    np.testing.assert_allclose(sess.run(None, inputs)[0], want, atol=0.03 * np.abs(want).max())


def test_openvino_only_exports_once_with_the_irs_attention(tmp_path, monkeypatch):
    """`--format openvino` with `--attention-bits auto`: no ONNX Runtime file to serve, so the ONNX file is the IR's
    source, with its 8-bit attention, exported once (it was exported twice: once without attention, unused)."""
    from transformers import AutoTokenizer
    from typer.testing import CliRunner

    import nasbert_deploy.quantize.run as qrun
    from nasbert_deploy.cli.app import app
    from nasbert_deploy.model.remote_code import write_remote_code

    tok = AutoTokenizer.from_pretrained(str(make_tokenizer_dir(tmp_path / "tok")))
    _classifier().save_pretrained(tmp_path / "clf")
    tok.save_pretrained(tmp_path / "clf")
    write_remote_code(tmp_path / "clf")
    exports = []
    real = qrun.export_quantized_onnx
    monkeypatch.setattr(qrun, "export_quantized_onnx", lambda model, *a, **k: exports.append(model) or real(model, *a, **k))
    args = ["quantize", "--model", tmp_path / "clf", "--task", write_word_task(tmp_path / "train.jsonl", 24, 0),
            "--valid", write_word_task(tmp_path / "valid.jsonl", 8, 1), "--steps", "2", "--batch-size", "8",
            "--max-len", "16", "--format", "openvino", "--no-timing", "--out", tmp_path / "q"]
    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    assert len(exports) == 1 and len(quantized_attentions(exports[0])) == 2
    _, _, meta = load_quantized(tmp_path / "q")
    assert meta["attention_bits"] == 8 == meta["onnx_attention_bits"]
    assert "openvino" in meta["files"]
