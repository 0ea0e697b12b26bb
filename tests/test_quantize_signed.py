"""KDLSQ: activation grids centred on zero (`quantize --signed-activations`): uint8 with zero point 128 in the ONNX
file, int8 with zero point 0 in the graph OpenVINO reads (`runtimes.signed`), the same numbers on both runtimes."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from test_quantize import EXAMPLE, nasbert_classifier

from nasbert_deploy.export.validate import padded_inputs
from nasbert_deploy.lowbit.lsq import LsqQuantizer, activation_spec, centred, quant_linears, quantize_linears
from nasbert_deploy.lowbit.qdq import export_quantized_onnx
from nasbert_deploy.quantize.check import check_logits, first_output, runtime_runners, torch_runner
from nasbert_deploy.runtimes.signed import CENTRE, openvino_onnx, signed_zero_points

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_rule_centres_two_sided_ranges_only():
    assert centred(-1.0, 1.2, "auto") and centred(-0.6, 1.2, "auto")
    assert not centred(-0.17, 1.3, "auto")  # a GELU output: one-sided, keeps its asymmetric grid
    assert not centred(0.0, 0.0, "auto")
    assert centred(-0.17, 1.3, "on") and centred(0.0, 1.0, "on")
    assert not centred(-1.0, 1.0, "off")
    with pytest.raises(ValueError, match="valid: auto, on, off"):
        centred(-1.0, 1.0, "signed")
    with pytest.raises(ValueError, match="valid"):
        LsqQuantizer(activation_spec(8), signed_activations="yes")


def test_auto_centres_only_on_cpus_with_amx():
    from nasbert_deploy.errors import ExportError
    from nasbert_deploy.lowbit.grid import resolve_signed_activations

    assert resolve_signed_activations("auto", frozenset({"avx512_vnni", "amx_int8"}))[0] == "auto"
    for flags in (frozenset({"avx512_vnni"}), frozenset({"avx2"}), None):  # AMD EPYC / no AMX, old x86, unreadable
        mode, why = resolve_signed_activations("auto", flags)
        assert mode == "off" and "no AMX-INT8" in why
    assert resolve_signed_activations("on", frozenset())[0] == "on"
    assert resolve_signed_activations("off", frozenset({"amx_int8"}))[0] == "off"
    with pytest.raises(ExportError, match="valid: auto, on, off"):
        resolve_signed_activations("yes")


@pytest.mark.parametrize("mode", ["auto", "on"])
def test_a_centred_grid_is_signed_int8_in_disguise(mode):
    torch.manual_seed(0)
    x = torch.rand(4, 10, 16) * 8 - 4
    x[0, 0, 0], x[0, 0, 1] = -5.0, 4.0  # the range [-5, 4]: the negative side is the larger one
    q = LsqQuantizer(activation_spec(8), signed_activations=mode)
    out = q(x)
    assert int(q.zero_point) == CENTRE
    s = float(q.scale())
    assert s == pytest.approx(5.0 / 128)  # -5 lands on level 0 (int8 -128), nothing clipped
    levels = out / s + CENTRE
    assert torch.allclose(levels, levels.round(), atol=1e-3)
    levels = levels.detach()
    assert float(levels.min()) == pytest.approx(0.0, abs=1e-3) and float(levels.max()) <= 255
    asym = LsqQuantizer(activation_spec(8))
    asym(x)
    assert int(asym.zero_point) != CENTRE and float(asym.scale()) < s  # the centred grid spends levels on symmetry


def _quantized(mode):
    model = nasbert_classifier()
    quantize_linears(model, 8, 8, EXAMPLE, signed_activations=mode)
    with torch.no_grad():
        model(**EXAMPLE)  # initialises the activation step sizes (and zero points)
    return model


def test_auto_centres_the_two_sided_inputs_and_the_export_agrees_on_both_runtimes(tmp_path):
    import onnx
    import onnxruntime as ort

    model = _quantized("auto")
    zps = {id(q.a_quant): int(q.a_quant.zero_point) for _, q in quant_linears(model)}
    assert CENTRE in zps.values()
    path = export_quantized_onnx(model, tmp_path / "q8.onnx", EXAMPLE, 8)
    ov_path, n = openvino_onnx(path, tmp_path / "q8.openvino.onnx")
    assert n == list(zps.values()).count(CENTRE) > 0  # one QuantizeLinear per centred input tensor
    g = onnx.load(str(ov_path)).graph
    types = {t.name: t.data_type for t in g.initializer}
    q_zero_types = collections.Counter(types[nd.input[2]] for nd in g.node if nd.op_type == "QuantizeLinear")
    assert q_zero_types[onnx.TensorProto.INT8] == n
    assert q_zero_types[onnx.TensorProto.UINT8] == len(zps) - n
    inputs = padded_inputs(2, 21, 1000)
    runs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, inputs)[0] for p in (path, ov_path)]
    np.testing.assert_array_equal(runs[0], runs[1])  # the same integers, stored shifted by 128
    ov = first_output(runtime_runners({"openvino": ov_path})["openvino"])
    checks = check_logits(torch_runner(model), {"openvino": ov}, 64, 1000)
    assert all(c.passed for c in checks), [c.describe() for c in checks if not c.passed]


def test_off_keeps_asymmetric_grids_and_the_rewrite_takes_only_zero_points_of_128(tmp_path):
    model, centred_model = _quantized("off"), _quantized("auto")
    zps = list({id(q.a_quant): int(q.a_quant.zero_point) for _, q in quant_linears(model)}.values())
    path = export_quantized_onnx(model, tmp_path / "q8.onnx", EXAMPLE, 8)
    # an asymmetric grid whose zero point lands on 128 by chance is a centred one, and is rewritten like one
    assert openvino_onnx(path, tmp_path / "q8.openvino.onnx")[1] == zps.count(CENTRE)
    n_centred = sum(int(q.a_quant.zero_point) == CENTRE for _, q in quant_linears(centred_model))
    assert sum(int(q.a_quant.zero_point) == CENTRE for _, q in quant_linears(model)) < n_centred


def test_a_zero_point_read_elsewhere_is_left_alone():
    from onnx import TensorProto, helper, numpy_helper

    zp = numpy_helper.from_array(np.array(CENTRE, np.uint8), "zp")
    s = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    other = numpy_helper.from_array(np.zeros(4, np.uint8), "u")
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"]),
             helper.make_node("DequantizeLinear", ["u", "s", "zp"], ["z"])]  # a uint8 table sharing the zero point
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4]) for n in ("y", "z")], [zp, s, other])
    m = helper.make_model(g)
    assert signed_zero_points(m) == 0
    m.graph.node.pop()  # without the other reader it is rewritten
    assert signed_zero_points(m) == 1
    assert m.graph.initializer[0].data_type == TensorProto.INT8


def test_openvino_runs_centred_inputs_on_s8_where_it_runs_int8_at_all(tmp_path):
    import openvino as ov

    model = _quantized("on")
    path = export_quantized_onnx(model, tmp_path / "q8.onnx", EXAMPLE, 8)
    ov_path, _ = openvino_onnx(path, tmp_path / "q8.openvino.onnx")
    core = ov.Core()

    def fc_precisions(p):
        c = core.compile_model(str(p), "CPU", {"INFERENCE_NUM_THREADS": 1})
        info = [op.get_rt_info() for op in c.get_runtime_model().get_ordered_ops()]
        return collections.Counter(i["runtimePrecision"].astype(str) for i in info
                                   if i["layerType"].astype(str).startswith("FullyConnected"))

    before, after = fc_precisions(path), fc_precisions(ov_path)
    if before["u8"] == 0:
        pytest.skip(f"this CPU plugin runs no FullyConnected on u8 inputs ({dict(before)})")
    assert after["i8"] >= before["u8"] and after["u8"] == 0
