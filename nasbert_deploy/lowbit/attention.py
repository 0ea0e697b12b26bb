"""Attention's two activation-by-activation products in 8 bits: Q·Kᵀ and softmax(·)·V, as NNCF quantizes them for
OpenVINO (its MiniLM IR carries FakeQuantize nodes on these MatMuls' inputs).

`quantize_attention` gives every NAS-BERT attention (`model.ops.MultiHeadAttention`) four LSQ activation quantizers
(asymmetric uint8 per tensor, the spec of the Linears' inputs): query, key, value and the softmax probabilities;
they start from the first batch's range and are learned with the rest. In the export (`insert_attention_qdq`, called
by `qdq.rewrite` on the float graph) each input of the two MatMuls gets QuantizeLinear -> DequantizeLinear with the
learned scale and zero point: ONNX Runtime then runs the products on integer kernels, OpenVINO reads FakeQuantize
and runs them in INT8. The MatMuls are found by structure: the float export of a NAS-BERT model has exactly two
MatMuls without a weight per attention (scores, then context), in the attentions' forward order. Other attention
implementations (BERT's own, pruned models) stay float (`quantize_attention` returns 0).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from nasbert_deploy.errors import ExportError
from nasbert_deploy.lowbit.lsq import LsqQuantizer, activation_spec
from nasbert_deploy.model.ops import MultiHeadAttention

ROLES = ("q", "k", "p", "v")  # scores = q @ k (k already transposed), context = p @ v
DEFAULT_BITS = 0  # `quantize --attention-bits` default (0: float); kdlsq latency tables are profiled with it


def attention_modules(model: nn.Module) -> list[tuple[str, MultiHeadAttention]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, MultiHeadAttention)]


def quantize_attention(model: nn.Module, bits: int = 8) -> int:
    """Attach fake quantizers to every NAS-BERT attention of `model` (in place); how many attentions got them."""
    mods = attention_modules(model)
    for _, m in mods:
        m.attn_quant = nn.ModuleDict({r: LsqQuantizer(activation_spec(bits)) for r in ROLES})
    return len(mods)


def quantized_attentions(model: nn.Module) -> list[tuple[str, nn.ModuleDict]]:
    return [(n, m.attn_quant) for n, m in attention_modules(model) if m.attn_quant is not None]


def plain_attention(model: nn.Module) -> None:
    """Remove every attention quantizer of `model` in place (the float graph `insert_attention_qdq` starts from)."""
    for _, m in attention_modules(model):
        m.attn_quant = None


def insert_attention_qdq(g: Any, model: nn.Module) -> int:
    """Put Q/DQ pairs with `model`'s attention step sizes on the inputs of the weightless MatMuls of the float ONNX
    graph `g` (in place); returns how many attentions were quantized. `ExportError` if the graph's weightless MatMuls
    are not two per quantized attention."""
    from onnx import helper, numpy_helper

    quants = quantized_attentions(model)
    if not quants:
        return 0
    weights = {i.name for i in g.initializer}
    made = {o for n in g.node if n.op_type == "Constant" for o in n.output}
    mms = [n for n in g.node if n.op_type == "MatMul" and not any(i in weights or i in made for i in n.input)]
    if len(mms) != 2 * len(quants):
        raise ExportError(f"expected 2 attention MatMuls per quantized attention ({2 * len(quants)}), found {len(mms)} "
                          "weightless MatMuls in the ONNX graph; the exporter changed attention")
    plan: dict[int, list[tuple[int, LsqQuantizer, str]]] = {}
    for j, (name, aq) in enumerate(quants):
        scores, context = mms[2 * j], mms[2 * j + 1]
        plan[id(scores)] = [(0, aq["q"], f"{name}.q"), (1, aq["k"], f"{name}.k")]  # type: ignore[list-item]
        plan[id(context)] = [(0, aq["p"], f"{name}.p"), (1, aq["v"], f"{name}.v")]  # type: ignore[list-item]
    nodes = []
    for node in g.node:
        for slot, q, prefix in plan.get(id(node), []):
            scale = np.array(q.scale().reshape(()).item(), dtype=np.float32)
            zero = np.array(int(q.zero_point.reshape(()).item()), dtype=np.uint8)
            g.initializer.extend([numpy_helper.from_array(scale, f"{prefix}.a_scale"),
                                  numpy_helper.from_array(zero, f"{prefix}.a_zero")])
            args = [f"{prefix}.a_scale", f"{prefix}.a_zero"]
            nodes.append(helper.make_node("QuantizeLinear", [node.input[slot], *args], [f"{prefix}.a_q"], name=f"{prefix}.q"))
            nodes.append(helper.make_node("DequantizeLinear", [f"{prefix}.a_q", *args], [f"{prefix}.a_dq"], name=f"{prefix}.dq"))
            node.input[slot] = f"{prefix}.a_dq"
        nodes.append(node)
    del g.node[:]
    g.node.extend(nodes)
    return len(quants)
