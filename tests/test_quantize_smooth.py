"""KDLSQ with SmoothQuant (`lowbit.smooth`): per-channel divisors of the quantized inputs moved into the weights; exact
in float, less error on inputs with outlier channels, exported as Mul -> Q/DQ that ONNX Runtime and OpenVINO run on
their integer kernels, and saved / loaded with the step sizes."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from helpers import make_tiny_teacher
from test_quantize import EXAMPLE, bert_classifier, nasbert_classifier
from test_quantize_cli import _run, tiny  # noqa: F401  (the `quantize` command's tiny classifier and task files)
from test_quantize_shared import _folder, _project_optimized_ops

from nasbert_deploy.export.validate import padded_inputs
from nasbert_deploy.lowbit.lsq import QuantLinear, bake_weights, quant_linears, quantize_linears, shared_input_groups
from nasbert_deploy.lowbit.qdq import export_quantized_onnx
from nasbert_deploy.lowbit.smooth import (
    fold_into_value,
    input_absmax,
    outlier_ratio,
    smooth_inputs,
    smoothing_scales,
    value_out_pairs,
)
from nasbert_deploy.quantize.check import check_logits, first_output, runtime_runners, torch_runner

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, one_thread):
    return make_tiny_teacher(tmp_path_factory.mktemp("qsm") / "tiny")


def _batches():
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(5, 1000, (2, 23), generator=g), "attention_mask": torch.ones(2, 23, dtype=torch.long)}
            for _ in range(3)]


def _smoothed(which, tiny_dir, alpha=0.5, fold=False):
    model = bert_classifier(tiny_dir) if which == "bert" else nasbert_classifier()
    absmax = input_absmax(model, _batches())
    quantize_linears(model, 8, 8, EXAMPLE)
    folded = fold_into_value(model, absmax, alpha) if fold else []
    names = smooth_inputs(model, absmax, alpha, skip=folded)
    with torch.no_grad():
        model(**EXAMPLE)  # activation step sizes, on x / s
    return model, names


def test_scales_follow_smoothquant_and_clip_small_channels():
    x = torch.tensor([4.0, 1.0, 0.25, 1e-6, 9.0])
    w = torch.tensor([1.0, 4.0, 1.0, 1.0, 1.0])
    s = smoothing_scales(x, w, 0.5)
    raw = x.sqrt() / w.sqrt()
    floor = torch.quantile(raw, 0.1)
    torch.testing.assert_close(s, raw.clamp(min=float(floor)))
    assert float(s[3]) == pytest.approx(float(floor)) and float(floor) > float(raw[3])  # the near-dead channel
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        smoothing_scales(x, w, 1.0)


def test_smoothing_is_exact_in_float_and_cuts_the_error_of_an_outlier_channel():
    torch.manual_seed(0)
    x = torch.randn(64, 32)
    x[:, 5] *= 60.0  # one outlier channel, as BERT's LayerNorm outputs have
    lin = torch.nn.Linear(32, 16)
    ref = lin(x)

    def error(alpha):
        q = QuantLinear.from_linear(lin, 8, 8)
        if alpha:
            absmax = input_absmax(torch.nn.Sequential(lin), [{"input": x}])
            q.a_quant.set_smoothing(smoothing_scales(absmax["0"], q.weight.detach().abs().amax(0), alpha))
            q.w_quant.initialize(q.scaled_weight())
            s = q.smoothing()
            torch.testing.assert_close(torch.nn.functional.linear(x / s, q.weight * s, q.bias), ref, rtol=1e-5, atol=1e-5)
        with torch.no_grad():
            return float((q(x) - ref).pow(2).mean())

    plain, smooth = error(0.0), error(0.5)
    assert smooth < 0.5 * plain, (plain, smooth)


@pytest.mark.parametrize("which", ["bert", "nasbert"])
def test_export_multiplies_before_quantizing_and_matches_fake_quant(tiny_dir, tmp_path, which):
    import onnx

    model, names = _smoothed(which, tiny_dir)
    distinct = len(list(quant_linears(model))) - sum(len(g) - 1 for g in shared_input_groups(model))
    assert len(names) == distinct  # every distinct quantized input has its s
    path = export_quantized_onnx(model, tmp_path / "q8.onnx", EXAMPLE, 8)
    exported = Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    assert exported["QuantizeLinear"] == distinct
    smooth_muls = [n for n in onnx.load(str(path)).graph.node if n.op_type == "Mul" and n.name.endswith(".smooth")]
    assert len(smooth_muls) == distinct
    ops, session = _project_optimized_ops(path, tmp_path)
    # the Mul stays a float op in front of the QuantizeLinear; every Linear still runs on ORT's integer kernels
    assert ops["MatMulIntegerToFloat"] + ops["QGemm"] >= len(list(quant_linears(model))) and ops["Gemm"] == 0
    assert ops["DequantizeLinear"] == 0
    run = lambda inputs: session.run(None, dict(inputs))[0]  # noqa: E731
    ov = first_output(runtime_runners({"openvino": path})["openvino"])
    checks = check_logits(torch_runner(model), {"ort": run, "openvino": ov}, 64, 1000)
    assert all(c.passed for c in checks), [c.describe() for c in checks if not c.passed]


@pytest.mark.parametrize("which", ["bert", "nasbert"])
def test_fold_into_value_is_exact_in_float_and_drops_a_mul_per_attention(tiny_dir, tmp_path, which):
    import onnx

    model = bert_classifier(tiny_dir) if which == "bert" else nasbert_classifier()
    attentions = len(value_out_pairs(model))
    assert attentions >= 1
    inputs = padded_inputs(2, 20, 1000)
    before = torch_runner(model)(inputs)
    absmax = input_absmax(model, _batches())
    values = [v.weight.detach().clone() for v, _, _ in value_out_pairs(model)]
    quantize_linears(model, 8, 8, EXAMPLE)
    folded = fold_into_value(model, absmax, 0.5)
    assert folded == [name for _, _, name in value_out_pairs(model)]
    for (v, o, _), w in zip(value_out_pairs(model), values, strict=True):
        assert not torch.allclose(v.weight, w) and o.a_quant.smooth is None  # moved into the weights, no divisor left
    float_now = {n: q.weight.detach().clone() for n, q in quant_linears(model)}
    plain = bert_classifier(tiny_dir) if which == "bert" else nasbert_classifier()
    state = plain.state_dict()
    for n, w in float_now.items():
        state[f"{n}.weight"] = w
    for v, _, name in value_out_pairs(model):
        prefix = name.rsplit(".", 1)[0] if which == "nasbert" else name.rsplit(".", 2)[0] + ".self"
        state[f"{prefix}.value.bias"] = v.bias.detach().clone()
    plain.load_state_dict(state)
    np.testing.assert_allclose(torch_runner(plain)(inputs), before, atol=2e-5)  # an exact reparametrisation
    names = smooth_inputs(model, absmax, 0.5, skip=folded)
    distinct = len(list(quant_linears(model))) - sum(len(g) - 1 for g in shared_input_groups(model))
    assert len(names) == distinct - attentions
    with torch.no_grad():
        model(**EXAMPLE)
    path = export_quantized_onnx(model, tmp_path / "q8.onnx", EXAMPLE, 8)
    nodes = onnx.load(str(path)).graph.node
    assert sum(n.op_type == "Mul" and n.name.endswith(".smooth") for n in nodes) == distinct - attentions
    ops, session = _project_optimized_ops(path, tmp_path)
    assert ops["Gemm"] == 0 and ops["DequantizeLinear"] == 0
    checks = check_logits(torch_runner(model), {"ort": lambda x: session.run(None, dict(x))[0]}, 64, 1000)
    assert all(c.passed for c in checks), [c.describe() for c in checks if not c.passed]


def test_smoothed_weights_load_as_a_plain_model_and_bake_is_idempotent(tiny_dir):
    model, _ = _smoothed("bert", tiny_dir)
    inputs = padded_inputs(2, 20, 1000)
    before = torch_runner(model)(inputs)
    bake_weights(model)
    bake_weights(model)
    np.testing.assert_allclose(torch_runner(model)(inputs), before, atol=1e-5)
    # quantized_weight is in the Linear's own input space: close to W, not W * s
    for _, q in quant_linears(model):
        w, qw = q.weight.detach(), q.quantized_weight().detach()
        assert float((qw - w).abs().max()) < 0.05 * float(w.abs().max())


def test_folder_with_smoothing_loads_as_trained(tiny_dir, tmp_path):
    from nasbert_deploy.quantize.run import load_quantized

    model, names = _smoothed("bert", tiny_dir, fold=True)  # as `quantize` does: attention outputs folded, no buffer
    bake_weights(model)
    _folder(model, tiny_dir, tmp_path / "sq", {"shared_input_quantizers": shared_input_groups(model),
                                               "smoothed_inputs": names})
    assert json.loads((tmp_path / "sq" / "quantization.json").read_text())["smoothed_inputs"] == names
    loaded, _, _ = load_quantized(tmp_path / "sq")
    inputs = padded_inputs(2, 20, 1000)
    np.testing.assert_allclose(torch_runner(loaded)(inputs), torch_runner(model)(inputs), atol=1e-5)
    s = dict(quant_linears(loaded))[names[0]].smoothing()
    assert s is not None and not torch.allclose(s, torch.ones_like(s))


def test_quantize_with_smooth_end_to_end(tiny):  # noqa: F811
    from helpers import one_line_error

    from nasbert_deploy.quantize.run import load_quantized, onnx_name

    out = tiny["root"] / "q8-smooth"
    r = _run("quantize", "--model", tiny["clf"], "--task", tiny["train"], "--valid", tiny["valid"], "--smooth", "0.5",
             "--smooth-min-ratio", "0", "--steps", "2", "--batch-size", "8", "--max-len", "16", "--no-timing", "--out", out)
    assert r.exit_code == 0, r.output
    report = json.loads((out / "quantize_report.json").read_text())
    assert report["smoothing"]["alpha"] == 0.5 and report["config"]["smooth"] == 0.5
    # one s per distinct quantized input; the 2 attention outputs' folded into the value Linears (no Mul)
    assert len(report["smoothing"]["inputs"]) == 14 - 2 * 2 - 2 and len(report["smoothing"]["folded_into_value"]) == 2
    assert "alpha 0.5 on 10 inputs (2 folded" in r.output
    for rt in ("onnxruntime", "openvino"):
        assert report["checks"][rt]["passed"] == report["checks"][rt]["checks"]
    model, _, meta = load_quantized(out)
    assert meta["smoothed_inputs"] == report["smoothing"]["inputs"] and meta["smooth_alpha"] == 0.5
    assert meta["smooth_folded_into_value"] == report["smoothing"]["folded_into_value"]
    import onnxruntime as ort

    inputs = padded_inputs(2, 20, 1000)
    sess = ort.InferenceSession(str(out / onnx_name(8)), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, inputs)[0], torch_runner(model)(inputs), atol=1e-4)
    # without --smooth the settings are those of before it existed (checkpoint keys unchanged)
    from nasbert_deploy.quantize.train import QuantizeConfig

    assert "smooth" not in QuantizeConfig().to_dict() and QuantizeConfig(smooth=0.5).to_dict()["smooth"] == 0.5
    never = tiny["root"] / "never-smooth"
    one_line_error(_run("quantize", "--model", tiny["clf"], "--task", tiny["train"], "--smooth", "1.5", "--out", never),
                   "--smooth")
    assert not never.exists()


def test_4bit_export_with_smoothing_matches_fake_quant(tiny_dir, tmp_path):
    """MatMulNBits holds the integers of W * s; the Mul by 1 / s sits before the 8-bit input's Q/DQ, as at 8 bits."""
    model = bert_classifier(tiny_dir)
    absmax = input_absmax(model, _batches())
    quantize_linears(model, 4, 8, EXAMPLE)
    smooth_inputs(model, absmax, 0.9)
    with torch.no_grad():
        model(**EXAMPLE)
    path = export_quantized_onnx(model, tmp_path / "q4.onnx", EXAMPLE, 4, accuracy_level=0)
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    checks = check_logits(torch_runner(model), {"ort": lambda x: s.run(None, dict(x))[0]}, 64, 1000, rtol=1e-4)
    assert all(c.passed for c in checks), [c.describe() for c in checks if not c.passed]


