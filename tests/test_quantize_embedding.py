"""KDLSQ's word-embedding table: per-row fake quantization, and its integer ONNX lookup on real runtimes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import make_tiny_teacher
from test_quantize import EXAMPLE, _openvino_checks, _ort, bert_classifier, fake_quantized, nasbert_classifier
from torch import nn

from nasbert_deploy.export.validate import padded_inputs
from nasbert_deploy.lowbit.embedding import QuantEmbedding, pack_rows, quant_embeddings, quantize_embeddings
from nasbert_deploy.lowbit.lsq import bake_weights
from nasbert_deploy.lowbit.qdq import export_quantized_onnx, float_copy
from nasbert_deploy.quantize.check import check_logits, torch_runner

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, one_thread):
    return make_tiny_teacher(tmp_path_factory.mktemp("qe") / "tiny")


def test_rows_are_on_their_own_grid():
    torch.manual_seed(0)
    emb = nn.Embedding(50, 12)
    with torch.no_grad():
        emb.weight[3] *= 40  # one row far larger than the rest: its own step size keeps the others fine
    q = QuantEmbedding.from_embedding(emb, 4)
    table = q.quantized_weight().detach()
    steps = q.w_quant.scale()
    ints = table / steps[:, None]
    assert torch.allclose(ints, ints.round(), atol=1e-4) and ints.min() >= -8 and ints.max() <= 7
    assert steps[3] > 20 * steps.median()
    ids = torch.tensor([[3, 0, 49]])
    torch.testing.assert_close(q(ids), table[ids])
    rel = (table - emb.weight).norm(dim=1) / emb.weight.norm(dim=1)
    assert float(rel.detach().max()) < 0.2  # 4 bits per row keep every row's direction


def test_pack_rows_layout_low_nibble_first_and_odd_width():
    q = np.array([[-8, 7, 0], [1, -1, 3]])
    p = pack_rows(q)
    assert p.shape == (2, 2) and p.dtype == np.uint8
    assert p[0, 0] == (0 | 15 << 4) and p[0, 1] == (8 | 8 << 4)  # -8, 7 | 0, padding
    assert p[1, 0] == (9 | 7 << 4) and p[1, 1] == (11 | 8 << 4)


def test_the_input_table_is_found_in_bert_and_nasbert(tiny_dir):
    for model, name in ((bert_classifier(tiny_dir), "bert.embeddings.word_embeddings"),
                        (nasbert_classifier(), "nasbert.embeddings.word")):
        assert quantize_embeddings(model, 8) == name
        assert [n for n, _ in quant_embeddings(model)] == [name]
        with pytest.raises(ValueError):
            quantize_embeddings(model, 8)
        plain = float_copy(model)
        assert not quant_embeddings(plain) and isinstance(plain.get_input_embeddings(), nn.Embedding)
        torch.testing.assert_close(plain.get_input_embeddings().weight, model.get_input_embeddings().quantized_weight())


def _float_tables(path, vocab=1000):
    import onnx
    from onnx import numpy_helper

    return [i.name for i in onnx.load(str(path)).graph.initializer
            if numpy_helper.to_array(i).dtype == np.float32 and numpy_helper.to_array(i).shape[:1] == (vocab,)
            and numpy_helper.to_array(i).ndim == 2 and numpy_helper.to_array(i).shape[1] > 1]


@pytest.mark.parametrize(("which", "bits"), [("bert", 8), ("bert", 4), ("nasbert", 8), ("nasbert", 4)])
def test_quantized_table_exports_exactly_and_smaller(tiny_dir, tmp_path, which, bits):
    def build():
        return bert_classifier(tiny_dir) if which == "bert" else nasbert_classifier()

    # weights only (float activations, float compute for 4 bit): the export must equal the fake quantization to float
    # summation order, which 8-bit activations would blur (a rounding flip moves a logit by ~1e-4)
    plain = fake_quantized(build(), bits, act_bits=None)
    path_plain = export_quantized_onnx(plain, tmp_path / "plain.onnx", EXAMPLE, bits, accuracy_level=0)
    model = build()
    quantize_embeddings(model, bits)
    fake_quantized(model, bits, act_bits=None)
    bake_weights(model)
    path = export_quantized_onnx(model, tmp_path / "emb.onnx", EXAMPLE, bits, accuracy_level=0)
    assert _float_tables(path_plain) and not _float_tables(path)  # the float table is gone
    d = model.get_input_embeddings().embedding_dim
    saved = path_plain.stat().st_size - path.stat().st_size
    # per row: 4 bytes a value -> 1 byte (8 bit) or half a byte (4 bit), plus its float step size
    assert saved >= 0.95 * 1000 * (4 * d - (d if bits == 8 else -(-d // 2)) - 4)
    # the lookup is the fake quantization's own float product: ORT at float compute matches to float summation
    checks = check_logits(torch_runner(model), {"ort": _ort(path)}, 64, 1000, rtol=3e-5)
    checks += _openvino_checks(model, path)
    assert all(c.passed for c in checks), [c.describe() for c in checks if not c.passed]
    inputs = padded_inputs(2, 20, 1000)
    assert np.abs(torch_runner(model)(inputs) - torch_runner(plain)(inputs)).max() > 1e-6  # the table's quantization counts
