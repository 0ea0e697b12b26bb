"""The fake-quantized model as ONNX graphs that run on real low-bit kernels, with the learned scales.

The model is exported once in float (`runtimes.convert.export_onnx`, weights already on their quantization grid),
and each MatMul / Gemm whose constant weight is a QuantLinear's (found by content: the exporter renames and
transposes weights) is rewritten:

- 8 bit, `form="integer"` (the default): input [-> Mul(1 / s): SmoothQuant's per-channel divisor, `lowbit.smooth`]
  -> QuantizeLinear(s_a, z_a: uint8) -> MatMulIntegerToFloat (com.microsoft: u8 x s8, int32 accumulation, scaled by
  s_a * s_w per output channel, the float bias added in the kernel) <- int8 weight (K, N). That is the node ONNX
  Runtime makes of a QDQ MatMul anyway, but with the bias inside: a QDQ graph leaves one float Add per Linear after
  it (ORT fuses only Gemm's int32 bias, into QGemm, and not when the output also feeds a residual). On MiniLM-L6 as
  a Hugging Face BERT graph that Add was the whole difference to ORT's dynamic INT8 (1.05x -> 1.00x); NAS-BERT's
  Gemms mostly had it fused already as QGemm (the integer form ~1% faster there), and the float bias keeps them
  closer to the fake-quantized model than QGemm's int32 bias at s_a * s_w (docs/quantization.md).
  OpenVINO's ONNX reader builds the same INT8 graph from either form (FakeQuantize + u8 FullyConnected).
- 8 bit, `form="qdq"`: standard ONNX operators only, for runtimes without the com.microsoft domain: input [-> Mul]
  -> QuantizeLinear -> DequantizeLinear -> MatMul / Gemm <- DequantizeLinear(int8 weight, per-output-channel scales).
  ORT runs it as MatMulIntegerToFloat + a float bias Add (3-D tokens) or QGemm (2-D tokens: NAS-BERT's Gemms, their
  bias DequantizeLinear(int32, s_a * s_w)). A Gemm whose output also feeds the next Linears' QuantizeLinear and a
  float consumer (a residual) is bias-less with a float Add after it, since ORT fuses DQ -> Gemm only when its
  output feeds no Q or only Qs.
- Either 8-bit form: one QuantizeLinear per distinct input tensor (Linears that read one tensor share a quantizer,
  `lsq.input_groups`).
- 4 bit (Gemm first rewritten as MatMul + Add, `gemm_to_matmul`): input -> Q/DQ (8-bit activations as
  trained) -> MatMulNBits (com.microsoft; uint4 weights with zero
  point 8, i.e. the learned integers in [-8, 7], the per-channel step size repeated in every block of
  `block_size` rows). OpenVINO reads MatMulNBits as u4 weight compression (FullyConnected with u4 weights).

`QuantizeLinear` rounds half to even and saturates like `LsqQuantizer`, with the same float32 scale, so the
graphs compute what the PyTorch fake quantization computes up to float summation order (and a rare rounding
flip where x / s lands on .5).
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nasbert_deploy.errors import ExportError
from nasbert_deploy.fileio import atomic_path
from nasbert_deploy.lowbit import ONNX_FORMS
from nasbert_deploy.lowbit.attention import insert_attention_qdq, plain_attention
from nasbert_deploy.lowbit.embedding import plain_embeddings, quant_embeddings, rewrite_gather
from nasbert_deploy.lowbit.lsq import QuantLinear, quant_linears
from nasbert_deploy.runtimes.convert import FirstOutput, export_onnx, gemm_to_matmul

MS_DOMAIN = "com.microsoft"


def _key(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a, dtype=np.float32)
    return f"{a.shape}:{hashlib.sha1(a.tobytes()).hexdigest()}"


def float_copy(model: nn.Module) -> nn.Module:
    """A plain-Linear copy of a fake-quantized model whose weights are the dequantized ones (what gets exported);
    attention's quantizers (`lowbit.attention`) removed."""
    import copy

    plain = copy.deepcopy(model).eval()
    for name, q in list(quant_linears(plain)):
        lin = nn.Linear(q.in_features, q.out_features, q.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(q.quantized_weight())
            if q.bias is not None:
                lin.bias.copy_(q.bias)
        plain.set_submodule(name, lin)
    plain_embeddings(plain)
    plain_attention(plain)  # float attention: `rewrite` puts its Q/DQ pairs back (`attention.insert_attention_qdq`)
    return plain


def _block_size(k: int) -> int:
    for b in (128, 64, 32, 16):
        if k % b == 0:
            return b
    return 16  # K padded with zero rows up to a multiple of 16


def pack_nbits(q: np.ndarray, block_size: int) -> np.ndarray:
    """Signed 4-bit integers q (K, N) in [-8, 7] -> MatMulNBits' B (N, K_blocks, block_size / 2) uint8: value + 8,
    two per byte, the lower row in the low nibble; K padded with zeros (value 8) to whole blocks."""
    k, n = q.shape
    blocks = -(-k // block_size)
    u = np.full((n, blocks * block_size), 8, dtype=np.uint8)
    u[:, :k] = (q.T + 8).astype(np.uint8)
    u = u.reshape(n, blocks, block_size // 2, 2)
    return (u[..., 0] | (u[..., 1] << 4)).astype(np.uint8)


def _act_quantize(g: Any, x: str, q: QuantLinear, prefix: str, new_nodes: list[Any], cache: dict[Any, Any]
                  ) -> tuple[str, str, str]:
    """[Mul(x, 1 / s) where the input is smoothed (`lowbit.smooth`) ->] QuantizeLinear of tensor `x` with `q`'s
    activation scale and zero point: (the uint8 tensor, its scale, its zero point); one chain per (tensor, scale,
    zero point, s)."""
    from onnx import helper, numpy_helper

    a = q.a_quant
    assert a is not None
    scale = np.float32(a.scale().reshape(()).item())
    zp = np.uint8(int(a.zero_point.reshape(()).item()))
    inv = None if a.smooth is None else (1.0 / a.smooth).detach().numpy().astype(np.float32)  # as LsqQuantizer.smoothed
    key = (x, scale.tobytes(), int(zp), None if inv is None else inv.tobytes())
    if key in cache:
        return cache[key]
    if inv is not None:
        g.initializer.append(numpy_helper.from_array(inv, f"{prefix}.a_inv_smooth"))
        new_nodes.append(helper.make_node("Mul", [x, f"{prefix}.a_inv_smooth"], [f"{prefix}.a_smoothed"],
                                          name=f"{prefix}.smooth"))
        x = f"{prefix}.a_smoothed"
    g.initializer.extend([numpy_helper.from_array(np.array(scale, dtype=np.float32), f"{prefix}.a_scale"),
                          numpy_helper.from_array(np.array(zp, dtype=np.uint8), f"{prefix}.a_zero")])
    new_nodes.append(helper.make_node("QuantizeLinear", [x, f"{prefix}.a_scale", f"{prefix}.a_zero"], [f"{prefix}.a_q"],
                                      name=f"{prefix}.quantize"))
    cache[key] = (f"{prefix}.a_q", f"{prefix}.a_scale", f"{prefix}.a_zero")
    return cache[key]


def _add_act_qdq(g: Any, x: str, q: QuantLinear, prefix: str, new_nodes: list[Any], cache: dict[Any, Any]) -> str:
    """`_act_quantize` followed by its DequantizeLinear (the QDQ form); one pair per quantized tensor."""
    from onnx import helper

    xq, scale, zero = _act_quantize(g, x, q, prefix, new_nodes, cache)
    if ("dq", xq) not in cache:
        base = xq.removesuffix(".a_q")
        new_nodes.append(helper.make_node("DequantizeLinear", [xq, scale, zero], [f"{base}.a_dq"], name=f"{base}.dequantize"))
        cache[("dq", xq)] = f"{base}.a_dq"
    return cache[("dq", xq)]


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _plain_gemm(node: Any) -> bool:
    """Gemm(A, B, C) = A @ B(^T) + C: how torch exports a Linear on 2-D tokens."""
    a = _attrs(node)
    return not a.get("transA", 0) and a.get("alpha", 1.0) == 1.0 and a.get("beta", 1.0) == 1.0


def _match(node: Any, inits: dict[str, Any], by_key: dict[str, tuple[str, QuantLinear]]) -> tuple[Any, bool]:
    """((name, QuantLinear), transB) when `node` is a MatMul / plain Gemm whose constant weight is a QuantLinear's."""
    from onnx import numpy_helper

    if node.op_type == "MatMul" and node.input[1] in inits:
        return by_key.get(_key(numpy_helper.to_array(inits[node.input[1]]))), False
    if node.op_type == "Gemm" and node.input[1] in inits and _plain_gemm(node):
        trans_b = bool(_attrs(node).get("transB", 0))
        w = numpy_helper.to_array(inits[node.input[1]])
        return by_key.get(_key(w.T if trans_b else w)), trans_b
    return None, False


def _int32_bias(g: Any, bias: str | None, q: QuantLinear, w_scale: np.ndarray, inits: dict[str, Any], prefix: str,
                new_nodes: list[Any]) -> list[str]:
    """Gemm's bias (the initializer `bias`, or none) as DequantizeLinear(int32, s_a * s_w): ONNX Runtime fuses Gemm
    into its integer QGemm only when the bias is quantized too. Rounding the bias to that grid moves it by at most
    s_a * s_w / 2 (~1e-5 here)."""
    from onnx import helper, numpy_helper

    if q.a_quant is None or (bias and bias not in inits):
        return [bias] if bias else []
    # a zero bias where there is none: ONNX Runtime left a bias-less Gemm(DQ, DQ) in float here
    b = numpy_helper.to_array(inits[bias]).astype(np.float64) if bias else np.zeros(len(w_scale))
    s = (np.float32(q.a_quant.scale().reshape(()).item()) * w_scale).astype(np.float32)  # (N,)
    b_int = np.clip(np.round(b / s), -(2**31), 2**31 - 1).astype(np.int32)
    g.initializer.extend([numpy_helper.from_array(b_int, f"{prefix}.b_int32"), numpy_helper.from_array(s, f"{prefix}.b_scale"),
                          numpy_helper.from_array(np.zeros_like(b_int), f"{prefix}.b_zero")])
    new_nodes.append(helper.make_node("DequantizeLinear", [f"{prefix}.b_int32", f"{prefix}.b_scale", f"{prefix}.b_zero"],
                                      [f"{prefix}.b_dq"], name=f"{prefix}.b_dequantize", axis=0))
    return [f"{prefix}.b_dq"]


def _weight_ints(g: Any, w_int: np.ndarray, scale: np.ndarray, prefix: str) -> list[str]:
    """The int8 weight `w_int`, its per-output-channel `scale` and zero points 0 as initializers; their names."""
    from onnx import numpy_helper

    names = [f"{prefix}.w_int8", f"{prefix}.w_scale", f"{prefix}.w_zero"]
    g.initializer.extend([numpy_helper.from_array(np.ascontiguousarray(w_int), names[0]),
                          numpy_helper.from_array(scale, names[1]),
                          numpy_helper.from_array(np.zeros(len(scale), dtype=np.int8), names[2])])
    return names


def _weight_dq(g: Any, w_int: np.ndarray, scale: np.ndarray, axis: int, prefix: str, new_nodes: list[Any]) -> str:
    """DequantizeLinear of the int8 weight `w_int` with per-output-channel `scale` along `axis`, zero point 0."""
    from onnx import helper

    new_nodes.append(helper.make_node("DequantizeLinear", _weight_ints(g, w_int, scale, prefix), [f"{prefix}.w_dq"],
                                      name=f"{prefix}.w_dequantize", axis=axis))
    return f"{prefix}.w_dq"


def _bias_add(node: Any, consumers: dict[str, list[Any]], inits: dict[str, Any], n: int) -> Any:
    """The Add that is the MatMul's only consumer and adds a constant (N,) bias (how torch exports a Linear on
    3-D tokens), or None."""
    users = consumers.get(node.output[0], [])
    if len(users) != 1 or users[0].op_type != "Add":
        return None
    other = [i for i in users[0].input if i != node.output[0]]
    if len(other) != 1 or other[0] not in inits or tuple(inits[other[0]].dims) != (n,):
        return None
    return users[0]


def _integer_linear(g: Any, node: Any, q: QuantLinear, prefix: str, consumers: dict[str, list[Any]], inits: dict[str, Any],
                    new_nodes: list[Any], cache: dict[Any, Any], skip: set[int]) -> Any:
    """The MatMulIntegerToFloat node that replaces the Linear `node` (MatMul, with its bias Add folded in and added
    to `skip`, or Gemm with its bias input): u8 input from `_act_quantize`, the int8 weight (K, N) with zero points 0
    and per-output-channel scales, the float bias."""
    from onnx import helper

    xq, a_scale, a_zero = _act_quantize(g, node.input[0], q, prefix, new_nodes, cache)
    ints = q.weight_integers().numpy().T.astype(np.int8)  # (K, N), whatever the Gemm's transB held
    w, w_scale, w_zero = _weight_ints(g, ints, q.w_quant.scale().numpy().astype(np.float32), prefix)
    out = node.output[0]
    if node.op_type == "Gemm":
        bias = [node.input[2]] if len(node.input) > 2 and node.input[2] else []
    else:
        add = _bias_add(node, consumers, inits, q.out_features)
        bias = [] if add is None else [i for i in add.input if i != node.output[0]]
        if add is not None:
            out = add.output[0]
            skip.add(id(add))
    return helper.make_node("MatMulIntegerToFloat", [xq, w, a_scale, w_scale, a_zero, w_zero, *bias], [out], name=node.name,
                            domain=MS_DOMAIN)


def rewrite(onnx_model: Any, model: nn.Module, bits: int, accuracy_level: int = 4, form: str = "integer") -> Any:
    """Rewrite the float export of `model` (a fake-quantized module) in place as an integer graph: 8 bit in `form`
    "integer" (QuantizeLinear -> MatMulIntegerToFloat with the bias inside) or "qdq" (standard operators only), 4 bit
    as MatMulNBits; `ExportError` if a QuantLinear's weight is not found among the MatMul weights."""
    from onnx import helper, numpy_helper

    if bits not in (8, 4):
        raise ExportError(f"{bits}-bit weights have no ONNX Runtime kernel; valid: 8 (QDQ), 4 (MatMulNBits)")
    if form not in ONNX_FORMS:
        raise ExportError(f"ONNX form {form!r}: valid: {', '.join(ONNX_FORMS)}")
    g = (onnx_model if bits == 8 else gemm_to_matmul(onnx_model)).graph
    insert_attention_qdq(g, model)
    by_key = {}
    for name, q in quant_linears(model):
        w = q.quantized_weight().detach().numpy().T  # (K, N): how MatMul holds it
        by_key.setdefault(_key(w), (name, q))
    tables = {_key(q.quantized_weight().detach().numpy()): (name, q) for name, q in quant_embeddings(model)}
    inits = {i.name: i for i in g.initializer}
    found: set[str] = set()
    nodes, cache = [], {}
    consumers: dict[str, list[Any]] = {}
    for node in g.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    matches = [_match(node, inits, by_key) for node in g.node]
    # tensors that get a QuantizeLinear: ORT fuses DQ -> Gemm only when the Gemm's output feeds no Q or only Qs
    quantized_inputs = {node.input[0] for node, (hit, _) in zip(g.node, matches) if hit and hit[1].a_quant is not None}
    skip: set[int] = set()
    for i, node in enumerate(g.node):
        if id(node) in skip:
            continue
        if node.op_type == "Gather" and node.input[0] in inits and tables:
            table = tables.get(_key(numpy_helper.to_array(inits[node.input[0]])))
            if table is not None and _attrs(node).get("axis", 0) == 0:
                found.add(table[0])
                rewrite_gather(g, node, table[1], f"q{i}.{table[0]}", nodes)
                continue
        hit, trans_b = matches[i]
        if hit is None:
            nodes.append(node)
            continue
        name, q = hit
        found.add(name)
        prefix = f"q{i}.{name}"
        if bits == 8 and form == "integer" and q.a_quant is not None:
            nodes.append(_integer_linear(g, node, q, prefix, consumers, inits, nodes, cache, skip))
            continue
        x = node.input[0] if q.a_quant is None else _add_act_qdq(g, node.input[0], q, prefix, nodes, cache)
        ints = q.weight_integers().numpy().T  # (K, N) int
        scale = q.w_quant.scale().numpy().astype(np.float32)  # (N,)
        k, n = ints.shape
        if bits == 8:
            w_int = (ints.T if trans_b else ints).astype(np.int8)  # Gemm(transB=1) holds W as (N, K)
            _weight_dq(g, w_int, scale, 0 if trans_b else 1, prefix, nodes)
            if node.op_type == "MatMul":
                nodes.append(helper.make_node("MatMul", [x, f"{prefix}.w_dq"], list(node.output), name=node.name))
            else:
                bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
                out = node.output[0]
                if out in quantized_inputs and len(consumers.get(out, [])) > 1:
                    # its output is quantized for the next Linears and read in float by the residual Add: ORT leaves
                    # DQ -> Gemm -> {Q, Add} a float Gemm (dequantizing its weight every run; 0.7 of 5.1 ms on a
                    # NAS-BERT student); a bias-less DQ -> Gemm fuses into QGemm, the bias follows as a float Add
                    # (a zero bias too: the Add is what keeps the Q off the Gemm's output)
                    if bias is None:
                        bias = f"{prefix}.zero_bias"
                        g.initializer.append(numpy_helper.from_array(np.zeros(n, np.float32), bias))
                    nodes.append(helper.make_node("Gemm", [x, f"{prefix}.w_dq"], [f"{prefix}.y"], name=node.name,
                                                  transB=int(trans_b)))
                    nodes.append(helper.make_node("Add", [f"{prefix}.y", bias], [out], name=f"{node.name}.bias"))
                    continue
                inputs = [x, f"{prefix}.w_dq"] + _int32_bias(g, bias, q, scale, inits, prefix, nodes)
                nodes.append(helper.make_node("Gemm", inputs, list(node.output), name=node.name, transB=int(trans_b)))
        else:
            block = _block_size(k)
            blocks = -(-k // block)
            g.initializer.extend([
                numpy_helper.from_array(pack_nbits(ints, block), f"{prefix}.w_uint4"),
                numpy_helper.from_array(np.repeat(scale, blocks).astype(np.float32), f"{prefix}.w_scales"),
            ])
            nodes.append(helper.make_node("MatMulNBits", [x, f"{prefix}.w_uint4", f"{prefix}.w_scales"], list(node.output),
                                          name=node.name, domain=MS_DOMAIN, K=k, N=n, bits=4, block_size=block,
                                          accuracy_level=accuracy_level))
    wanted = [name for name, _ in [*quant_linears(model), *quant_embeddings(model)]]
    missing = [name for name in wanted if name not in found]
    if missing:
        raise ExportError(f"quantized Linears or embeddings not found in the ONNX graph: {', '.join(missing[:5])} "
                          f"({len(missing)} of {len(wanted)}); the exporter changed their weights")
    del g.node[:]
    g.node.extend(nodes)
    used = {i for nd in g.node for i in nd.input}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    if any(n.domain == MS_DOMAIN for n in g.node) and not any(o.domain == MS_DOMAIN for o in onnx_model.opset_import):
        onnx_model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return onnx_model


def export_quantized_onnx(
    model: nn.Module, path: str | Path, example_inputs: Mapping[str, torch.Tensor], bits: int, output_name: str = "logits",
    accuracy_level: int = 4, form: str = "integer", first_output: bool = True,
) -> Path:
    """Export the fake-quantized classifier `model` to one ONNX file at `path` (QDQ for 8 bit, MatMulNBits for 4).

    `accuracy_level` of MatMulNBits: 4 quantizes its input to int8 per block and runs integer dot products
    (fast); 0 dequantizes the weights and multiplies in float (exactly the fake-quantized model).
    `first_output`: `model` is a transformers model (called with input_ids, attention_mask[, token_type_ids],
    its first output exported); False: any module, called with `example_inputs` as positional arguments."""
    import onnx

    target = Path(path)
    plain = float_copy(model)
    with tempfile.TemporaryDirectory(prefix="nasbert-quant-") as work:
        fp = export_onnx(FirstOutput(plain) if first_output else plain, Path(work) / "float.onnx", example_inputs, [output_name])
        graph = rewrite(onnx.load(str(fp)), model, bits, accuracy_level, form)
        with atomic_path(target) as tmp:
            onnx.save(graph, str(tmp))
    return target
