"""The reduced 8-bit weight grid [-63, 63] (`--reduce-range`): ONNX Runtime's u8 x s8 kernels on x86 CPUs without
VNNI add pairs of products in a saturating int16; the grid is trained in (LSQ), exported, checked, and chosen per CPU."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_quantize import EXAMPLE, _openvino_checks, _ort, bert_classifier, nasbert_classifier, tiny_dir  # noqa: F401

from nasbert_deploy.errors import ExportError
from nasbert_deploy.lowbit.grid import cpu_flags, resolve_reduce_range, saturates_int16
from nasbert_deploy.lowbit.lsq import (
    LsqQuantizer,
    mse_weight_steps,
    quant_linears,
    quantize_linears,
    weight_levels,
    weight_spec,
)
from nasbert_deploy.lowbit.qdq import export_quantized_onnx
from nasbert_deploy.quantize.check import check_logits, check_weight_range, onnx_weight_range, torch_runner

pytestmark = pytest.mark.usefixtures("one_thread")
AVX2 = frozenset({"sse4_1", "avx", "avx2", "fma"})


def test_auto_resolves_per_cpu_flags():
    assert resolve_reduce_range("auto", 8, AVX2, "x86_64")[0] is True
    assert resolve_reduce_range("auto", 8, AVX2 | {"avx512f", "avx512bw"}, "x86_64")[0] is True  # AVX-512 w/o VNNI
    for flag in ("avx512_vnni", "avx_vnni", "amx_int8"):
        assert resolve_reduce_range("auto", 8, AVX2 | {flag}, "x86_64")[0] is False
    assert resolve_reduce_range("auto", 8, None, "x86_64")[0] is True  # unreadable flags on x86: the safe grid
    assert resolve_reduce_range("auto", 8, frozenset({"asimd"}), "aarch64")[0] is False
    assert resolve_reduce_range("on", 8, AVX2 | {"avx512_vnni"}, "x86_64") == (True, "on")
    assert resolve_reduce_range("off", 8, AVX2, "x86_64") == (False, "off")
    assert resolve_reduce_range("auto", 4, AVX2, "x86_64")[0] is False  # [-8, 7] cannot saturate
    with pytest.raises(ExportError, match="8-bit weights only"):
        resolve_reduce_range("on", 4, AVX2, "x86_64")
    with pytest.raises(ExportError, match="valid: auto, on, off"):
        resolve_reduce_range("maybe", 8)
    flags = cpu_flags()  # this machine's, read once
    assert flags is None or "fpu" in flags or "asimd" in flags or "fp" in flags


def test_reduced_grid_is_trained_in_lsq():
    spec = weight_spec(8, reduce_range=True)
    assert (spec.lo, spec.hi, spec.qp) == (-63, 63, 63)
    with pytest.raises(ValueError, match="8-bit"):
        weight_spec(4, reduce_range=True)
    torch.manual_seed(0)
    w = torch.randn(5, 64)
    q = LsqQuantizer(spec, 5)
    q.initialize(w)
    torch.testing.assert_close(q.scale(), mse_weight_steps(w, spec))  # least-error clipping on the reduced grid
    assert torch.all(q.integers(w).abs() <= 63)
    q.unit.fill_(0.5)  # step 0.5: |x| / s of 100 lies beyond 63, 0.3 and -0.74 inside
    x = torch.tensor([[0.3, -0.74, 100.0, -40.0]], requires_grad=True)
    q1 = LsqQuantizer(spec, 1)
    q1.unit.fill_(0.5)
    q1.initialized.fill_(True)
    out = q1(x)
    assert out.detach().tolist()[0][2:] == [63 * 0.5, -63 * 0.5]  # clamped to the reduced grid
    out.sum().backward()
    v = x.detach() / 0.5
    inside = v.abs() <= 63
    ds = torch.where(inside, v.round() - v, torch.sign(v) * 63).sum()
    torch.testing.assert_close(q1.step.grad, (ds * 0.5 / math.sqrt(x.numel() * 63)).reshape(1))  # g = 1/sqrt(N Qp)


def _with_clamped_channel(model, reduce_range):
    """A fake-quantized model whose first Linear has one channel with a tiny step size, so its integers reach
    the grid's bound (LSQ's initial steps keep them near +-20): the bound the export holds is then visible."""
    quantize_linears(model, 8, 8, reduce_range=reduce_range)
    name, first = next(iter(quant_linears(model)))
    with torch.no_grad():
        first.w_quant.step[0] = 0.02
        model(**EXAMPLE)
    return model


@pytest.mark.parametrize("which", ["bert", "nasbert"])
def test_reduced_export_stays_in_range_and_matches_fake_quant(tiny_dir, tmp_path, which):  # noqa: F811
    build = (lambda: bert_classifier(tiny_dir)) if which == "bert" else nasbert_classifier
    model = _with_clamped_channel(build(), reduce_range=True)
    assert weight_levels(model) == (-63, 63)
    path = export_quantized_onnx(model, tmp_path / "r.onnx", EXAMPLE, 8)
    assert onnx_weight_range(path) == (-63, 63)  # the bound is reached and kept
    assert check_weight_range(path, [-63, 63]) == [-63, 63]
    with pytest.raises(ExportError, match="outside the trained grid"):
        check_weight_range(path, [-62, 62])
    full = _with_clamped_channel(build(), reduce_range=False)
    assert onnx_weight_range(export_quantized_onnx(full, tmp_path / "f.onnx", EXAMPLE, 8)) == (-127, 127)
    checks = check_logits(torch_runner(model), {"ort": _ort(path)}, 64, 1000)  # the INT8 criterion
    assert all(c.passed for c in checks), [c.describe() for c in checks if not c.passed]
    strict = check_logits(torch_runner(model), {"ort": _ort(path)}, 64, 1000, rtol=1e-4)  # exact kernels here
    assert all(c.passed for c in strict), [c.describe() for c in strict if not c.passed]
    if which == "bert":
        ov = _openvino_checks(model, path)
        assert all(c.passed for c in ov), [c.describe() for c in ov if not c.passed]


def _qdq_matmul(w_int: np.ndarray, path):
    """y = DQ(Q(x; scale 1, zero 0 uint8)) @ DQ(w_int; scale 1): ORT fuses it into its u8 x s8 integer MatMul."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    k, n = w_int.shape
    inits = [numpy_helper.from_array(np.array(1.0, np.float32), "one"), numpy_helper.from_array(np.array(0, np.uint8), "zu"),
             numpy_helper.from_array(w_int.astype(np.int8), "w"), numpy_helper.from_array(np.array(0, np.int8), "zs")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "one", "zu"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "one", "zu"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "one", "zs"], ["wd"]),
             helper.make_node("MatMul", ["xd", "wd"], ["y"])]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return _ort(path)


@pytest.mark.skipif(not saturates_int16(), reason="this CPU has VNNI/AMX (or is not x86): ORT's u8 x s8 kernels "
                    "accumulate in int32 here, so there is no int16 saturation to show")
def test_full_range_weights_saturate_int16_on_cpus_without_vnni(tmp_path):
    rng = np.random.default_rng(0)
    k, n = 384, 64
    x = rng.integers(128, 256, (128, k)).astype(np.float32)  # uint8 activations, large
    signs = rng.choice([-1, 1], (k, n))
    errors = {}
    for name, bound in (("full", 127), ("reduced", 63)):
        w = signs * rng.integers(bound // 2, bound + 1, (k, n))  # large magnitudes on each grid
        y = _qdq_matmul(w, tmp_path / f"{name}.onnx")({"x": x})
        errors[name] = float(np.abs(y.astype(np.float64) - x.astype(np.float64) @ w).max())
    # full range: pairs 2 * 255 * 127 overflow int16 (the sum is clipped); reduced: 2 * 255 * 63 < 32767, exact
    assert errors["reduced"] < 1.0, errors
    assert errors["full"] > 1000.0, errors
