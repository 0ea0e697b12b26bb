"""Latency of `quantize`'s exports: measured on this host on the kdlsq devices (the runtimes running them), and
predicted by each device's latency table when the model is a NAS-BERT architecture (a student, or a teacher that
`finetune-teacher` converted) and a table for the device exists (`nasbert-deploy profile --device cpu-ort-kdlsq8`).

The measurement is `export`'s (`export.measure.measure_latency`): batch 1 x `seq_len` random tokens, the table's
round statistic over its rounds, so predicted and measured figures compare as in an export report. The table
predicts the encoder; the exported classifier adds its pooling and output layer (a few microseconds).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nasbert_deploy.devices import DeviceSpec, list_devices, load_device
from nasbert_deploy.errors import ExportError

FORMAT_OF = {"onnxruntime": "onnx", "openvino": "openvino"}  # the export a kdlsq device runs


def default_devices(bits: int, formats: Sequence[str]) -> list[str]:
    """The shipped kdlsq devices that run a `bits`-bit export in one of `formats` (none for 2 bits)."""
    return [s.name for s in list_devices() if s.kdlsq_bits == bits and FORMAT_OF.get(s.runtime) in formats]


def check_devices(names: Sequence[str], bits: int, formats: Sequence[str]) -> list[DeviceSpec]:
    """Before any work: each device (name or .toml) runs a `bits`-bit `quantize` export this request writes."""
    specs = [load_device(n) for n in names]
    for s in specs:
        fit = ", ".join(default_devices(bits, formats)) or "none (nothing is exported)"
        if s.kdlsq_bits != bits:
            runs = f"{s.kdlsq_bits}-bit KDLSQ exports" if s.kdlsq_bits else f"{s.precision} {s.quantizer} models"
            raise ExportError(f"--device {s.name} runs {runs}, not --bits {bits}'s; devices for this request: {fit}")
        if FORMAT_OF[s.runtime] not in formats:
            raise ExportError(f"--device {s.name} runs {s.runtime}, which needs --format {FORMAT_OF[s.runtime]}; "
                              f"devices for this request: {fit}")
    return specs


def _arch(config: Any) -> tuple[Any, Any]:
    """(search space, arch) of a NAS-BERT config, else (None, None)."""
    if getattr(config, "model_type", "") != "nasbert":
        return None, None
    return config.search_space, config.arch_obj


def measure_exports(
    folder: str | Path, specs: Sequence[DeviceSpec], config: Any, seq_len: int = 128, measure: bool = True,
    timing_kwargs: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One `measure_latency` record per device for the quantized exports in `folder` (batch 1 x `seq_len`)."""
    from nasbert_deploy.export.measure import DEFAULT_TIMING, measure_latency

    space, arch = _arch(config)
    vocab = int(config.vocab_size)
    kwargs = timing_kwargs or DEFAULT_TIMING
    out = []
    for spec in specs:
        if not spec.kdlsq_bits:
            raise ExportError(f"device {spec.name} does not run quantize exports")
        out.append(measure_latency(Path(folder), spec, space, arch, 1, seq_len, vocab, kwargs, measure))
    return out
