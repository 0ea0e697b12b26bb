"""KDLSQ: Linears that read one tensor (query/key/value) share one learned input quantizer, trained jointly,
exported as one QuantizeLinear, fused by ONNX Runtime into its integer kernels; older folders still load."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from helpers import make_tiny_teacher
from test_quantize import EXAMPLE, bert_classifier, nasbert_classifier

from nasbert_deploy.errors import ExportError
from nasbert_deploy.export.validate import padded_inputs
from nasbert_deploy.lowbit.lsq import (
    LsqQuantizer,
    QuantLinear,
    activation_spec,
    input_groups,
    quant_linears,
    quantize_linears,
    shared_input_groups,
    step_parameters,
)
from nasbert_deploy.lowbit.qdq import export_quantized_onnx
from nasbert_deploy.quantize.check import check_logits, first_output, runtime_runners, torch_runner

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, one_thread):
    return make_tiny_teacher(tmp_path_factory.mktemp("qs") / "tiny")


def _model(which, tiny_dir):
    return bert_classifier(tiny_dir) if which == "bert" else nasbert_classifier()


def _shared(which, tiny_dir):
    model = _model(which, tiny_dir)
    quantize_linears(model, 8, 8, EXAMPLE)
    with torch.no_grad():
        model(**EXAMPLE)  # initialises the activation step sizes
    return model


def _n_layers_with_attention(which):
    return 2 if which == "bert" else 1  # the tiny BERT: 2 layers; the tiny student "64:mha,ffn|32:sep3,id": one MHA


@pytest.mark.parametrize("which", ["bert", "nasbert"])
def test_query_key_value_share_one_quantizer(tiny_dir, which):
    model = _model(which, tiny_dir)
    groups = input_groups(model, EXAMPLE)
    assert len(groups) == _n_layers_with_attention(which)
    for g in groups:
        assert sorted(n.rsplit(".", 1)[1] for n in g) == ["key", "query", "value"]
    names = quantize_linears(model, 8, 8, EXAMPLE)
    assert shared_input_groups(model) == [sorted(g, key=names.index) for g in groups]
    for g in groups:
        quantizers = {id(model.get_submodule(n).a_quant) for n in g}
        assert len(quantizers) == 1
    # one step size per weight, one per distinct input tensor
    distinct = len(names) - sum(len(g) - 1 for g in groups)
    assert len(step_parameters(model)) == len(names) + distinct
    with pytest.raises(ValueError, match="before quantize_linears"):
        input_groups(model, EXAMPLE)


def test_shared_step_size_is_trained_jointly():
    """The shared step size's gradient is the sum of what each reader's own copy would get (LSQ scale per reader)."""
    torch.manual_seed(0)
    x = torch.randn(3, 5, 16)
    linears = [torch.nn.Linear(16, 8) for _ in range(3)]

    def build(shared):
        qs = [QuantLinear.from_linear(lin, 8, 8) for lin in linears]
        if shared:
            for q in qs[1:]:
                q.a_quant = qs[0].a_quant
        return qs

    shared, separate = build(True), build(False)
    for qs in (shared, separate):
        sum(q(x).square().sum() for q in qs).backward()
    assert separate[0].a_quant.step.grad is not None
    expected = sum(q.a_quant.step.grad for q in separate)
    torch.testing.assert_close(shared[0].a_quant.step.grad, expected)
    assert float(expected.abs()) > 0
    torch.testing.assert_close(shared[0].a_quant.scale(), separate[2].a_quant.scale())  # same initialisation


def _project_optimized_ops(path, tmp_path):
    """Node types of the graph ONNX Runtime runs, with the project's session options (runtimes.onnxruntime_rt)."""
    import dataclasses

    import onnx
    import onnxruntime as ort

    from nasbert_deploy.devices import load_device
    from nasbert_deploy.runtimes.onnxruntime_rt import DISABLED_OPTIMIZERS, session_options

    so = session_options(dataclasses.replace(load_device("cpu-ort"), threads=1))
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"], disabled_optimizers=list(DISABLED_OPTIMIZERS))
    return Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node), s


@pytest.mark.parametrize(("which", "form"), [("bert", "integer"), ("bert", "qdq"), ("nasbert", "integer"),
                                            ("nasbert", "qdq")])
