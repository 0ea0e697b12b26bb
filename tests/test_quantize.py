"""KDLSQ: LSQ fake quantization, its QDQ / MatMulNBits exports on real ONNX Runtime and OpenVINO sessions, training."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
from helpers import make_tiny_teacher
from torch import nn

from nasbert_deploy.export.validate import padded_inputs
from nasbert_deploy.lowbit.lsq import (
    LsqQuantizer,
    QuantLinear,
    activation_spec,
    bake_weights,
    mse_weight_steps,
    quant_linears,
    quantize_linears,
    weight_spec,
)
from nasbert_deploy.lowbit.qdq import export_quantized_onnx, pack_nbits
from nasbert_deploy.quantize.check import check_logits, torch_runner

pytestmark = pytest.mark.usefixtures("one_thread")
EXAMPLE = {"input_ids": torch.randint(5, 1000, (2, 37), generator=torch.Generator().manual_seed(0)),
           "attention_mask": torch.ones(2, 37, dtype=torch.long)}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, one_thread):
    return make_tiny_teacher(tmp_path_factory.mktemp("q") / "tiny")


def bert_classifier(tiny_dir, seed=0):
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    return BertForSequenceClassification.from_pretrained(tiny_dir, num_labels=3).eval()


def nasbert_classifier():
    from nasbert_deploy.model.modeling import NasBertForSequenceClassification
    from nasbert_deploy.space import TINY
    from nasbert_deploy.student.distill import build_student

    torch.manual_seed(0)
    enc = build_student("64:mha,ffn|32:sep3,id", init="random", space=TINY).model
    cfg = enc.config
    cfg.num_labels = 3
    clf = NasBertForSequenceClassification(cfg)
    clf.nasbert.load_state_dict(enc.state_dict())
    return clf.eval()


def fake_quantized(model, bits, act_bits=8):
    quantize_linears(model, bits, act_bits)
    with torch.no_grad():
        model(**EXAMPLE)  # LSQ initialisation of the activation step sizes on a first batch
    return model


# ------------------------------------------------------------------ LSQ
def test_lsq_init_and_grid():
    torch.manual_seed(0)
    w = torch.randn(6, 40)
    q = LsqQuantizer(weight_spec(4), 6)
    q.initialize(w)
    torch.testing.assert_close(q.scale(), mse_weight_steps(w, weight_spec(4)))
    out = q(w)
    ints = out / q.scale()[:, None]
    assert torch.allclose(ints, ints.round(), atol=1e-4)  # on the grid
    assert ints.min() >= -8 and ints.max() <= 7
    assert len(torch.unique(ints.round())) > 8  # and uses it
    assert torch.equal(q.integers(w), ints.round().long())


def test_lsq_gradients_follow_the_paper():
    spec = weight_spec(8)
    q = LsqQuantizer(spec, 1)
    q.unit.fill_(0.5)
    q.initialized.fill_(True)
    x = torch.tensor([[0.3, -0.74, 100.0, -100.0]], requires_grad=True)  # two inside, one above, one below the range
    q(x).sum().backward()
    v = x.detach() / 0.5
    inside = v.abs() <= 127
    # STE: d x_hat / d x = 1 inside the clamp range, 0 outside
    assert torch.equal(x.grad, inside.float())
    # d x_hat / d s = round(v) - v inside, the clamp bound outside; times g = 1 / sqrt(N Qp); s = s_hat * unit
    ds = torch.where(inside, v.round() - v, torch.sign(v) * 127).sum()
    g = 1 / math.sqrt(x.numel() * spec.qp)
    torch.testing.assert_close(q.step.grad, (ds * g * 0.5).reshape(1))


def test_activation_quantizer_is_asymmetric_uint8():
    torch.manual_seed(0)
    x = torch.randn(4, 10, 16).abs() * 3 - 0.2  # a GELU-like range, mostly positive
    q = LsqQuantizer(activation_spec(8))
    out = q(x)  # initialises on the first call
    z = int(q.zero_point)
    assert 0 < z < 128  # the midpoint of a mostly positive range sits below level 128
    levels = out / q.scale() + z
    assert levels.min() >= 0 and levels.max() <= 255
    assert torch.allclose(levels, levels.round(), atol=1e-3)


def test_every_linear_is_replaced(tiny_dir):
    for model in (bert_classifier(tiny_dir), nasbert_classifier()):
        n = sum(isinstance(m, nn.Linear) for m in model.modules())
        names = quantize_linears(model, 8)
        assert len(names) == n > 3
        assert all(isinstance(model.get_submodule(name), QuantLinear) for name in names)
        assert not any(type(m) is nn.Linear for m in model.modules())


# ------------------------------------------------------------------ exports on real runtimes
def _optimized_ops(onnx_path, tmp_path):
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)


def _ort(path):
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda inputs: s.run(None, dict(inputs))[0]


@pytest.mark.parametrize("which", ["bert", "nasbert"])
def test_qdq_export_runs_integer_kernels_and_matches_fake_quant(tiny_dir, tmp_path, which):
    model = fake_quantized(bert_classifier(tiny_dir) if which == "bert" else nasbert_classifier(), 8)
    path = export_quantized_onnx(model, tmp_path / "q8.onnx", EXAMPLE, 8)
    ops = _optimized_ops(path, tmp_path)
    n_linear = len(list(quant_linears(model)))
    # every Linear runs on ORT's u8 x s8 integer kernels, NAS-BERT's embedding projection and block boundaries too
    # (their outputs feed the next Linears' QuantizeLinear and a float residual Add: bias-less QGemm + Add)
    assert ops["MatMulIntegerToFloat"] + ops["QGemm"] >= n_linear
    assert ops["Gemm"] == 0
    assert ops["MatMul"] + ops["FusedMatMul"] <= 2 * 2  # only attention's two matmuls per layer stay float
    checks = check_logits(torch_runner(model), {"ort": _ort(path)}, 64, 1000, rtol=1e-4)
    assert all(c.passed for c in checks), [c.describe() for c in checks if not c.passed]
    fp = bert_classifier(tiny_dir) if which == "bert" else nasbert_classifier()
    inputs = padded_inputs(2, 37, 1000)
    quant_err = np.abs(torch_runner(fp)(inputs) - torch_runner(model)(inputs)).max()
    assert quant_err > 1e-5  # the fake quantization does change the model: the check above is not vacuous
    ov_checks = _openvino_checks(model, path)
    assert all(c.passed for c in ov_checks), [c.describe() for c in ov_checks if not c.passed]


def _openvino_checks(model, path):
    from nasbert_deploy.quantize.check import first_output, runtime_runners

    compiled = runtime_runners({"openvino": path})["openvino"]
    return check_logits(torch_runner(model), {"openvino": first_output(compiled)}, 64, 1000)


def test_4bit_export_uses_matmulnbits_with_the_learned_scales(tiny_dir, tmp_path):
    import onnx

    model = fake_quantized(bert_classifier(tiny_dir), 4)
    path = export_quantized_onnx(model, tmp_path / "q4.onnx", EXAMPLE, 4)
    g = onnx.load(str(path)).graph
    nbits = [n for n in g.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == len(list(quant_linears(model)))
    checks = check_logits(torch_runner(model), {"ort": _ort(path)}, 64, 1000) + _openvino_checks(model, path)
    assert all(c.passed for c in checks), [c.describe() for c in checks if not c.passed]
    # accuracy_level 0 (float compute): the kernel's dequantized weights are exactly ours (packing, scales, zero point 8)
    export_quantized_onnx(model, tmp_path / "q4a0.onnx", EXAMPLE, 4, accuracy_level=0)
    exact = check_logits(torch_runner(model), {"ort": _ort(tmp_path / "q4a0.onnx")}, 64, 1000, rtol=1e-5)
    assert all(c.passed for c in exact), [c.describe() for c in exact if not c.passed]


def test_pack_nbits_layout():
    q = np.array([[-8, 7], [1, -1], [0, 3]], dtype=np.int64)  # (K=3, N=2)
    b = pack_nbits(q, 16)
    assert b.shape == (2, 1, 8) and b.dtype == np.uint8
    assert b[0, 0, 0] == (0 | (9 << 4)) and b[0, 0, 1] == (8 | (8 << 4))  # column 0: -8, 1, 0 (+8), then padding 8
    assert b[1, 0, 0] == (15 | (7 << 4)) and b[1, 0, 1] == (11 | (8 << 4))  # column 1: 7, -1, 3


def test_bake_is_idempotent(tiny_dir):
    model = fake_quantized(bert_classifier(tiny_dir), 4)
    inputs = padded_inputs(2, 20, 1000)
    before = torch_runner(model)(inputs)
    bake_weights(model)
    bake_weights(model)
    np.testing.assert_allclose(torch_runner(model)(inputs), before, atol=1e-6)


def _sq_err(v: torch.Tensor, s: torch.Tensor, spec) -> torch.Tensor:
    return ((torch.clamp(torch.round(v / s[:, None]), spec.lo, spec.hi) * s[:, None] - v) ** 2).sum(1)


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_weight_init_least_error_clipping(bits):
    """Each row's step size beats both extremes: no clipping (max|v| / Qp) and LSQ's 2 <|v|> / sqrt(Qp)."""
    torch.manual_seed(1)
    spec = weight_spec(bits)
    w = torch.randn(8, 256)
    w[0, 3] = 40 * w[0].abs().mean()  # a heavy-tailed row, like a NAS-BERT student's projections
    s = mse_weight_steps(w, spec)
    err = _sq_err(w, s, spec)
    assert torch.all(err <= _sq_err(w, w.abs().amax(1) / spec.qp, spec) + 1e-6)
    assert torch.all(err <= _sq_err(w, 2 * w.abs().mean(1) / math.sqrt(spec.qp), spec) + 1e-6)
    assert torch.all(s <= w.abs().amax(1) / spec.qp + 1e-7) and torch.all(s >= 0.3 * w.abs().amax(1) / spec.qp - 1e-7)


def test_weight_init_keeps_an_outlier_at_8_bits():
    """LSQ's rule clips a weight 100x the row's mean to ~22x; the least-error step keeps it (within half a step)."""
    w = torch.full((1, 512), 0.01)
    w[0, ::2] = -0.01
    w[0, 7] = 1.0
    q = LsqQuantizer(weight_spec(8), 1)
    q.initialize(w)
    assert abs(float(q(w)[0, 7].detach()) - 1.0) <= float(q.scale()[0].detach()) / 2 + 1e-6
    lsq_step = 2 * w.abs().mean() / math.sqrt(127)
    assert float(lsq_step) * 127 < 0.5  # what the paper's initial step would have kept
