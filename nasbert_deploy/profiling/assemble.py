"""Whole validation models assembled from the cached ONNX graphs of their parts instead of exported again.

A `NasBertModel` is, node for node, its embedding, its layer operations, its block boundaries and its head
(`model.modeling`: tokens stay flattened to (b * t, h) from the embedding to the head). Each part item
(`items.op_items`) is exported with (b, t, h) activations, so its graph opens with `Reshape(x, [-1, h])`
(to tokens) and closes with `Reshape(tokens, [b, t, h])`: between two parts of a model the two cancel.
`assemble_model` chains the parts' graphs without those reshapes, reads every `Shape(x)` of a part (its
batch and sequence sizes) from the model's attention mask instead, and drops the shape arithmetic left
unused. The result computes what the exported model computes -- a test checks it numerically against
`NasBertModel` holding the parts' weights -- in about a second instead of the 10-25 s a standard-space
model takes to export. A part used twice gets its weights scaled by (1 + k/1024) for its k-th repeat, so
that no runtime can share them: a real model streams distinct weights for every layer (the cache step).

Where a part's graph does not have that shape (another exporter, an op written differently),
`AssemblyError` says why and the caller exports the model directly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nasbert_deploy.errors import ExportError
from nasbert_deploy.profiling.table import boundary_key, embedding_key, head_key, op_key
from nasbert_deploy.space import Arch

IDS, MASK, OUT = "input_ids", "attention_mask", "last_hidden_state"
REPEAT_SCALE = 1.0 / 1024  # the k-th repeat of a part: float weights x (1 + k * REPEAT_SCALE)


class AssemblyError(ExportError):
    """A part's ONNX graph does not have the shape `assemble_model` relies on."""


def model_parts(arch: Arch) -> list[tuple[str, str]]:
    """The (item key, role) of every part of `arch`, in order; role is embedding | op | boundary | head."""
    parts = [(embedding_key(arch.hiddens[0]), "embedding")]
    for i, block in enumerate(arch.blocks):
        if i:
            parts.append((boundary_key(arch.hiddens[i - 1], block.hidden), "boundary"))
        parts += [(op_key(op, block.hidden), "op") for op in block.ops if not op.is_identity]
    return parts + [(head_key(arch.hiddens[-1]), "head")]


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _const_ints(g: Any, name: str) -> list[int] | None:
    from onnx import numpy_helper

    for init in g.initializer:
        if init.name == name:
            return [int(v) for v in numpy_helper.to_array(init).reshape(-1)]
    for n in g.node:
        if n.op_type == "Constant" and n.output[0] == name:
            return [int(v) for v in numpy_helper.to_array(_attrs(n)["value"]).reshape(-1)]
    return None


