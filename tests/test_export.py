"""Export round trip on the TINY space: HF folder, ONNX, OpenVINO, INT8, optimum, validation and the report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import ARCH, make_supernet_dir, make_tokenizer_dir
from typer.testing import CliRunner

from nasbert_deploy.cli.app import app
from nasbert_deploy.space import TINY

runner = CliRunner()



@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    tok = make_tokenizer_dir(root)
    sn_dir, net = make_supernet_dir(root)
    out = root / "out"
    args = ["export", "--arch", ARCH, "--supernet", str(sn_dir), "--tokenizer", str(tok), "--out", str(out), "--int8"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return out, net, res.output


@pytest.mark.slow
def test_files_and_report(exported):
    out, _, output = exported
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    expected = {"config.json", "model.safetensors", "onnx/model.onnx", "onnx/model_qint8.onnx", "openvino/openvino_model.xml",
                "openvino/openvino_model.bin", "openvino/openvino_model_qint8_quantized.xml",
                "openvino/openvino_model_qint8_quantized.bin", "report.json", "report.md", "tokenizer.json", "README.md",
                "configuration_nasbert.py", "modeling_nasbert.py", "modules.json", "sentence_bert_config.json",
                "config_sentence_transformers.json", "1_Pooling/config.json"}
    assert expected <= names
    assert not any(n.endswith(".onnx.data") or n.startswith(".") for n in names)
    rep = json.loads((out / "report.json").read_text())
    assert rep["arch"] == ARCH and rep["weights"]["init"] == "supernet" and rep["params"] == TINY.params(TINY.parse(ARCH))
    v = rep["validation"]
    # 5 artefacts (transformers, ORT, OpenVINO, ORT int8, OpenVINO int8) x batches 1/2/4 x seq 8/37/64 (clipped);
    # OpenVINO once more where its CPU default precision is not f32 (bf16 on AVX-512 BF16 / AMX CPUs)
    ov = v["openvino_precision"]
    extra = len(ov["validated"]) - 1
    assert v["passed"] and len(v["checks"]) == (5 + extra) * 3 * 3
    assert ov["validated"][0] == "f32" and ov["cpu_default"] in ov["validated"] and "INFERENCE_PRECISION_HINT" in ov["how_to_pin"]
    assert {c["seq_len"] for c in v["checks"]} == {8, 37, 64}
    fp32 = [c for c in v["checks"] if c["kind"] == "fp32" and c["precision"] in ("", "f32")]
    assert max(c["max_abs_diff"] for c in fp32) < 1e-4  # bf16 runs (OpenVINO's default on AMX hosts) have their own tolerance
    assert all(c["max_abs_diff"] == 0.0 for c in fp32 if c["runtime"] == "transformers")
    dev = v["int8_deviation_from_fp32"]
    assert set(dev) == {"onnxruntime-int8", "openvino-int8"} and all(d["cosine_mean_min"] >= 0.98 for d in dev.values())
    assert rep["files_mb"]["onnx/model_qint8.onnx"] < rep["files_mb"]["onnx/model.onnx"]
    lat = rep["latency"]
    assert lat["device"] == "cpu-ort" and lat["seq_len"] == 64 and lat["measured"]["median_ms"] > 0
    assert lat["measured"]["rounds"] == 3  # lowest-median of 3 passes, as the latency tables are measured
    assert [m["file"] for m in rep["memory"]] == ["onnx/model.onnx", "onnx/model_qint8.onnx"]
    assert rep["memory"][1]["weights_mb"] < rep["memory"][0]["weights_mb"]
    # one summary line per artefact
    assert output.count("✓") == 5 + extra and output.count("9/9 shapes") == 5 + extra and "✗" not in output
    md = (out / "report.md").read_text()
    assert "Numeric validation: passed" in md and ARCH in md


@pytest.mark.slow
def test_hf_folder_reloads_with_identical_outputs(exported):
    from transformers import AutoModel

    out, net, _ = exported
    model = AutoModel.from_pretrained(str(out)).eval()
    ids = torch.randint(1, 60, (3, 21), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0
    with torch.no_grad():
        got = model(ids, mask).last_hidden_state
        ref = net.extract(ARCH)(ids, mask).last_hidden_state
        path = net(TINY.parse(ARCH), ids, mask)  # the supernet's own path: inherited weights, same function
    assert torch.equal(got, ref)
    assert (got - path)[mask.bool()].abs().max().item() < 1e-5


@pytest.mark.slow
def test_onnx_dynamic_axes_and_optimum(exported):
    import onnx
    from optimum.onnxruntime import ORTModelForFeatureExtraction
    from transformers import AutoModel, AutoTokenizer

    out, _, _ = exported
    m = onnx.load(str(out / "onnx" / "model.onnx"))
    assert [i.name for i in m.graph.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in m.graph.output] == ["last_hidden_state"]
    for i in m.graph.input:
        assert all(d.dim_param and not d.dim_value for d in i.type.tensor_type.shape.dim)
    ort_model = ORTModelForFeatureExtraction.from_pretrained(str(out))
    tok = AutoTokenizer.from_pretrained(str(out))
    enc = tok(["the python module is a module", "for the"], padding=True, return_tensors="pt")
    got = ort_model(**enc).last_hidden_state.detach().numpy()
    ref = AutoModel.from_pretrained(str(out))(enc["input_ids"], enc["attention_mask"]).last_hidden_state.detach().numpy()
    keep = enc["attention_mask"].numpy().astype(bool)
    assert got.shape == ref.shape == (2, enc["input_ids"].shape[1], TINY.output_dim)
    assert np.abs(got - ref)[keep].max() < 1e-4


def test_validation_lists_every_failure():
    from nasbert_deploy.errors import ExportError
    from nasbert_deploy.export.validate import Target, raise_failures, shape_grid, validate

    def ref(inputs):
        rng = np.random.default_rng(0)
        return rng.standard_normal((*inputs["input_ids"].shape, 4)).astype(np.float32)

    def off_on_seq_37(inputs):
        y = ref(inputs)
        if inputs["input_ids"].shape[1] == 37:
            y = y.copy()
            y[0, 0, 0] += 0.5  # a real-token position
        return y

    def off_on_padding_only(inputs):
        y = ref(inputs).copy()
        y[inputs["attention_mask"] == 0] += 100.0  # padding positions are not compared
        return y

    targets = [Target("good", ref), Target("bad", off_on_seq_37), Target("pad", off_on_padding_only)]
    checks = validate(ref, targets, shape_grid(64), vocab_size=50)
    assert len(checks) == 3 * 9
    failed = [c for c in checks if not c.passed]
    assert [(c.runtime, c.batch, c.seq_len) for c in failed] == [("bad", 1, 37), ("bad", 2, 37), ("bad", 4, 37)]
    assert all(abs(c.max_abs_diff - 0.5) < 1e-6 for c in failed)
    with pytest.raises(ExportError) as err:
        raise_failures(checks)
    msg = str(err.value)
    assert "3 of 27 checks" in msg and msg.count("(bad, last_hidden_state") == 3 and "batch 4 x seq 37" in msg


def test_padded_inputs_shapes():
    from nasbert_deploy.export.validate import padded_inputs

    d = padded_inputs(4, 37, 100)
    assert d["input_ids"].shape == (4, 37) and d["input_ids"].dtype == np.int64
    assert d["attention_mask"].sum(1).tolist() == [37, 33, 28, 24]
    assert (d["input_ids"][d["attention_mask"] == 0] == 0).all() and d["input_ids"].max() < 100
