"""Keep a user's default ONNX Runtime session off SkipLayerNormalization: residual LayerNorms on flat tokens.

ONNX Runtime's default graph optimizations fuse a residual `Add` feeding a `LayerNormalization` into the contrib op
`SkipLayerNormalization` when the Add's tensors are 3-D (batch, seq, hidden); its CPU kernel (ORT 1.31) is several
times slower than the pair it replaces (docs/export.md: 0.30 ms against 0.04 ms at 128 x 384; a Hugging Face BERT
export of MiniLM-L6 ran 14% slower in a default session than with the fusion off). Our own sessions disable the fusion
(`runtimes.onnxruntime_rt.DISABLED_OPTIMIZERS`), but a user opens the file with `ort.InferenceSession(path)`.

NAS-BERT exports keep tokens flat (batch * seq, hidden) from the embeddings on, so nothing in them matches. A BERT-style
graph (a pruned Hugging Face classifier or QA model, a quantized one) has one such pair per residual.
`flatten_residual_layernorms` rewrites each 3-D `Add -> LayerNormalization(axis=-1)` as
`Reshape(-1, hidden) -> LayerNormalization -> Reshape(back to the Add's shape)`: the same values (LayerNorm over the
last axis does not see the other axes), two zero-copy reshapes, and no pattern for the fusion to match.
"""

from __future__ import annotations

from typing import Any


def _rank(value_info: dict[str, Any], name: str) -> int | None:
    v = value_info.get(name)
    if v is None or not v.type.tensor_type.HasField("shape"):
        return None
    return len(v.type.tensor_type.shape.dim)


def flatten_residual_layernorms(model: Any) -> int:
    """Rewrite `model`'s (an `onnx.ModelProto`, in place) residual LayerNorms on 3-D tensors to run on flat tokens;
    returns how many. Untouched: a LayerNorm not fed by an Add, not over the last axis, without a constant scale (its
    width), with its optional mean / inverse-deviation outputs in use, or on a tensor whose rank the graph does not
    record as >= 3."""
    import numpy as np
    from onnx import helper, numpy_helper

    g = model.graph
    value_info = {v.name: v for v in (*g.value_info, *g.input, *g.output)}
    producers = {o: n for n in g.node for o in n.output}
    widths = {i.name: int(np.prod(i.dims)) for i in g.initializer if len(i.dims) == 1}
    nodes, count = [], 0
    for n in g.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        x = n.input[0] if n.input else ""
        rank = _rank(value_info, x)
        src = producers.get(x)
        hidden = widths.get(n.input[1]) if len(n.input) > 1 else None
        if (n.op_type != "LayerNormalization" or src is None or src.op_type != "Add" or hidden is None
                or rank is None or rank < 3 or attrs.get("axis", -1) not in (-1, rank - 1) or any(n.output[1:])):
            nodes.append(n)
            continue
        tag = f"{n.name or n.output[0]}__flat"
        g.initializer.append(numpy_helper.from_array(np.array([-1, hidden], dtype=np.int64), f"{tag}_shape"))
        y = n.output[0]
        flat_out = f"{tag}_out"
        nodes += [helper.make_node("Reshape", [x, f"{tag}_shape"], [f"{tag}_in"], name=f"{tag}_in"),
                  helper.make_node("LayerNormalization", [f"{tag}_in", *n.input[1:]], [flat_out], name=n.name,
                                   **{**attrs, "axis": -1}),
                  helper.make_node("Shape", [x], [f"{tag}_dims"], name=f"{tag}_dims"),
                  helper.make_node("Reshape", [flat_out, f"{tag}_dims"], [y], name=f"{tag}_back")]
        count += 1
    if count:
        del g.node[:]
        g.node.extend(nodes)
    return count
