"""Near-identity square Linears quantized in the residual form x + (W - I) x (`lowbit.residual`): exact in float,
far less error than quantizing W (the drifted identity projections of a converted teacher), exported with a float
Add that ONNX Runtime and OpenVINO run beside the integer MatMul, saved as a plain model and loaded back."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import TINY, make_tokenizer_dir, one_line_error, write_word_task
from torch import nn
from typer.testing import CliRunner

from nasbert_deploy.cli.app import app
from nasbert_deploy.export.validate import padded_inputs
from nasbert_deploy.lowbit.lsq import quant_linears, quantize_linears
from nasbert_deploy.lowbit.qdq import export_quantized_onnx
from nasbert_deploy.lowbit.residual import ResidualLinear, merge_residual, near_identity, split_residual
from nasbert_deploy.quantize.check import check_logits, first_output, runtime_runners, torch_runner

pytestmark = pytest.mark.usefixtures("one_thread")
W = TINY.hidden_sizes[-1]
ARCH = f"{W}:mha,ffn|{W}:sep3,ffn"  # one square block boundary (embedding 16 -> 64 and head 64 -> 48 are not square)
EXAMPLE = {"input_ids": torch.randint(5, 1000, (4, 24), generator=torch.Generator().manual_seed(0)),
           "attention_mask": torch.ones(4, 24, dtype=torch.long)}


def drifted_classifier(seed: int = 0):
    """A NAS-BERT classifier whose block boundary is the identity moved by fine-tuning-sized noise (rms 0.003), as
    in a converted teacher; every other weight random."""
    from nasbert_deploy.model.modeling import NasBertConfig, NasBertForSequenceClassification

    torch.manual_seed(seed)
    cfg = NasBertConfig.from_arch(ARCH, TINY, num_labels=3, id2label=dict(enumerate("xyz")),
                                  label2id={c: i for i, c in enumerate("xyz")})
    clf = NasBertForSequenceClassification(cfg).eval()
    with torch.no_grad():
        b = clf.nasbert.boundaries[0]
        b.weight.copy_(torch.eye(W) + 0.003 * torch.randn(W, W))
        b.bias.mul_(0.1)
    return clf


def test_only_near_identity_square_linears_are_split_and_the_float_model_is_unchanged():
    clf = drifted_classifier()
    assert near_identity(clf.nasbert.boundaries[0]) and not near_identity(clf.nasbert.embed_proj)
    assert not near_identity(nn.Linear(W, W))  # a trained square Linear far from I
    ref = clf(**EXAMPLE).logits
    names = split_residual(clf)
    assert names == ["nasbert.boundaries.0"] and isinstance(clf.nasbert.boundaries[0], ResidualLinear)
    torch.testing.assert_close(clf(**EXAMPLE).logits, ref, rtol=1e-5, atol=1e-5)
    merge_residual(clf)
    torch.testing.assert_close(clf(**EXAMPLE).logits, ref, rtol=1e-5, atol=1e-5)
    assert type(clf.nasbert.boundaries[0]) is nn.Linear
    with pytest.raises(ValueError, match="no Linear named nasbert.nope"):
        split_residual(clf, ["nasbert.nope"])
    with pytest.raises(ValueError, match="not square"):
        split_residual(clf, ["nasbert.embed_proj"])


def _quantized(residual: bool):
    clf = drifted_classifier()
    if residual:
        split_residual(clf)
    quantize_linears(clf, 8, 8, EXAMPLE)
    with torch.no_grad():
        clf(**EXAMPLE)  # the activation step sizes
    return clf


def test_the_residual_form_quantizes_a_drifted_identity_with_less_error():
    torch.manual_seed(0)
    lin = drifted_classifier().nasbert.boundaries[0]
    x = torch.randn(256, W)
    x[:, 3] *= 20.0  # an outlier feature, as on BERT's residual stream
    ref = lin(x).detach()
    errors = {}
    for residual in (False, True):
        m = nn.Sequential(ResidualLinear.from_linear(lin) if residual else lin)
        quantize_linears(m, 8, 8)
        q = m[0].delta if residual else m[0]
        step = float(q.w_quant.scale().max())  # D's step size is set by D's largest entry, W's by the diagonal's 1
        assert step < 0.05 / 127 if residual else step > 0.9 / 127
        with torch.no_grad():
            errors[residual] = float((m(x) - ref).pow(2).mean())  # the first call sets the input's step size
    assert errors[True] < 0.01 * errors[False], errors


def test_the_export_adds_the_input_back_in_float_on_both_runtimes(tmp_path):
    import onnx

    clf = _quantized(True)
    path = export_quantized_onnx(clf, tmp_path / "q8.onnx", EXAMPLE, 8)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("MatMulIntegerToFloat") == len(list(quant_linears(clf)))  # D is an integer MatMul like the rest
    runners = {rt: first_output(c) for rt, c in runtime_runners({"onnxruntime": path, "openvino": path}).items()}
    checks = check_logits(torch_runner(clf), runners, TINY.max_positions, 1000)
    assert all(c.passed for c in checks), [c.describe() for c in checks if not c.passed]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, one_thread):
    from transformers import AutoTokenizer

    from nasbert_deploy.model.remote_code import write_remote_code

    root = tmp_path_factory.mktemp("qres")
    tok = AutoTokenizer.from_pretrained(str(make_tokenizer_dir(root / "tok")))
    clf = drifted_classifier()
    clf.save_pretrained(root / "clf")
    tok.save_pretrained(root / "clf")
    write_remote_code(root / "clf")
    return {"root": root, "clf": root / "clf", "train": write_word_task(root / "train.jsonl", 24, 0),
            "valid": write_word_task(root / "valid.jsonl", 8, 1)}


def _quantize(folder, out, *extra):
    r = CliRunner().invoke(app, [str(a) for a in ("quantize", "--model", folder["clf"], "--task", folder["train"], "--valid",
                                                  folder["valid"], "--steps", 2, "--batch-size", 8, "--max-len", 16,
                                                  "--no-timing", "--out", out, *extra)])
    return r


def test_quantize_splits_saves_a_plain_model_and_loads_the_form_back(folder):
    from nasbert_deploy.quantize.run import load_quantized
    from nasbert_deploy.student.finetune import load_classifier

    out = folder["root"] / "q8"
    r = _quantize(folder, out)
    assert r.exit_code == 0, r.output
    report = json.loads((out / "quantize_report.json").read_text())
    meta = json.loads((out / "quantization.json").read_text())
    assert report["residual_projections"] == {"mode": "auto", "linears": ["nasbert.boundaries.0"]}
    assert meta["residual_linears"] == ["nasbert.boundaries.0"] and "1 Linears" in r.output
    assert all(c["passed"] == c["checks"] for c in report["checks"].values())
    model, _, _ = load_quantized(out)
    q = model.nasbert.boundaries[0]
    assert isinstance(q, ResidualLinear)
    d = q.delta.weight / q.delta.w_quant.scale()[:, None]
    assert torch.allclose(d, d.round(), atol=0.01)  # D recovered from I + D on its own grid (to 1e-7 of 1)
    inputs = padded_inputs(2, 20, 1000)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out / meta["files"]["onnx"]), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, inputs)[0], torch_runner(model)(inputs), atol=1e-4)
    plain, _ = load_classifier(out)  # a plain model: the Linear I + D
    assert type(plain.nasbert.boundaries[0]) is nn.Linear
    torch.testing.assert_close(plain.nasbert.boundaries[0].weight, q.delta.weight + torch.eye(W), rtol=0, atol=1e-6)


def test_residual_off_quantizes_w_and_a_bad_mode_is_one_line(folder):
    out = folder["root"] / "q8-off"
    r = _quantize(folder, out, "--residual-projections", "off")
    assert r.exit_code == 0, r.output
    assert json.loads((out / "quantization.json").read_text())["residual_linears"] == []
    assert json.loads((out / "quantize_report.json").read_text())["config"]["residual_projections"] == "off"
    one_line_error(_quantize(folder, folder["root"] / "q8-bad", "--residual-projections", "on"), "--residual-projections")
    assert not (folder["root"] / "q8-bad").exists()
