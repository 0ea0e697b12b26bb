"""The OpenVINO form of an 8-bit export: activation grids centred on zero as signed int8.

`quantize --signed-activations` (`lsq.centred`) gives the input of a Linear a grid centred on zero: uint8 with zero
point 128, whose values are exactly those of int8 with zero point 0. ONNX Runtime's x86 integer kernels want uint8
activations (the int8 form of the same graph ran 9.5x slower on an Intel Xeon with AMX, 2026-12-06), so the ONNX file
keeps them; OpenVINO's low-precision transformations turn a FakeQuantize onto [-128, 127] into FullyConnected layers
on s8 inputs, and one onto [0, 255] with a zero point into u8 ones with a zero-point correction (measured on the same
Xeon, the `256:mha,ffn,id,id` x 3 student: 0.87-0.88x NNCF's latency with s8 inputs against 1.02x with u8 ones).
So the file OpenVINO reads is the same graph with every centred activation's zero point stored as int8 0:
`signed_zero_points` rewrites a loaded ONNX model in place, `openvino_onnx` writes such a copy of a file, and
`openvino_ir` converts an export to the IR through such a copy (what the kdlsq devices and the benchmarks open).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nasbert_deploy.fileio import atomic_path

CENTRE = 128  # the uint8 zero point of a centred 8-bit grid


def signed_zero_points(model: Any) -> int:
    """Store each uint8 zero point 128 that a QuantizeLinear of an activation uses as int8 0 (in place): its quantized
    tensor becomes int8 with the same values minus 128, read by DequantizeLinear / MatMulIntegerToFloat with the same
    zero point, so the graph computes the same numbers. A zero point that anything else reads is left alone.
    Returns how many were rewritten."""
    from onnx import TensorProto, numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    readers: dict[str, list[Any]] = {}
    for node in g.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    done = 0
    for node in g.node:
        if node.op_type != "QuantizeLinear" or len(node.input) < 3:
            continue
        zp = inits.get(node.input[2])
        if zp is None or zp.data_type != TensorProto.UINT8:
            continue
        value = numpy_helper.to_array(zp)
        if value.size != 1 or int(value.reshape(-1)[0]) != CENTRE:
            continue
        quantized = node.output[0]
        others = [r for r in readers[zp.name] if r is not node]
        if not all(quantized in r.input for r in others):
            continue  # the zero point is shared with a tensor this QuantizeLinear does not produce
        zp.CopyFrom(numpy_helper.from_array(np.zeros(value.shape, np.int8), zp.name))
        done += 1
    return done


def openvino_onnx(src: str | Path, dst: str | Path) -> tuple[Path, int]:
    """Write `src` (an integer ONNX export) to `dst` with its centred activations as int8 (atomic); (dst, how many)."""
    import onnx

    model = onnx.load(str(src))
    n = signed_zero_points(model)
    target = Path(dst)
    with atomic_path(target) as tmp:
        onnx.save(model, str(tmp))
    return target, n


def openvino_ir(onnx_path: str | Path, xml_path: str | Path) -> Path:
    """The OpenVINO IR of an integer ONNX export, read with its centred activations as int8 (`openvino_onnx`; the
    intermediate copy is removed: the IR holds its own weights)."""
    from nasbert_deploy.runtimes.convert import onnx_to_openvino

    xml = Path(xml_path)
    signed, _ = openvino_onnx(onnx_path, xml.with_name(f"{xml.stem}.signed.onnx"))
    try:
        return onnx_to_openvino(signed, xml, fp16=False, convert=False)
    finally:
        signed.unlink(missing_ok=True)
