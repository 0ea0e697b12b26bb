"""OpenVINO: CPU / GPU / NPU plug-ins; fp32 (or fp16), or INT8 by NNCF post-training quantization."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nasbert_deploy.devices import DeviceSpec
from nasbert_deploy.errors import DeviceError, RuntimeUnavailableError
from nasbert_deploy.runtimes.base import Compiled, device_artefact, random_calibration
from nasbert_deploy.telemetry import openvino_telemetry_off


def _device(spec: DeviceSpec) -> str:
    return spec.target.upper()


def availability(spec: DeviceSpec) -> str | None:
    try:
        with openvino_telemetry_off():  # importing openvino initialises its telemetry
            import openvino as ov
    except ImportError:
        return "openvino is not installed (pip install openvino)"
    have = ov.Core().available_devices
    if not any(d.split(".")[0] == _device(spec) for d in have):
        return f"OpenVINO sees no {_device(spec)} device here (available: {', '.join(have) or 'none'})"
    return None


PRECISION_HINT = "INFERENCE_PRECISION_HINT"
DYNAMIC_QUANT = "DYNAMIC_QUANTIZATION_GROUP_SIZE"


def default_precision(target: str = "cpu") -> str:
    """The inference precision OpenVINO uses on `target` when nothing pins it: 'f32', or 'bf16' on CPUs with
    AVX-512 BF16 / AMX (an fp32 IR then runs in bf16), 'f16' on GPUs (`Core().get_property(.., PRECISION_HINT)`)."""
    with openvino_telemetry_off():
        import openvino as ov

    value = ov.Core().get_property(target.upper(), PRECISION_HINT)
    return value.get_type_name() if hasattr(value, "get_type_name") else str(value)


def compile_config(spec: DeviceSpec) -> dict[str, Any]:
    cfg: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
    if spec.threads and spec.target == "cpu":
        cfg["INFERENCE_NUM_THREADS"] = spec.threads
    if spec.precision == "fp32":
        cfg[PRECISION_HINT] = "f32"  # otherwise CPUs with AMX/avx512_bf16 silently run bf16
    if spec.precision in ("fp32", "int4") and spec.target == "cpu":
        # the CPU plug-in otherwise re-quantizes the activations of compressed-weight MatMuls (u4 / u8 weights) to
        # int8 per group at run time: a 4-bit KDLSQ IR then computes something its trained model did not (mean
        # cosine 0.9797 against the fake-quantized teacher, below quantize's 0.98) and fp32 is not fp32
        cfg[DYNAMIC_QUANT] = 0
    elif spec.precision == "fp16":
        cfg[PRECISION_HINT] = "f16"
    cfg.update({str(k): v for k, v in spec.runtime_options.items()})
    return cfg


class OvCompiled(Compiled):
    def __init__(self, xml_path: Path, spec: DeviceSpec):
        with openvino_telemetry_off():
            import openvino as ov

        reason = availability(spec)
        if reason:
            raise RuntimeUnavailableError(f"device {spec.name!r}: {reason}")
        self.path = xml_path
        self.compiled = ov.Core().compile_model(str(xml_path), _device(spec), compile_config(spec))
        self.input_names = tuple(i.get_any_name() for i in self.compiled.inputs)
        self.output_names = tuple(o.get_any_name() for o in self.compiled.outputs)
        self._types = {i.get_any_name(): i.get_element_type().to_dtype() for i in self.compiled.inputs}
        self.request = self.compiled.create_infer_request()

    @property
    def inference_precision(self) -> str:
        """The precision the compiled model runs at ('f32', 'bf16', ...): a requested bf16 where the CPU lacks it is f32."""
        value = self.compiled.get_property(PRECISION_HINT)
        return value.get_type_name() if hasattr(value, "get_type_name") else str(value)

    def _feed(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {n: np.ascontiguousarray(inputs[n]).astype(self._types[n], copy=False) for n in self.input_names}

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        res = self.request.infer(self._feed(inputs))
        return [np.array(res[o], dtype=np.float32 if np.issubdtype(res[o].dtype, np.floating) else None)
                for o in self.compiled.outputs]

    def bind(self, inputs: Mapping[str, np.ndarray]) -> Callable[[], Any]:
        with openvino_telemetry_off():
            import openvino as ov

        feed = self._feed(inputs)
        request = self.compiled.create_infer_request()
        for name, arr in feed.items():
            request.set_tensor(name, ov.Tensor(arr))
        return request.infer


def compile(
    module: Any,
    example_inputs: Mapping[str, Any],
    output_names: Sequence[str],
    spec: DeviceSpec,
    workdir: Path,
    calibration: Sequence[Mapping[str, np.ndarray]] | None = None,
) -> OvCompiled:
    """torch -> ONNX -> OpenVINO IR in `workdir` (NNCF INT8 for int8 specs), then compile on the device."""
    from nasbert_deploy.runtimes.convert import export_onnx

    reason = availability(spec)
    if reason:
        raise RuntimeUnavailableError(f"device {spec.name!r}: {reason}")
    if spec.kdlsq_bits:
        raise DeviceError(f"device {spec.name!r} runs `nasbert-deploy quantize` exports: time a quantize folder "
                          "(`load`), or profile the device (its items are quantized as `quantize` does)")
    workdir = Path(workdir)
    onnx_path = export_onnx(module, workdir / "model.onnx", example_inputs, output_names)
    calib = (list(calibration) if calibration else random_calibration(example_inputs)) if spec.precision == "int8" else None
    return OvCompiled(from_onnx(onnx_path, spec, workdir, calib), spec)


def from_onnx(
    onnx_path: Path, spec: DeviceSpec, workdir: Path, calibration: Sequence[Mapping[str, np.ndarray]] | None = None
) -> Path:
    """What `compile` does after the ONNX export: OpenVINO IR in `workdir`, NNCF INT8 for int8 specs (which need
    `calibration`); returns the `.xml` that `load` opens. The profiler's export cache converts through this too."""
    from nasbert_deploy.runtimes.convert import onnx_to_openvino, quantize_openvino_int8

    workdir = Path(workdir)
    if spec.kdlsq_bits:  # the integer ONNX graph as OpenVINO's reader gives it (FakeQuantize / u4), as `quantize` writes it
        from nasbert_deploy.runtimes.signed import openvino_ir

        return openvino_ir(onnx_path, workdir / "openvino_model.xml")  # centred inputs as int8
    xml = onnx_to_openvino(onnx_path, workdir / "openvino_model.xml", fp16=spec.precision == "fp16")
    if spec.precision == "int8":
        if not calibration:
            raise DeviceError(f"device {spec.name!r}: NNCF INT8 quantization needs calibration inputs")
        xml = quantize_openvino_int8(xml, workdir / "openvino_model.int8.xml", list(calibration))
    return xml


def load(path: str | Path, spec: DeviceSpec) -> OvCompiled:
    """Open an IR `.xml`, or an export folder's `openvino/openvino_model.xml` (`..._qint8_quantized.xml` for int8)."""
    p = Path(path)
    if p.is_dir():
        p = device_artefact(p, spec)
    if not p.is_file():
        raise DeviceError(f"no OpenVINO IR at {p}")
    return OvCompiled(p, spec)
