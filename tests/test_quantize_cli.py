"""`quantize` command and `quantize.run`: output folder, numeric checks, resume, one-line errors before any work."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from helpers import make_tiny_teacher, one_line_error, write_word_task
from typer.testing import CliRunner

from nasbert_deploy.cli.app import app
from nasbert_deploy.errors import CheckpointError
from nasbert_deploy.export.validate import padded_inputs
from nasbert_deploy.lowbit.grid import saturates_int16
from nasbert_deploy.quantize.check import torch_runner
from nasbert_deploy.quantize.run import load_quantized, onnx_name, quantize
from nasbert_deploy.quantize.train import QuantizeConfig
from nasbert_deploy.student.tasks import load_task

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()



@pytest.fixture(scope="module")
def tiny(tmp_path_factory, one_thread):
    from transformers import AutoTokenizer, BertForSequenceClassification

    root = tmp_path_factory.mktemp("qcli")
    encoder = make_tiny_teacher(root / "encoder")
    torch.manual_seed(0)
    clf = BertForSequenceClassification.from_pretrained(encoder, num_labels=3, id2label=dict(enumerate("xyz")),
                                                        label2id={c: i for i, c in enumerate("xyz")})
    clf.save_pretrained(root / "clf")
    AutoTokenizer.from_pretrained(encoder).save_pretrained(root / "clf")
    return {"root": root, "encoder": encoder, "clf": root / "clf", "train": write_word_task(root / "train.jsonl", 48, 0),
            "valid": write_word_task(root / "valid.jsonl", 16, 1), "other": write_word_task(root / "other.jsonl", 20, 2, "xw")}


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_quantize_8bit_end_to_end(tiny, monkeypatch):
    import nasbert_deploy.lowbit.grid as grid

    monkeypatch.setattr(grid, "cpu_flags", lambda: frozenset({"avx512_vnni", "amx_int8"}))  # auto centres with AMX
    out = tiny["root"] / "q8"
    r = _run("quantize", "--model", tiny["clf"], "--task", tiny["train"], "--valid", tiny["valid"], "--bits", "8",
             "--steps", "3", "--batch-size", "8", "--max-len", "16", "--ce-weight", "0.5", "--hidden-weight", "0.25",
             "--out", out)
    assert r.exit_code == 0, r.output
    report = json.loads((out / "quantize_report.json").read_text())
    assert report["config"]["ce_weight"] == 0.5 and report["config"]["hidden_weight"] == 0.25
    # the loyal recipe (auto at 8 bits): weights kept, SmoothQuant on outlier inputs; --ce-weight overrides its 0
    assert report["recipe"]["name"] == "loyal" and report["recipe"]["overrides"] == ["--ce-weight 0.5"]
    assert report["config"]["lr"] == 0.0 and report["config"]["smooth"] == 0.95
    assert report["config"]["smooth_min_ratio"] == 8.0 and "recipe" in r.output and "loyal" in r.output
    assert report["quantized_linears"] == 14  # 2 layers x 6 + pooler + classifier
    for rt in ("onnxruntime", "openvino"):
        c = report["checks"][rt]
        assert c["passed"] == c["checks"] == 9  # batch 1/2/4 x seq 8/37/64 (the tiny model's 64 positions)
        assert report["scores"][f"kdlsq-8bit-{rt}"]["agreement_vs_torch"] == 1.0
    assert (out / onnx_name(8)).is_file() and (out / "openvino" / "openvino_model_q8.xml").is_file()
    assert not (tiny["root"] / "q8.ckpt").exists()
    # measured by default on the shipped kdlsq8 devices; a BERT model is outside every search space: not predicted
    lat = {x["device"]: x for x in report["latency"]}
    assert sorted(lat) == ["cpu-openvino-kdlsq8", "cpu-ort-kdlsq8"]
    for x in lat.values():
        assert x["measured"]["median_ms"] > 0 and x["predicted_ms"] is None and "not an architecture" in x["predicted_note"]
        assert x["seq_len"] == 64  # the tiny model's positions
    assert "cpu-ort-kdlsq8 ms (b1 x 64)" in r.output
    # the folder reloads as the same fake-quantized model, and its ONNX file runs it on integer kernels
    import onnxruntime as ort

    model, _, meta = load_quantized(out)
    assert meta["bits"] == 8 and meta["files"]["onnx"] == onnx_name(8)
    # the word-embedding table is quantized too (as the weights by default), reloaded with its learned row steps
    assert meta["embedding_bits"] == 8 == report["embedding"]["bits"] and "word embeddings" in r.output
    table = model.get_input_embeddings()
    ints = table.quantized_weight() / table.w_quant.scale()[:, None]
    assert torch.allclose(ints, ints.round(), atol=1e-3) and float(ints.detach().abs().max()) <= 127.001
    # --reduce-range auto: the reduced grid exactly where ORT's u8 x s8 kernels saturate int16 (x86 without VNNI)
    assert meta["reduce_range"] == report["reduce_range"] == saturates_int16()
    assert meta["weight_levels"] == ([-63, 63] if saturates_int16() else [-127, 127]) == report["weight_levels"]
    assert "weight grid" in r.output and f"reduce range {'on' if saturates_int16() else 'off'} (auto" in r.output
    lo, hi = report["onnx_weight_range"]
    assert meta["weight_levels"][0] <= lo < 0 < hi <= meta["weight_levels"][1]
    # query/key/value of each layer trained one shared input quantizer, reloaded shared, quantized once in the ONNX file
    groups = meta["shared_input_quantizers"]
    assert [sorted(n.rsplit(".", 1)[1] for n in g) for g in groups] == [["key", "query", "value"]] * 2
    assert model.get_submodule(groups[0][1]).a_quant is model.get_submodule(groups[0][0]).a_quant
    import onnx

    ops = Counter(n.op_type for n in onnx.load(str(out / onnx_name(8))).graph.node)
    assert ops["QuantizeLinear"] == 14 - 2 * 2
    # the integer form (default): every Linear one MatMulIntegerToFloat with its bias inside, no float bias Add
    assert meta["onnx_form"] == report["onnx_form"] == "integer"
    assert ops["MatMulIntegerToFloat"] == 14 and ops["DequantizeLinear"] == ops["Gemm"] == 0
    inputs = padded_inputs(2, 20, 1000)
    sess = ort.InferenceSession(str(out / onnx_name(8)), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, inputs)[0], torch_runner(model)(inputs), atol=1e-4)
    # centred input grids (--signed-activations auto): int8 in the graph OpenVINO reads, the same numbers
    assert report["openvino_signed_inputs"] > 0 and "centred on zero" in meta["activations"]
    assert report["config"]["signed_activations"] == "auto"
    assert "AMX-INT8" in " ".join(r.output.split())
    # the written IR is the graph OpenVINO builds from the ONNX file (what the checks ran), and it compiles here
    from nasbert_deploy.quantize.check import runtime_runners

    ir, from_onnx = (runtime_runners({"openvino": out / p})["openvino"] for p in (meta["files"]["openvino"], onnx_name(8)))
    np.testing.assert_allclose(ir.run(inputs)[0], from_onnx.run(inputs)[0], atol=1e-5)
    # the plain folder loads with transformers alone: weights on the 8-bit grid, float activations
    from transformers import AutoModelForSequenceClassification

    plain = AutoModelForSequenceClassification.from_pretrained(out).eval()
    w = plain.bert.encoder.layer[0].intermediate.dense.weight
    s = model.bert.encoder.layer[0].intermediate.dense.w_quant.scale()[:, None]
    assert torch.allclose(w / s, (w / s).round(), atol=1e-3)
    one_line_error(_run("quantize", "--model", tiny["clf"], "--task", tiny["train"], "--out", out), "--force")


@pytest.mark.parametrize("mode", ["off", "auto"])
def test_signed_activations_off_keeps_asymmetric_grids(tiny, monkeypatch, mode):
    """`off`, and `auto` on a CPU without AMX-INT8 (OpenVINO's u8 path is the faster one there)."""
    import nasbert_deploy.lowbit.grid as grid

    monkeypatch.setattr(grid, "cpu_flags", lambda: frozenset({"avx512f", "avx512_vnni"}))
    out = tiny["root"] / f"q8-asym-{mode}"
    r = _run("quantize", "--model", tiny["clf"], "--task", tiny["train"], "--valid", tiny["valid"], "--steps", "2",
             "--batch-size", "8", "--max-len", "16", "--signed-activations", mode, "--format", "openvino", "--no-timing",
             "--smooth", "0", "--out", out)  # no smoothing: an x / s range can land on zero point 128 by chance
    assert r.exit_code == 0, r.output
    report = json.loads((out / "quantize_report.json").read_text())
    assert "signed_activations" not in report["config"]  # "off": the settings of runs from before the option
    assert report["openvino_signed_inputs"] == 0
    _, _, meta = load_quantized(out)
    assert meta["activations"] == "uint8 per tensor, asymmetric"
    one_line_error(_run("quantize", "--model", tiny["clf"], "--signed-activations", "yes", "--out", out / "x"),
                   "auto", "on", "off")


def test_the_qdq_form_writes_standard_operators_only(tiny):
    import onnx

    out = tiny["root"] / "q8-qdq"
    r = _run("quantize", "--model", tiny["clf"], "--task", tiny["train"], "--valid", tiny["valid"], "--steps", "1",
             "--batch-size", "8", "--max-len", "16", "--onnx-form", "qdq", "--no-timing", "--out", out)
    assert r.exit_code == 0, r.output
    report = json.loads((out / "quantize_report.json").read_text())
    assert report["onnx_form"] == "qdq" == load_quantized(out)[2]["onnx_form"]
    assert all(c["passed"] == c["checks"] for c in report["checks"].values())  # checked on ORT and OpenVINO alike
    graph = onnx.load(str(out / onnx_name(8))).graph
    assert all(n.domain in ("", "ai.onnx") for n in graph.node)
    assert Counter(n.op_type for n in graph.node)["DequantizeLinear"] >= 14


def test_2bit_is_simulated_and_resumes(tiny):
    train, valid = load_task(tiny["train"]), load_task(tiny["valid"])
    out = tiny["root"] / "q2"
    cfg = QuantizeConfig(bits=2, steps=4, batch_size=8, max_len=16, checkpoint_every=100)

    def stop_at_2(done, total, values):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        quantize(tiny["clf"], train, valid, out, cfg, (), progress=stop_at_2)
    assert (tiny["root"] / "q2.ckpt").is_dir() and not out.exists()
    notes = []
    report = quantize(tiny["clf"], train, valid, out, cfg, (), note=notes.append)
    assert report["training"]["resumed_from"] == 2 and notes == ["resuming from step 2 of 4"]
    assert report["simulated_only"] and not report["checks"] and "kdlsq-2bit-torch" in report["scores"]
    model, _, meta = load_quantized(out)
    assert meta["embedding_bits"] == 2
    w = model.bert.encoder.layer[1].output.dense.quantized_weight()
    levels = torch.unique((w / model.bert.encoder.layer[1].output.dense.w_quant.scale()[:, None]).round())
    assert set(levels.tolist()) <= {-2.0, -1.0, 0.0, 1.0}


def test_an_export_that_fails_its_checks_reruns_without_training(tiny, monkeypatch):
    """The trained state outlives a failed numeric check: the error names the --format that passed (here none), and
    the rerun writes the folder from the saved state (training resumed at its last step: nothing retrained)."""
    import nasbert_deploy.quantize.check as check
    from nasbert_deploy.errors import ExportError

    train, valid = load_task(tiny["train"]), load_task(tiny["valid"])
    out = tiny["root"] / "q8-failed-check"
    cfg = QuantizeConfig(bits=8, steps=3, batch_size=8, max_len=16, checkpoint_every=100)
    monkeypatch.setattr(check, "INT8_MIN_COSINE", 1.01)  # no export can pass
    with pytest.raises(ExportError, match="rerun with --format none"):
        quantize(tiny["clf"], train, valid, out, cfg, ("onnx",))
    assert not out.exists() and (tiny["root"] / "q8-failed-check.ckpt").is_dir()
    notes = []
    report = quantize(tiny["clf"], train, valid, out, cfg, (), note=notes.append)
    assert report["training"]["resumed_from"] == 3 and notes == ["resuming from step 3 of 3"]
    assert (out / "quantization.json").is_file() and not (tiny["root"] / "q8-failed-check.ckpt").exists()


@pytest.mark.parametrize("args,needles", [
    (["--bits", "2", "--format", "onnx"], ["--bits 2 has no kernel in onnx", "--format none"]),
    (["--bits", "2", "--format", "openvino"], ["--bits 2 has no kernel in openvino"]),
    (["--format", "tflite"], ["--format 'tflite'"]),
    (["--bits", "3"], ["--bits"]),
    (["--bits", "4", "--reduce-range", "on"], ["--reduce-range on applies to 8-bit weights only"]),
    (["--reduce-range", "maybe"], ["--reduce-range"]),
    (["--embedding-bits", "3"], ["--embedding-bits"]),
    (["--bits", "4", "--onnx-form", "qdq"], ["--onnx-form qdq", "8-bit exports", "leave it out"]),
    (["--format", "none", "--onnx-form", "qdq"], ["--onnx-form qdq", "--format none"]),
    (["--onnx-form", "qgemm"], ["--onnx-form"]),
])
def test_bits_without_kernels_are_refused(tiny, args, needles):
    out = tiny["root"] / "never"
    r = _run("quantize", "--model", tiny["clf"], "--task", tiny["train"], "--out", out, *args)
    one_line_error(r, *needles)
    assert not out.exists()


def test_inputs_are_checked_before_any_work(tiny):
    out = tiny["root"] / "never"
    base = ["quantize", "--task", tiny["train"], "--out", out]
    one_line_error(_run(*base, "--model", tiny["encoder"]), "not a classifier")
    one_line_error(_run("quantize", "--model", tiny["clf"], "--task", tiny["other"], "--out", out),
                    "labels the model does not know: w")
    one_line_error(_run(*base, "--model", tiny["clf"], "--teacher-model", tiny["encoder"]),
                    "--teacher-model", "not a classifier")
    one_line_error(_run("quantize", "--model", tiny["clf"], "--task", tiny["train"], "--out", "/proc/nasbert-q/out"), "/proc")
    empty = tiny["root"] / "empty.jsonl"
    empty.write_text("")
    one_line_error(_run("quantize", "--model", tiny["clf"], "--task", empty, "--out", out), "empty.jsonl")
    assert not out.exists() and not (tiny["root"] / "never.ckpt").exists()


def test_reduce_range_is_part_of_the_resume_key(tiny):
    train, valid = load_task(tiny["train"]), load_task(tiny["valid"])
    out = tiny["root"] / "q8-range"
    cfg = QuantizeConfig(bits=8, steps=3, batch_size=8, max_len=16, checkpoint_every=100, reduce_range=True)

    def stop_at_1(done, total, values):
        if done == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        quantize(tiny["clf"], train, valid, out, cfg, (), progress=stop_at_1)
    # the checkpoint holds weights trained on [-63, 63]: a full-range run must not continue from it
    full = QuantizeConfig(**{**cfg.to_dict(), "reduce_range": False})
    with pytest.raises(CheckpointError, match="reduce_range"):
        quantize(tiny["clf"], train, valid, out, full, ())
    report = quantize(tiny["clf"], train, valid, out, cfg, ())
    assert report["training"]["resumed_from"] == 1 and report["weight_levels"] == [-63, 63]
    model, _, meta = load_quantized(out)
    assert meta["reduce_range"] is True
    ints = model.bert.encoder.layer[0].output.dense.w_quant.integers(model.bert.encoder.layer[0].output.dense.weight)
    assert ints.abs().max() <= 63
    # a folder written before the option existed (no reduce_range in quantization.json) loads as full range
    meta_path = out / "quantization.json"
    old = {k: v for k, v in json.loads(meta_path.read_text()).items() if k not in ("reduce_range", "weight_levels")}
    meta_path.write_text(json.dumps(old))
    model, _, _ = load_quantized(out)
    spec = model.bert.encoder.layer[0].output.dense.w_quant.spec
    assert (spec.lo, spec.hi) == (-127, 127)


def test_an_ir_openvino_cannot_compile_is_aone_line_error(tmp_path):
    from nasbert_deploy.errors import ExportError
    from nasbert_deploy.quantize.run import _check_ir_compiles

    xml = tmp_path / "openvino_model_q4.xml"
    xml.write_text("not an IR: a damaged file\n")
    with pytest.raises(ExportError, match="OpenVINO cannot compile the quantized IR openvino_model_q4.xml") as e:
        _check_ir_compiles(xml)
    assert "\n" not in str(e.value) and "--format onnx" in str(e.value)


def test_a_transfer_set_joins_training_distilled_only(tiny):
    """--transfer: unlabelled lines (those equal to a task text dropped) join the training rows; they carry no gold
    label, so the cross-entropy is taken over the labelled rows of a batch only (0 for a batch of transfer rows)."""
    from nasbert_deploy.quantize.train import labelled_ce

    task_text = load_task(tiny["train"]).texts[0]
    lines = [task_text] + [f"an unlabelled paragraph number {i} about words" for i in range(40)]
    transfer = tiny["root"] / "transfer.txt"
    transfer.write_text("\n".join(lines) + "\n")
    out = tiny["root"] / "q8-transfer"
    r = _run("quantize", "--model", tiny["clf"], "--task", tiny["train"], "--valid", tiny["valid"], "--format", "none",
             "--no-timing", "--transfer", transfer, "--transfer-rows", "30", "--steps", "2", "--batch-size", "8",
             "--max-len", "16", "--out", out)
    assert r.exit_code == 0, r.output
    report = json.loads((out / "quantize_report.json").read_text())
    assert report["transfer_rows"] == 30 and report["train_rows"] == 48
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]], requires_grad=True)
    assert labelled_ce(logits, torch.tensor([-1, -1])).detach().item() == 0.0
    one = torch.nn.functional.cross_entropy(logits[:1], torch.tensor([0]))
    assert torch.isclose(labelled_ce(logits, torch.tensor([0, -1])), one)
    empty = tiny["root"] / "empty-transfer.txt"
    empty.write_text("")
    never = tiny["root"] / "never"
    one_line_error(_run("quantize", "--model", tiny["clf"], "--task", tiny["train"], "--transfer", empty, "--out", never),
                   "empty-transfer.txt")
    assert not never.exists()


def test_recipes_resolve_by_bits():
    from nasbert_deploy.quantize import RECIPE_SETTINGS, resolve_recipe

    assert resolve_recipe("auto", 8)[0] == "loyal"
    assert resolve_recipe("auto", 4)[0] == resolve_recipe("auto", 2)[0] == "trained"
    assert resolve_recipe("trained", 8) == ("trained", "as asked")
    # trained is what the library's QuantizeConfig defaults to (runs from before the recipes resume)
    cfg = QuantizeConfig()
    assert RECIPE_SETTINGS["trained"] == {"lr": cfg.lr, "ce_weight": cfg.ce_weight, "smooth": cfg.smooth,
                                          "smooth_min_ratio": cfg.smooth_min_ratio}
    assert RECIPE_SETTINGS["loyal"]["lr"] == 0.0 and 0 < RECIPE_SETTINGS["loyal"]["smooth"] < 1
    with pytest.raises(ValueError, match="valid: auto, loyal, trained"):
        resolve_recipe("fast", 8)