def test_min_ratio_smooths_only_inputs_with_outlier_channels(tiny_dir):
    """`--smooth-min-ratio`: an input whose largest channel stands out less than the ratio keeps no s (no Mul)."""
    assert outlier_ratio(torch.tensor([1.0, 2.0, 3.0, 30.0])) == pytest.approx(30.0 / 2.0)  # torch's lower median
    model = bert_classifier(tiny_dir)
    absmax = input_absmax(model, _batches())
    quantize_linears(model, 8, 8, EXAMPLE)
    groups = {id(q.a_quant): n for n, q in reversed(list(quant_linears(model))) if q.a_quant is not None}
    firsts = set(groups.values())
    ratios = {n: outlier_ratio(x) for n, x in absmax.items() if n in firsts}
    cut = sorted(ratios.values())[len(ratios) // 2]  # about half the inputs stand out that far
    names = smooth_inputs(model, absmax, 0.5, min_ratio=cut)
    assert names and set(names) == {n for n, r in ratios.items() if r >= cut} != firsts
    for n, q in quant_linears(model):
        if q.a_quant is not None and n not in names and groups[id(q.a_quant)] == n:
            assert q.smoothing() is None


def test_quantize_smooth_min_ratio_end_to_end(tiny):  # noqa: F811
    from helpers import one_line_error

    from nasbert_deploy.quantize.train import QuantizeConfig

    out = tiny["root"] / "q8-smooth-ratio"
    r = _run("quantize", "--model", tiny["clf"], "--task", tiny["train"], "--valid", tiny["valid"], "--smooth", "0.5",
             "--smooth-min-ratio", "1e6", "--steps", "1", "--batch-size", "8", "--max-len", "16", "--no-timing",
             "--format", "none", "--out", out)
    assert r.exit_code == 0, r.output
    report = json.loads((out / "quantize_report.json").read_text())
    # no input stands out a million times its median: only the free folds into the value Linears remain
    assert report["smoothing"]["inputs"] == [] and len(report["smoothing"]["folded_into_value"]) == 2
    assert report["smoothing"]["min_ratio"] == 1e6 and report["config"]["smooth_min_ratio"] == 1e6
    assert report["recipe"] == {"name": "loyal", "why": report["recipe"]["why"],
                                "overrides": ["--smooth 0.5", "--smooth-min-ratio 1e+06"]}
    assert "smooth_min_ratio" not in QuantizeConfig(smooth=0.5).to_dict()  # checkpoint keys of before the ratio
    for args in (["--recipe", "trained"], ["--smooth", "0"]):  # SmoothQuant off: a ratio selects nothing
        never = tiny["root"] / "never-ratio"
        one_line_error(_run("quantize", "--model", tiny["clf"], "--task", tiny["train"], *args, "--smooth-min-ratio", "8",
                            "--out", never), "--smooth ALPHA")
        assert not never.exists()
