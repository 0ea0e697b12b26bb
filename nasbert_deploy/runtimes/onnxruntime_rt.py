"""ONNX Runtime: CPU or CUDA execution provider; fp32, or INT8 by dynamic quantization (as `export --int8`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nasbert_deploy.devices import DeviceSpec
from nasbert_deploy.errors import DeviceError, RuntimeUnavailableError
from nasbert_deploy.runtimes.base import Compiled, device_artefact

# ORT fuses residual Add + LayerNormalization into SkipLayerNormalization; on the x86 CPUs measured here
# (AVX-512, 1 thread) that kernel is slower than the unfused pair: a 12x384 model ran 12% faster without it
# (benchmarks/bench_export.py, docs/export.md). Profiler, validator and export report all use this setting.
DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


def providers(spec: DeviceSpec) -> list[str]:
    if spec.providers:
        return list(spec.providers)
    return ["CUDAExecutionProvider"] if spec.target == "cuda" else ["CPUExecutionProvider"]


def availability(spec: DeviceSpec) -> str | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed (pip install onnxruntime)"
    have = ort.get_available_providers()
    missing = [p for p in providers(spec) if p not in have]
    if missing:
        extra = " (install onnxruntime-gpu and use a machine with a CUDA GPU)" if "CUDAExecutionProvider" in missing else ""
        return f"onnxruntime here offers {', '.join(have)}, not {', '.join(missing)}{extra}"
    if spec.precision == "fp16":
        return "fp16 is not offered for onnxruntime specs; use fp32 or int8"
    if spec.precision in ("int8", "int4") and spec.target != "cpu":
        return "dynamic INT8 quantization is a CPU path; use target cpu"
    return None


def session_options(spec: DeviceSpec) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    if spec.threads:
        so.intra_op_num_threads = spec.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    for k, v in spec.runtime_options.items():
        so.add_session_config_entry(str(k), str(v))
    return so


class OrtCompiled(Compiled):
    def __init__(self, onnx_path: Path, spec: DeviceSpec, disabled_optimizers: Sequence[str] = DISABLED_OPTIMIZERS):
        """`disabled_optimizers=()`: ORT's default graph optimizations, as a user's `ort.InferenceSession(path)` runs."""
        import onnxruntime as ort

        reason = availability(spec)
        if reason:
            raise RuntimeUnavailableError(f"device {spec.name!r}: {reason}")
        chosen: list[Any] = providers(spec)
        if spec.provider_options:
            chosen = [(p, dict(spec.provider_options)) if i == 0 else p for i, p in enumerate(chosen)]
        self.path = onnx_path
        self.session = ort.InferenceSession(
            str(onnx_path), session_options(spec), providers=chosen, disabled_optimizers=list(disabled_optimizers)
        )
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        self._types = {i.name: i.type for i in self.session.get_inputs()}

    def _feed(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {}
        for name in self.input_names:
            a = np.ascontiguousarray(inputs[name])
            want = self._types[name]
            if want == "tensor(int64)" and a.dtype != np.int64:
                a = a.astype(np.int64)
            elif want == "tensor(float)" and a.dtype != np.float32:
                a = a.astype(np.float32)
            feed[name] = a
        return feed

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return list(self.session.run(None, self._feed(inputs)))

    def bind(self, inputs: Mapping[str, np.ndarray]) -> Callable[[], Any]:
        feed, sess = self._feed(inputs), self.session
        return lambda: sess.run(None, feed)


def compile(
    module: Any,
    example_inputs: Mapping[str, Any],
    output_names: Sequence[str],
    spec: DeviceSpec,
    workdir: Path,
    calibration: Any = None,
) -> OrtCompiled:
    """Export `module` to ONNX in `workdir` (and quantize for int8 specs), then open a session."""
    from nasbert_deploy.runtimes.convert import export_onnx

    reason = availability(spec)
    if reason:
        raise RuntimeUnavailableError(f"device {spec.name!r}: {reason}")
    if spec.kdlsq_bits:
        raise DeviceError(f"device {spec.name!r} runs `nasbert-deploy quantize` exports: time a quantize folder "
                          "(`load`), or profile the device (its items are quantized as `quantize` does)")
    workdir = Path(workdir)
    onnx_path = export_onnx(module, workdir / "model.onnx", example_inputs, output_names)
    return OrtCompiled(from_onnx(onnx_path, spec, workdir), spec)


def from_onnx(onnx_path: Path, spec: DeviceSpec, workdir: Path, calibration: Any = None) -> Path:
    """What `compile` does after the ONNX export (dynamic INT8 quantization for int8 specs, into `workdir`);
    returns the file `load` opens. The profiler's export cache converts through this too."""
    from nasbert_deploy.runtimes.convert import quantize_onnx_int8

    if spec.kdlsq_bits:  # already the integer graph (`lowbit.item`, `quantize`)
        return Path(onnx_path)
    if spec.precision == "int8":
        return quantize_onnx_int8(onnx_path, Path(workdir) / "model.int8.onnx")
    return Path(onnx_path)


def load(path: str | Path, spec: DeviceSpec) -> OrtCompiled:
    """Open an ONNX file, or an export folder's `onnx/model.onnx` (`onnx/model_qint8.onnx` for int8 specs; a `quantize`
    folder's `onnx/model_q8.onnx` / `model_q4.onnx` for kdlsq specs)."""
    p = Path(path)
    if p.is_dir():
        p = device_artefact(p, spec)
    if not p.is_file():
        raise DeviceError(f"no ONNX model at {p}")
    return OrtCompiled(p, spec)