def test_export_quantizes_each_input_once_on_integer_kernels(tiny_dir, tmp_path, which, form):
    import onnx

    model = _shared(which, tiny_dir)
    n_linear = len(list(quant_linears(model)))
    distinct = n_linear - 2 * _n_layers_with_attention(which)
    path = export_quantized_onnx(model, tmp_path / "q8.onnx", EXAMPLE, 8, form=form)
    exported = Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    assert exported["QuantizeLinear"] == distinct
    if form == "integer":  # every Linear one MatMulIntegerToFloat with its bias inside; nothing dequantized
        assert exported["MatMulIntegerToFloat"] == n_linear
        assert exported["DequantizeLinear"] == exported["Gemm"] == 0
        assert exported["MatMul"] == 2 * _n_layers_with_attention(which)  # attention's two float products
    else:
        assert exported["MatMulIntegerToFloat"] == 0  # standard operators: a DQ per weight and input (Gemms' biases)
        assert exported["DequantizeLinear"] >= n_linear + distinct
    ops, session = _project_optimized_ops(path, tmp_path)
    # what ORT runs: every Linear on a u8 x s8 integer kernel, one QuantizeLinear per distinct input, no float Linear
    fused = ops["MatMulIntegerToFloat"] + ops["QGemm"]
    assert fused >= n_linear and ops["Gemm"] == 0
    adds = 8 if which == "bert" else 0  # BERT: the graph's own Adds (residuals, attention mask, embeddings)
    if which == "bert":
        # qdq, 3-D tokens: MatMulIntegerToFloat + a float bias Add each, less the FFN's first (its bias goes into
        # BiasGelu); pooler and classifier are 2-D Gemms: QGemm
        assert ops["QGemm"] == (0 if form == "integer" else 2)
        assert ops["Add"] == adds + (0 if form == "integer" else n_linear - 2 - 2)
    elif form == "integer":  # NAS-BERT: the bias-less Gemm + Add of the qdq form (residual readers) is gone too
        assert ops["QGemm"] == 0 and ops["Add"] == exported["Add"]
    assert ops["QuantizeLinear"] <= distinct
    assert ops["DequantizeLinear"] == 0  # no weight dequantized at run time
    assert ops["MatMul"] + ops["FusedMatMul"] <= 2 * _n_layers_with_attention(which)  # attention's two float matmuls
    run = lambda inputs: session.run(None, dict(inputs))[0]  # noqa: E731
    ov = first_output(runtime_runners({"openvino": path})["openvino"])  # OpenVINO reads either form
    checks = check_logits(torch_runner(model), {"ort": run, "openvino": ov}, 64, 1000, rtol=1e-4)
    assert all(c.passed for c in checks), [c.describe() for c in checks if not c.passed]


def test_integer_and_qdq_forms_compute_the_same_logits(tiny_dir, tmp_path):
    """The bias moved into MatMulIntegerToFloat is the Add ORT runs after the QDQ MatMul: the same numbers."""
    model = _shared("bert", tiny_dir)
    runs = {form: runtime_runners({"onnxruntime": export_quantized_onnx(model, tmp_path / f"{form}.onnx", EXAMPLE, 8,
                                                                         form=form)})["onnxruntime"]
            for form in ("integer", "qdq")}
    inputs = padded_inputs(3, 24, 1000)
    a, b = (first_output(r)(inputs) for r in runs.values())
    np.testing.assert_allclose(a, b, atol=1e-5)
    with pytest.raises(ExportError, match="valid: integer, qdq"):
        export_quantized_onnx(model, tmp_path / "x.onnx", EXAMPLE, 8, form="qgemm")


def _folder(model, tiny_dir, out, meta):
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    from nasbert_deploy.lowbit.qdq import float_copy

    float_copy(model).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_dir).save_pretrained(out)
    state = {k: v.detach().clone() for k, v in model.state_dict().items() if ".w_quant." in k or ".a_quant." in k}
    save_file(state, str(out / "quantization.safetensors"))
    (out / "quantization.json").write_text(json.dumps({"bits": 8, "act_bits": 8, **meta}))


def test_folders_load_with_and_without_sharing(tiny_dir, tmp_path):
    from nasbert_deploy.quantize.run import load_quantized

    inputs = padded_inputs(2, 20, 1000)
    # a folder written before sharing existed: query/key/value quantized with three step sizes; they stay three
    old = bert_classifier(tiny_dir)
    quantize_linears(old, 8, 8)
    with torch.no_grad():
        old(**EXAMPLE)
        for _, q in quant_linears(old):
            q.a_quant.step.mul_(1 + 0.01 * torch.rand(1))  # distinct learned values
    _folder(old, tiny_dir, tmp_path / "old", {})
    loaded, _, _ = load_quantized(tmp_path / "old")
    assert shared_input_groups(loaded) == []
    np.testing.assert_allclose(torch_runner(loaded)(inputs), torch_runner(old)(inputs), atol=1e-6)
    new = _shared("bert", tiny_dir)
    _folder(new, tiny_dir, tmp_path / "new", {"shared_input_quantizers": shared_input_groups(new)})
    loaded, _, meta = load_quantized(tmp_path / "new")
    assert shared_input_groups(loaded) == meta["shared_input_quantizers"] != []
    np.testing.assert_allclose(torch_runner(loaded)(inputs), torch_runner(new)(inputs), atol=1e-6)


def test_lsq_quantizer_shared_by_modules_is_one_parameter():
    q = LsqQuantizer(activation_spec(8))
    m = torch.nn.ModuleDict({"a": torch.nn.ModuleDict({"q": q}), "b": torch.nn.ModuleDict({"q": q})})
    assert len(list(m.parameters())) == 1 and len(m.state_dict()) == 8  # two names, one tensor each
