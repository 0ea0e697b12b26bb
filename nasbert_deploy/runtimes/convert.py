"""Conversions shared by the profiler and the exporter: torch -> ONNX -> OpenVINO, and INT8.

One code path for both, so what the profiler times is what `export` ships:
- ONNX: `torch.onnx.export(dynamo=True)`, one file (no external data), dynamic batch and sequence; residual
  LayerNorms of BERT-style graphs on flat tokens (`runtimes.layernorm`: no SkipLayerNormalization in a default ORT session).
- OpenVINO: converted from the ONNX file (clean tensor names), fp32 weights unless asked otherwise.
- INT8: ORT dynamic quantization (QInt8 weights, MatMul only), NNCF post-training quantization
  (transformer preset) for OpenVINO with a calibration sample.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from nasbert_deploy.errors import ExportError
from nasbert_deploy.fileio import atomic_path
from nasbert_deploy.telemetry import openvino_telemetry_off

# Examples of size 1 freeze an axis in torch.export: example shapes must be > 1 on dynamic axes.
EXAMPLE_BATCH, EXAMPLE_SEQ = 2, 37


_TORCHLIB_REGISTRIES: dict[Any, Any] = {}  # opset -> torch.onnx registry, built once per process


@contextlib.contextmanager
def reuse_onnx_registry() -> Iterator[None]:
    """Build torch.onnx's torchlib registry once per process instead of once per export.

    Rebuilding it costs ~1-2 s of each `torch.onnx.export(dynamo=True)` call (about half of an op's
    export). We pass no custom translation table, so the registry is never mutated and can be shared.
    Patches a private torch API for the duration of the block only (`export_onnx` uses it for every
    export); where that API is absent, nothing is patched.
    """
    try:
        from torch.onnx._internal.exporter import _registration as reg
    except ImportError:
        yield
        return
    original = reg.ONNXRegistry.__dict__.get("from_torchlib")
    if not isinstance(original, classmethod):
        yield
        return

    def from_torchlib(cls: Any, opset_version: Any = reg._constants.TORCHLIB_OPSET) -> Any:
        if opset_version not in _TORCHLIB_REGISTRIES:
            _TORCHLIB_REGISTRIES[opset_version] = original.__func__(cls, opset_version)
        return _TORCHLIB_REGISTRIES[opset_version]

    reg.ONNXRegistry.from_torchlib = classmethod(from_torchlib)
    try:
        yield
    finally:
        reg.ONNXRegistry.from_torchlib = original


@contextlib.contextmanager
def _quiet() -> Any:
    """Silence the exporter's progress prints and warnings (they are not the user's business)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


class FirstOutput(torch.nn.Module):
    """A transformers model reduced to (input_ids, attention_mask[, token_type_ids]) -> its first output.

    `last_hidden_state` (b, t, d) for an encoder, `logits` (b, c) for a classifier: what ONNX and OpenVINO carry.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, return_dict=False)[0]


def export_onnx(
    module: torch.nn.Module,
    path: str | Path,
    example_inputs: Mapping[str, torch.Tensor],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Sequence[int]] | None = None,
    opset: int | None = None,
) -> Path:
    """Export `module` (called with `example_inputs` as positional args, in order) to one ONNX file.

    `dynamic_axes` maps input name -> axes that are dynamic; by default axes 0 (batch) and
    1 (sequence) of every input. Axis names are shared across inputs ("batch", "seq").
    """
    names = list(example_inputs)
    axis_dims = {0: torch.export.Dim("batch", min=1, max=1024), 1: torch.export.Dim("seq", min=2, max=4096)}
    axes = dynamic_axes if dynamic_axes is not None else {n: (0, 1) for n in names}
    shapes = {n: {a: axis_dims[a] for a in axes.get(n, ())} for n in names}
    module = module.eval()
    target = Path(path)
    try:
        with _quiet(), torch.no_grad(), reuse_onnx_registry(), atomic_path(target) as tmp:
            kwargs: dict[str, Any] = {"opset_version": opset} if opset else {}
            torch.onnx.export(
                module,
                tuple(example_inputs[n] for n in names),
                str(tmp),
                input_names=names,
                output_names=list(output_names),
                dynamic_shapes=shapes,
                dynamo=True,
                external_data=False,
                verbose=False,
                **kwargs,
            )
            _unfusable_layernorms(tmp)
    except ExportError:
        raise
    except Exception as exc:  # the exporter raises many unrelated types; report them as one
        raise ExportError(f"ONNX export of {type(module).__name__} failed: {type(exc).__name__}: {exc}") from exc
    return target


def _unfusable_layernorms(path: Path) -> None:
    """Residual LayerNorms on flat tokens (`runtimes.layernorm`): a user's default ORT session keeps the fast pair."""
    import onnx

    from nasbert_deploy.runtimes.layernorm import flatten_residual_layernorms

    model = onnx.load(str(path))
    if flatten_residual_layernorms(model):
        onnx.save(model, str(path))


