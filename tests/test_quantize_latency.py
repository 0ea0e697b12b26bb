"""Latency of KDLSQ exports: the kdlsq devices, the profiler's quantized items (`lowbit.item`), and `quantize`
measuring its exports on those devices and predicting them with their tables."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch
from helpers import TINY, make_tokenizer_dir, tiny_table, write_word_task
from typer.testing import CliRunner

from nasbert_deploy.cli.app import app
from nasbert_deploy.devices import load_device
from nasbert_deploy.lowbit.item import kdlsq_onnx
from nasbert_deploy.model.memory import weight_bytes
from nasbert_deploy.profiling.cache import ExportCache
from nasbert_deploy.profiling.items import op_items, reference_item
from nasbert_deploy.quantize.latency import check_devices, default_devices
from nasbert_deploy.quantize.run import quantize
from nasbert_deploy.quantize.train import QuantizeConfig
from nasbert_deploy.student.tasks import load_task

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()


def _ops(path: str) -> set[str]:
    return {n.op_type for n in onnx.load(path).graph.node}


@pytest.mark.parametrize("bits", [8, 4])
def test_every_item_of_a_space_exports_as_quantize_writes_it(tmp_path, bits):
    """Operations, boundaries, embeddings, head and a whole model: integer graphs that run in ONNX Runtime and
    compute what the fake-quantized module computes."""
    import onnxruntime as ort

    for it in [*op_items(TINY), reference_item(TINY)]:
        ex, m = it.example_inputs(TINY), it.build(TINY)
        p = kdlsq_onnx(m, ex, it.output_names[0], tmp_path / f"{it.key.replace(':', '_')}.onnx", bits)
        sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        got = sess.run(None, {i.name: ex[i.name].numpy() for i in sess.get_inputs()})[0]
        with torch.no_grad():
            want = m(*ex.values()).numpy()
        assert np.abs(got - want).max() <= 0.05 * np.abs(want).max() + 1e-6, it.key
        ops = _ops(str(p))
        if it.kind == "op" and it.op in ("mha", "ffn"):
            assert ("QuantizeLinear" in ops) if bits == 8 else ("MatMulNBits" in ops), (it.key, ops)
        if it.kind == "embedding":  # the word table is an integer Gather, dequantized per row
            assert "Cast" in ops and "Gather" in ops


def test_kdlsq_devices_have_their_own_cache_and_precision():
    cache = ExportCache.at("/tmp/never-written")
    it = op_items(TINY)[0]
    ptq, kd8 = load_device("cpu-ort-int8"), load_device("cpu-ort-kdlsq8")
    assert ptq.kdlsq_bits is None and kd8.kdlsq_bits == 8 and load_device("cpu-openvino-kdlsq4").kdlsq_bits == 4
    assert cache.folder(it, kd8, TINY).parent.name == "onnxruntime-cpu-int8-kdlsq"
    assert cache.folder(it, ptq, TINY).parent.name == "onnxruntime-cpu-int8"
    assert cache.folder(it, kd8, TINY).name != cache.folder(it, ptq, TINY).name
    # memory: int4 weights take about half of int8's
    arch = TINY.parse(f"{TINY.hidden_sizes[-1]}:mha,ffn|{TINY.hidden_sizes[-1]}:ffn,mha")
    assert weight_bytes(TINY, arch, "int4") < weight_bytes(TINY, arch, "int8") < weight_bytes(TINY, arch, "fp32")
    assert default_devices(8, ["onnx"]) == ["cpu-ort-kdlsq8"]
    assert default_devices(4, ["onnx", "openvino"]) == ["cpu-openvino-kdlsq4", "cpu-ort-kdlsq4"]
    assert default_devices(2, []) == []


@pytest.mark.parametrize("names,bits,formats,needle", [
    (["cpu-ort-int8"], 8, ["onnx"], "runs int8 ptq models, not --bits 8's; devices for this request: cpu-ort-kdlsq8"),
    (["cpu-ort-kdlsq4"], 8, ["onnx"], "runs 4-bit KDLSQ exports"),
    (["cpu-openvino-kdlsq8"], 8, ["onnx"], "needs --format openvino"),
    (["cpu-ort-kdlsq8"], 2, [], "devices for this request: none"),
])
def test_devices_that_do_not_run_the_request_are_refused(names, bits, formats, needle):
    from nasbert_deploy.errors import ExportError

    with pytest.raises(ExportError, match=needle.replace("(", r"\(")):
        check_devices(names, bits, formats)


def test_export_refuses_a_kdlsq_device(tmp_path):
    r = runner.invoke(app, ["export", "--arch", "64:mha,ffn,id|64:mha,id,id|64:ffn,id,id", "--device", "cpu-ort-kdlsq8",
                            "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "nasbert-deploy quantize --bits 8 --device cpu-ort-kdlsq8" in r.output, r.output
    assert not (tmp_path / "x").exists()



def test_quantize_predicts_a_nasbert_classifier_with_the_device_table(tmp_path, monkeypatch):
    """A NAS-BERT classifier's export is measured on the device and predicted by the device's table (here a made-up
    table in ./profiles/local): the report carries both and their ratio, as an export report does."""
    from transformers import AutoTokenizer

    from nasbert_deploy.model.modeling import NasBertConfig, NasBertForSequenceClassification
    from nasbert_deploy.model.remote_code import write_remote_code

    tok = AutoTokenizer.from_pretrained(str(make_tokenizer_dir(tmp_path / "tok")))
    arch = f"{TINY.hidden_sizes[0]}:mha,ffn|{TINY.hidden_sizes[-1]}:mha,ffn"
    torch.manual_seed(0)
    cfg = NasBertConfig.from_arch(arch, TINY, num_labels=3, id2label=dict(enumerate("xyz")),
                                  label2id={c: i for i, c in enumerate("xyz")})
    clf = NasBertForSequenceClassification(cfg)
    clf.save_pretrained(tmp_path / "clf")
    tok.save_pretrained(tmp_path / "clf")
    write_remote_code(tmp_path / "clf")
    monkeypatch.chdir(tmp_path)
    table = tiny_table(tmp_path / "profiles" / "local" / "cpu-ort-kdlsq8.json")
    assert table.is_file()
    train = load_task(write_word_task(tmp_path / "train.jsonl", 24, 0))
    valid = load_task(write_word_task(tmp_path / "valid.jsonl", 8, 1))
    spec = replace(load_device("cpu-ort-kdlsq8"), seq_lens=(32, 64))
    rep = quantize(tmp_path / "clf", train, valid, tmp_path / "q", QuantizeConfig(bits=8, steps=1, batch_size=8, max_len=16),
                   ("onnx",), devices=[spec], latency_seq_len=32)
    (lat,) = rep["latency"]
    assert lat["device"] == "cpu-ort-kdlsq8" and lat["seq_len"] == 32 and lat["predicted_ms"] > 0
    assert lat["measured"]["median_ms"] > 0
    assert lat["measured_over_predicted"] == pytest.approx(lat["measured"]["median_ms"] / lat["predicted_ms"])
    saved = json.loads((tmp_path / "q" / "quantize_report.json").read_text())
    assert saved["latency"][0]["predicted_ms"] == lat["predicted_ms"]
    assert os.path.isfile(tmp_path / "q" / "onnx" / "model_q8.onnx")
