"""Runtime plug-ins: a plain dict name -> module, imported lazily.

Each plug-in module offers:
- `availability(spec) -> str | None`: None if usable here, else why not (one line);
- `compile(module, example_inputs, output_names, spec, workdir, calibration=None) -> Compiled`:
  takes a plain torch module through the same conversion path `export` uses (ONNX / OpenVINO / INT8);
- `load(path, spec) -> Compiled`: an already exported artefact (HF folder, .onnx, .xml);
- ONNX-based plug-ins also `from_onnx(onnx_path, spec, workdir, calibration=None) -> Path`: the part of
  `compile` after the ONNX export (INT8 quantization, OpenVINO IR), returning the file `load` opens; the
  profiler's export cache converts through it (torch has none: nothing to export).

Timing goes through `time_compiled`, i.e. `timing.measure`: the one measurement function.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from nasbert_deploy.errors import DeviceError, RuntimeUnavailableError

if TYPE_CHECKING:
    import numpy as np

    from nasbert_deploy.devices import DeviceSpec
    from nasbert_deploy.runtimes.timing import Timing

RUNTIMES: dict[str, str] = {"torch": "torch_rt", "onnxruntime": "onnxruntime_rt", "openvino": "openvino_rt"}


# Where an export folder keeps each artefact: the layout sentence-transformers and optimum look for
# (`SentenceTransformer(folder, backend="onnx" | "openvino")`, `ORTModelForFeatureExtraction`). Folders
# exported before kept them at the top level (`LEGACY_ARTEFACTS`); `export_artefact` still finds those.
EXPORT_ARTEFACTS: dict[str, str] = {
    "onnx": "onnx/model.onnx",
    "onnx-int8": "onnx/model_qint8.onnx",
    "openvino": "openvino/openvino_model.xml",
    "openvino-int8": "openvino/openvino_model_qint8_quantized.xml",
}
LEGACY_ARTEFACTS: dict[str, str] = {
    "onnx": "model.onnx",
    "onnx-int8": "model.int8.onnx",
    "openvino": "openvino_model.xml",
    "openvino-int8": "openvino_model.int8.xml",
}


# what `nasbert-deploy quantize --bits B` writes (`quantize.run`), by runtime and bits: kdlsq devices load these
QUANTIZE_ARTEFACTS: dict[str, str] = {
    "onnxruntime-8": "onnx/model_q8.onnx",
    "onnxruntime-4": "onnx/model_q4.onnx",
    "openvino-8": "openvino/openvino_model_q8.xml",
    "openvino-4": "openvino/openvino_model_q4.xml",
}


def device_artefact(folder: str | Path, spec: DeviceSpec) -> Path:
    """The file of an export (or `quantize`) folder that device `spec` runs: the fp32 ONNX / IR, its PTQ INT8
    version for int8 devices, the KDLSQ export for kdlsq devices."""
    if spec.kdlsq_bits:
        return Path(folder) / QUANTIZE_ARTEFACTS[f"{spec.runtime}-{spec.kdlsq_bits}"]
    kind = "onnx" if spec.runtime == "onnxruntime" else "openvino"
    return export_artefact(folder, f"{kind}-int8" if spec.precision == "int8" else kind)


def export_artefact(folder: str | Path, kind: str) -> Path:
    """The path of artefact `kind` (a key of `EXPORT_ARTEFACTS`) in an export folder: the current layout's file,
    else the legacy top-level one if only that exists (the current path when neither does)."""
    current = Path(folder) / EXPORT_ARTEFACTS[kind]
    legacy = Path(folder) / LEGACY_ARTEFACTS[kind]
    return legacy if not current.is_file() and legacy.is_file() else current


def get_runtime(name: str) -> ModuleType:
    if name not in RUNTIMES:
        raise DeviceError(f"unknown runtime {name!r}; valid: {', '.join(RUNTIMES)}")
    return importlib.import_module(f"nasbert_deploy.runtimes.{RUNTIMES[name]}")


def availability(spec: DeviceSpec) -> str | None:
    """None if `spec` can run on this machine, else one line saying why not."""
    return get_runtime(spec.runtime).availability(spec)


def require_available(spec: DeviceSpec) -> None:
    """`RuntimeUnavailableError` (one line) unless `spec` can run on this machine."""
    reason = availability(spec)
    if reason:
        raise RuntimeUnavailableError(f"device {spec.name!r} is not usable here: {reason}")


class Compiled(ABC):
    """A model ready to run on one runtime. Inputs and outputs are numpy arrays."""

    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    @abstractmethod
    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run once; outputs (float32 for float outputs) in `output_names` order."""

    @abstractmethod
    def bind(self, inputs: Mapping[str, np.ndarray]) -> Callable[[], Any]:
        """Prepare inputs once and return a zero-argument call that runs the model and blocks."""

    def sync(self) -> None:  # noqa: B027  (a default no-op: only GPU runtimes override it)
        """Wait for asynchronous work (GPU); a no-op on CPU runtimes."""


def time_compiled(compiled: Compiled, inputs: Mapping[str, np.ndarray], **measure_kwargs: Any) -> Timing:
    """Latency of `compiled` on `inputs` (see `timing.measure` for the keyword arguments)."""
    from nasbert_deploy.runtimes.timing import measure

    return measure(compiled.bind(inputs), sync=compiled.sync, **measure_kwargs)


def random_calibration(example_inputs: Mapping[str, Any], n: int = 8, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Calibration inputs shaped like `example_inputs` when no real data is given (op profiling).

    Float tensors get standard-normal values, masks (names containing 'mask') all ones, other integer
    tensors (token ids) the example's own values shuffled.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        sample = {}
        for name, t in example_inputs.items():
            a = t.detach().cpu().numpy()
            if np.issubdtype(a.dtype, np.floating):
                sample[name] = rng.standard_normal(a.shape).astype(np.float32)
            elif "mask" in name:
                sample[name] = np.ones_like(a)
            else:
                sample[name] = rng.permutation(a.reshape(-1)).reshape(a.shape)
        out.append(sample)
    return out