def onnx_to_openvino(onnx_path: str | Path, xml_path: str | Path, fp16: bool = False, convert: bool = True) -> Path:
    """Convert an ONNX file to OpenVINO IR (`.xml` + `.bin`); fp32 weights unless `fp16`.

    `convert=False` stores the graph OpenVINO's ONNX reader builds (`Core.read_model`, what opening the ONNX file in
    OpenVINO runs) instead of `convert_model`'s, which adds offline transformations: on a KDLSQ 4-bit NAS student
    (OpenVINO 2026.4) `convert_model`'s graph failed to compile on the CPU plugin while the reader's compiled."""
    xml = Path(xml_path)
    with openvino_telemetry_off():  # import and convert_model both (re)initialise openvino's telemetry
        import openvino as ov

        model = ov.convert_model(str(onnx_path)) if convert else ov.Core().read_model(str(onnx_path))
    _save_ov(model, xml, fp16)
    return xml


def _save_ov(model: Any, xml: Path, fp16: bool) -> None:
    with openvino_telemetry_off():
        import openvino as ov

    xml.parent.mkdir(parents=True, exist_ok=True)
    # save under temporary names, then rename both files (bin first: xml is the entry point)
    tmp_xml = xml.with_name(f".{xml.stem}.tmp.xml")
    ov.save_model(model, str(tmp_xml), compress_to_fp16=fp16)
    tmp_xml.with_suffix(".bin").replace(xml.with_suffix(".bin"))
    tmp_xml.replace(xml)


def gemm_to_matmul(model: Any) -> Any:
    """Rewrite each `Gemm(A, W, bias)` with constant W (how torch exports a Linear on 2-D tokens) as
    `MatMul(A, W') + bias`, W' the stored weight transposed as Gemm's transA/transB/alpha say.

    ORT's dynamic quantization quantizes MatMul, not Gemm; the fp32 export keeps Gemm (bias inside the
    kernel). Returns the same `onnx.ModelProto`, modified in place.
    """
    import numpy as np
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    nodes = []
    for n in g.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type != "Gemm" or n.input[1] not in inits or attrs.get("transA", 0) or attrs.get("beta", 1.0) != 1.0:
            nodes.append(n)
            continue
        w = numpy_helper.to_array(inits[n.input[1]])
        w = (w.T if attrs.get("transB", 0) else w) * np.float32(attrs.get("alpha", 1.0))
        w_name = f"{n.input[1]}__matmul"
        g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w, dtype=np.float32), w_name))
        has_bias = len(n.input) > 2 and n.input[2] != ""
        mm_out = f"{n.output[0]}__matmul" if has_bias else n.output[0]
        nodes.append(helper.make_node("MatMul", [n.input[0], w_name], [mm_out], name=f"{n.name}__matmul"))
        if has_bias:
            nodes.append(helper.make_node("Add", [mm_out, n.input[2]], [n.output[0]], name=f"{n.name}__bias"))
    del g.node[:]
    g.node.extend(nodes)
    used = {i for n in g.node for i in n.input}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    return model


def quantize_onnx_int8(onnx_path: str | Path, out_path: str | Path) -> Path:
    """ORT dynamic quantization: QInt8 weights, MatMul only (QUInt8 and conv quantization are slower here).
    Linears exported as Gemm are first rewritten as MatMul + Add (`gemm_to_matmul`)."""
    import tempfile

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = Path(out_path)
    with _quiet(), atomic_path(out) as tmp, tempfile.TemporaryDirectory(prefix="nasbert-q-") as work:
        src = Path(work) / "matmul.onnx"
        onnx.save(gemm_to_matmul(onnx.load(str(onnx_path))), str(src))
        quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
    return out


def quantize_openvino_int8(
    xml_path: str | Path, out_xml: str | Path, calibration: Sequence[Mapping[str, Any]], subset_size: int = 300
) -> Path:
    """NNCF post-training INT8 quantization (transformer preset) of an OpenVINO IR model.

    `calibration` is a list of input dicts (name -> numpy array), e.g. tokenized sample text.
    """
    with openvino_telemetry_off():  # importing nncf initialises openvino's telemetry (as app 'nncf')
        import nncf
        import openvino as ov

    if not calibration:
        raise ExportError("NNCF quantization needs at least one calibration input")
    model = ov.Core().read_model(str(xml_path))
    with _quiet(), openvino_telemetry_off():
        q = nncf.quantize(
            model,
            nncf.Dataset(list(calibration)),
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=min(subset_size, len(calibration)),
            # NNCF quantizes depthwise-conv inputs per channel; behind the (b,t,h)->(b,h,t) transpose that
            # becomes a per-token quantizer that freezes the sequence length. Keep depthwise convs in fp32.
            ignored_scope=nncf.IgnoredScope(types=["GroupConvolution"], validate=False),
        )
    _save_ov(q, Path(out_xml), fp16=False)
    return Path(out_xml)
