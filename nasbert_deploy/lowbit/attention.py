"""Attention's score product Q·Kᵀ in 8 bits, placed as NNCF places it for OpenVINO.

NNCF's IR of MiniLM quantizes the query and the key right after their projections (before the heads' reshape and
transpose), on a symmetric signed grid, and leaves softmax·V float; OpenVINO then runs the fused attention
subgraph in int8. `quantize_attention` gives every NAS-BERT attention (`model.ops.MultiHeadAttention`) two LSQ
quantizers of that kind (int8 [-127, 127] per tensor, zero point 0, step size from the first batch's largest
|value|, then learned with the rest) on the query and the key. Per-tensor quantization commutes with reshapes and
transposes, so the model computes exactly what the export does.

In the export (`insert_attention_qdq`, called by `qdq.rewrite` on the float graph), each input of the score MatMul
is followed back through Reshape / Transpose nodes to the projection's output, which gets QuantizeLinear ->
DequantizeLinear with the learned scale. The score MatMuls are found by structure: the float export of a NAS-BERT
model has two MatMuls without a weight per attention (scores, then context), in forward order; any other count
is an `ExportError`. Other attention implementations (BERT's own, pruned models) stay float
(`quantize_attention` returns 0).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from nasbert_deploy.errors import ExportError
from nasbert_deploy.lowbit.lsq import LsqQuantizer, signed_activation_spec
from nasbert_deploy.model.ops import MultiHeadAttention

ROLES = ("q", "k")  # the score MatMul's inputs: q @ k (k transposed)
DEFAULT_BITS = 0  # `QuantizeConfig.attention_bits`' library default (0: float)
MOVES = ("Reshape", "Transpose", "Squeeze", "Unsqueeze")  # ops that only move values: the Q/DQ goes before them


def attention_modules(model: nn.Module) -> list[tuple[str, MultiHeadAttention]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, MultiHeadAttention)]


def quantize_attention(model: nn.Module, bits: int = 8) -> int:
    """Attach query and key quantizers to every NAS-BERT attention of `model` (in place); how many got them."""
    mods = attention_modules(model)
    for _, m in mods:
        m.attn_quant = nn.ModuleDict({r: LsqQuantizer(signed_activation_spec(bits)) for r in ROLES})
    return len(mods)


def quantized_attentions(model: nn.Module) -> list[tuple[str, nn.ModuleDict]]:
    return [(n, m.attn_quant) for n, m in attention_modules(model) if m.attn_quant is not None]


def plain_attention(model: nn.Module) -> None:
    """Remove every attention quantizer of `model` in place (the float graph `insert_attention_qdq` starts from)."""
    for _, m in attention_modules(model):
        m.attn_quant = None


def _source(g: Any, tensor: str, producers: dict[str, Any], consumers: dict[str, list[Any]]) -> str:
    """`tensor` followed back through value-moving ops that nothing else reads: where its Q/DQ goes."""
    while True:
        node = producers.get(tensor)
        if node is None or node.op_type not in MOVES or len(consumers.get(node.input[0], [])) != 1:
            return tensor
        tensor = node.input[0]


def insert_attention_qdq(g: Any, model: nn.Module) -> int:
    """Put Q/DQ pairs with `model`'s query and key step sizes on the inputs of the score MatMuls of the float ONNX
    graph `g` (in place, before their reshapes); returns how many attentions were quantized. `ExportError` if the
    graph's weightless MatMuls are not two per quantized attention."""
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
    producers = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    after: dict[str, list[Any]] = {}  # tensor -> Q/DQ nodes to insert right after its producer
    rename: dict[str, str] = {}  # tensor -> its dequantized copy, for the one consumer on the path
    for j, (name, aq) in enumerate(quants):
        scores = mms[2 * j]
        for slot, role in enumerate(ROLES):
            q: LsqQuantizer = aq[role]  # type: ignore[assignment]
            x = _source(g, scores.input[slot], producers, consumers)
            p = f"{name}.{role}"
            scale = np.array(q.scale().reshape(()).item(), dtype=np.float32)
            g.initializer.extend([numpy_helper.from_array(scale, f"{p}.a_scale"),
                                  numpy_helper.from_array(np.array(0, dtype=np.int8), f"{p}.a_zero")])
            args = [f"{p}.a_scale", f"{p}.a_zero"]
            after[x] = [helper.make_node("QuantizeLinear", [x, *args], [f"{p}.a_q"], name=f"{p}.q"),
                        helper.make_node("DequantizeLinear", [f"{p}.a_q", *args], [f"{p}.a_dq"], name=f"{p}.dq")]
            rename[x] = f"{p}.a_dq"
    nodes = []
    graph_inputs = {i.name for i in g.input}
    for x in [t for t in after if t in graph_inputs]:  # (not in NAS-BERT graphs; kept general)
        nodes.extend(after.pop(x))
    for node in g.node:
        for k, i in enumerate(node.input):
            if i in rename and node.op_type != "QuantizeLinear":
                node.input[k] = rename[i]
        nodes.append(node)
        for o in node.output:
            nodes.extend(after.pop(o, []))
    del g.node[:]
    g.node.extend(nodes)
    return len(quants)