def _part(model: Any, key: str, role: str, prefix: str, x_in: str | None, repeat: int) -> tuple[list[Any], list[Any], str]:
    """One part's nodes and initializers, renamed under `prefix` and wired to `x_in` (tokens), and the name of its
    output (tokens; the model output for the head)."""
    import numpy as np
    from onnx import numpy_helper

    g = model.graph
    if len(model.functions):
        raise AssemblyError(f"{key}: graph has local functions")
    inputs = {i.name for i in g.input}
    want = {"embedding": {IDS}, "op": {"x", "mask"}, "boundary": {"x"}, "head": {"x"}}[role]
    if inputs != want or len(g.output) != 1:
        raise AssemblyError(f"{key}: inputs {sorted(inputs)}, {len(g.output)} output(s); expected {sorted(want)} and 1")
    y = g.output[0].name
    exit_nodes = [n for n in g.node if y in n.output]
    if len(exit_nodes) != 1 or exit_nodes[0].op_type != "Reshape":
        raise AssemblyError(f"{key}: the output is not produced by a Reshape back to (b, t, h)")
    exit_node = exit_nodes[0]
    drop = set()
    rename: dict[str, str] = {"mask": MASK, IDS: IDS, "x": MASK}  # x is only left read by Shape: the mask's b, t
    if role != "embedding":
        users = [n for n in g.node if "x" in n.input]
        entry = [n for n in users if n.op_type == "Reshape"]
        if len(entry) != 1 or any(n.op_type not in ("Reshape", "Shape") for n in users):
            raise AssemblyError(f"{key}: x is not flattened to tokens by exactly one Reshape")
        shape = _const_ints(g, entry[0].input[1])
        if shape is None or len(shape) != 2 or shape[0] != -1:
            raise AssemblyError(f"{key}: x is reshaped to {shape}, not to (-1, h)")
        for n in users:
            if n.op_type == "Shape":
                a = _attrs(n)
                if "end" not in a or not 0 <= a.get("start", 0) < a["end"] <= 2:
                    raise AssemblyError(f"{key}: reads x's shape beyond (batch, seq)")
        drop.add(id(entry[0]))
        rename[entry[0].output[0]] = x_in or ""
    if role != "head":
        drop.add(id(exit_node))
        rename[y] = f"{prefix}{exit_node.input[0]}"  # the tokens before the reshape
    else:
        rename[y] = OUT

    def name(t: str) -> str:
        return t if t == "" else rename.get(t, f"{prefix}{t}")

    nodes = []
    for n in g.node:
        if id(n) in drop:
            continue
        new = type(n)()
        new.CopyFrom(n)
        new.name = f"{prefix}{n.name}"
        del new.input[:]
        del new.output[:]
        new.input.extend(name(t) for t in n.input)
        new.output.extend(name(t) for t in n.output)
        nodes.append(new)
    inits = []
    for init in g.initializer:
        arr = numpy_helper.to_array(init)
        if repeat and arr.dtype == np.float32 and arr.size >= 16:
            arr = arr * np.float32(1.0 + repeat * REPEAT_SCALE)
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), f"{prefix}{init.name}"))
    return nodes, inits, rename[y]


def _prune(nodes: list[Any], outputs: set[str]) -> list[Any]:
    """Only the nodes the outputs depend on (the shape arithmetic of the removed reshapes goes)."""
    needed, keep = set(outputs), []
    for n in reversed(nodes):
        if any(o in needed for o in n.output):
            keep.append(n)
            needed.update(i for i in n.input if i)
    return keep[::-1]


def assemble_model(arch: Arch, part_onnx: dict[str, str | Path], out: str | Path, output_dim: int) -> Path:
    """Write the ONNX graph of the whole model `arch` (inputs input_ids, attention_mask (b, t) int64; output
    last_hidden_state (b, t, output_dim) float32) chained from its parts' fp32 graphs (`part_onnx`: item key ->
    model.onnx); `AssemblyError` where a part does not fit (see the module docstring)."""
    import onnx
    from onnx import TensorProto, helper

    from nasbert_deploy.fileio import atomic_path

    loaded: dict[str, Any] = {}
    nodes: list[Any] = []
    inits: list[Any] = []
    uses: Counter[str] = Counter()
    x: str | None = None
    for i, (key, role) in enumerate(model_parts(arch)):
        if key not in part_onnx:
            raise AssemblyError(f"no ONNX graph of part {key!r}")
        if key not in loaded:
            loaded[key] = onnx.load(str(part_onnx[key]))
        part_nodes, part_inits, x = _part(loaded[key], key, role, f"p{i}/", x, uses[key])
        uses[key] += 1
        nodes += part_nodes
        inits += part_inits
    first = next(iter(loaded.values()))
    used = {t for n in _prune(nodes, {OUT}) for t in n.input}
    graph = helper.make_graph(
        _prune(nodes, {OUT}),
        "nasbert_assembled",
        [helper.make_tensor_value_info(IDS, TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info(MASK, TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info(OUT, TensorProto.FLOAT, ["batch", "seq", output_dim])],
        [t for t in inits if t.name in used],
    )
    model = helper.make_model(graph, opset_imports=list(first.opset_import), producer_name="nasbert-deploy-assemble")
    model.ir_version = first.ir_version
    target = Path(out)
    with atomic_path(target) as tmp:
        onnx.save(model, str(tmp))
    return target


def part_keys(archs: Sequence[Arch]) -> set[str]:
    """Every part item the models `archs` are assembled from."""
    return {k for a in archs for k, _ in model_parts(a)}
