"""The word-embedding table, quantized: LSQ fake quantization per token row, and its integer ONNX form.

In a BERT-class classifier the word embeddings are most of the file (MiniLM: 30,522 x 384 floats, 47 of 92 MB;
a `minilm-wide` NAS student at hidden 256, which keeps the 384-wide table, 47 of 56 MB): quantizing only the
Linears leaves a 4-bit model barely smaller than fp32. The table is a lookup (Gather), not a matrix product, so
no integer kernel is involved: each looked-up row is dequantized on the fly, q * s_row, which costs a few
multiplies per token.

- PyTorch: `QuantEmbedding` fake-quantizes the table with an `LsqQuantizer` per row (symmetric, the weights'
  grid of `lsq.weight_spec`, least-error initial step sizes, learned with the LSQ gradient like every weight).
- ONNX (`rewrite_gather`): the float Gather becomes Gather(integers) -> Cast -> Mul(Gather(row steps)).
  8 bit: an int8 table. 4 bit (and fewer): two values per byte (value + 8: low nibble first), unpacked with
  integer Div / Mod, which every runtime has (ONNX Runtime, OpenVINO). The product q * s is the fake
  quantization's own float32 product, so the export equals the PyTorch model exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from nasbert_deploy.lowbit.lsq import LsqQuantizer, weight_spec


class QuantEmbedding(nn.Embedding):
    """`nn.Embedding` looking up rows of the fake-quantized table (one learned step size per row)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, bits: int, padding_idx: int | None = None) -> None:
        super().__init__(num_embeddings, embedding_dim, padding_idx=padding_idx)
        self.w_quant = LsqQuantizer(weight_spec(bits), num_embeddings)

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, bits: int) -> QuantEmbedding:
        q = cls(emb.num_embeddings, emb.embedding_dim, bits, emb.padding_idx)
        q.to(emb.weight.device)
        with torch.no_grad():
            q.weight.copy_(emb.weight)
        q.w_quant.initialize(q.weight)
        return q

    def quantized_weight(self) -> torch.Tensor:
        return self.w_quant(self.weight)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(ids, self.quantized_weight(), self.padding_idx)


def quantize_embeddings(model: nn.Module, bits: int) -> str | None:
    """Replace `model`'s input (word) embedding table in place by a `QuantEmbedding`; its qualified name, or None
    when the model has no `nn.Embedding` input table (`get_input_embeddings`)."""
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    if not isinstance(emb, nn.Embedding):
        return None
    if isinstance(emb, QuantEmbedding):
        raise ValueError("the input embeddings are already quantized")
    name = next(n for n, m in model.named_modules() if m is emb)
    model.set_submodule(name, QuantEmbedding.from_embedding(emb, bits))
    return name


def quant_embeddings(model: nn.Module) -> list[tuple[str, QuantEmbedding]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QuantEmbedding)]


def plain_embeddings(model: nn.Module) -> None:
    """Replace every `QuantEmbedding` of `model` in place by an `nn.Embedding` holding the dequantized table."""
    for name, q in quant_embeddings(model):
        emb = nn.Embedding(q.num_embeddings, q.embedding_dim, padding_idx=q.padding_idx)
        with torch.no_grad():
            emb.weight.copy_(q.quantized_weight())
        model.set_submodule(name, emb)


def pack_rows(q: np.ndarray) -> np.ndarray:
    """Signed integers q (rows, d) in [-8, 7] -> (rows, ceil(d / 2)) uint8: value + 8, element 2j in the low nibble,
    2j + 1 in the high one (an odd d is padded with one zero)."""
    u = (q.astype(np.int16) + 8).astype(np.uint8)
    if u.shape[1] % 2:
        u = np.concatenate([u, np.full((u.shape[0], 1), 8, np.uint8)], axis=1)
    return (u[:, 0::2] | (u[:, 1::2] << 4)).astype(np.uint8)


def rewrite_gather(g: Any, node: Any, q: QuantEmbedding, prefix: str, nodes: list[Any]) -> None:
    """Append to `nodes` the integer form of the float `node` (Gather(table, ids)) of `g` for the table of `q`."""
    from onnx import TensorProto, helper, numpy_helper

    ids, out = node.input[1], node.output[0]
    ints = q.w_quant.integers(q.weight).numpy()
    scale = q.w_quant.scale().numpy().astype(np.float32).reshape(-1, 1)
    d = ints.shape[1]
    g.initializer.append(numpy_helper.from_array(scale, f"{prefix}.row_scale"))
    nodes.append(helper.make_node("Gather", [f"{prefix}.row_scale", ids], [f"{prefix}.s"], axis=0))
    if q.w_quant.spec.bits == 8:
        g.initializer.append(numpy_helper.from_array(ints.astype(np.int8), f"{prefix}.table_int8"))
        nodes.append(helper.make_node("Gather", [f"{prefix}.table_int8", ids], [f"{prefix}.qi"], axis=0))
        nodes.append(helper.make_node("Cast", [f"{prefix}.qi"], [f"{prefix}.qf"], to=TensorProto.FLOAT))
    else:
        g.initializer.extend([
            numpy_helper.from_array(pack_rows(ints), f"{prefix}.table_uint4x2"),
            numpy_helper.from_array(np.array(16, np.int32), f"{prefix}.sixteen"),
            numpy_helper.from_array(np.array(8.0, np.float32), f"{prefix}.eight"),
            numpy_helper.from_array(np.array([d], np.int64), f"{prefix}.d"),
            numpy_helper.from_array(np.array([0], np.int64), f"{prefix}.zero"),
            numpy_helper.from_array(np.array([-1], np.int64), f"{prefix}.neg1"),
            numpy_helper.from_array(np.array([d + d % 2], np.int64), f"{prefix}.width"),
        ])
        p = prefix
        nodes.extend([
            helper.make_node("Gather", [f"{p}.table_uint4x2", ids], [f"{p}.packed"], axis=0),
            helper.make_node("Cast", [f"{p}.packed"], [f"{p}.packed32"], to=TensorProto.INT32),
            helper.make_node("Mod", [f"{p}.packed32", f"{p}.sixteen"], [f"{p}.lo"]),
            helper.make_node("Div", [f"{p}.packed32", f"{p}.sixteen"], [f"{p}.hi"]),
            helper.make_node("Unsqueeze", [f"{p}.lo", f"{p}.neg1"], [f"{p}.lo1"]),
            helper.make_node("Unsqueeze", [f"{p}.hi", f"{p}.neg1"], [f"{p}.hi1"]),
            helper.make_node("Concat", [f"{p}.lo1", f"{p}.hi1"], [f"{p}.pairs"], axis=-1),  # (..., d/2, 2)
            helper.make_node("Shape", [ids], [f"{p}.ids_shape"]),
            helper.make_node("Concat", [f"{p}.ids_shape", f"{p}.width"], [f"{p}.out_shape"], axis=0),
            helper.make_node("Reshape", [f"{p}.pairs", f"{p}.out_shape"], [f"{p}.u"]),  # (..., d + d % 2)
            helper.make_node("Slice", [f"{p}.u", f"{p}.zero", f"{p}.d", f"{p}.neg1"], [f"{p}.u_d"]),
            helper.make_node("Cast", [f"{p}.u_d"], [f"{p}.uf"], to=TensorProto.FLOAT),
            helper.make_node("Sub", [f"{p}.uf", f"{p}.eight"], [f"{p}.qf"]),
        ])
    nodes.append(helper.make_node("Mul", [f"{prefix}.qf", f"{prefix}.s"], [out], name=node.name))
