"""PyTorch eager runtime (CPU, CUDA; fp32 or fp16 on CUDA)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nasbert_deploy.devices import DeviceSpec
from nasbert_deploy.errors import DeviceError, RuntimeUnavailableError
from nasbert_deploy.runtimes.base import Compiled


def availability(spec: DeviceSpec) -> str | None:
    if spec.target == "cuda" and not torch.cuda.is_available():
        return "no CUDA GPU is visible to PyTorch (torch.cuda.is_available() is False)"
    if spec.precision == "fp16" and spec.target != "cuda":
        return "fp16 eager inference is only supported on CUDA"
    if spec.precision == "int8":
        return "INT8 is not offered for the torch runtime; use cpu-ort-int8 or cpu-openvino-int8"
    return None


class TorchCompiled(Compiled):
    def __init__(self, module: torch.nn.Module, input_names: Sequence[str], output_names: Sequence[str], spec: DeviceSpec):
        reason = availability(spec)
        if reason:
            raise RuntimeUnavailableError(f"device {spec.name!r}: {reason}")
        if spec.threads:
            torch.set_num_threads(spec.threads)
        self.device = torch.device("cuda" if spec.target == "cuda" else "cpu")
        self.dtype = torch.float16 if spec.precision == "fp16" else torch.float32
        self.module = module.eval().to(self.device, self.dtype)
        self.input_names = tuple(input_names)
        self.output_names = tuple(output_names)

    def _tensors(self, inputs: Mapping[str, np.ndarray]) -> list[torch.Tensor]:
        ts = []
        for name in self.input_names:
            t = torch.from_numpy(np.ascontiguousarray(inputs[name])).to(self.device)
            ts.append(t.to(self.dtype) if t.is_floating_point() else t)
        return ts

    def _outputs(self, out: Any) -> list[torch.Tensor]:
        if isinstance(out, torch.Tensor):
            return [out]
        if isinstance(out, dict):  # transformers ModelOutput is a dict
            return [out[n] for n in self.output_names]
        return list(out)

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        with torch.inference_mode():
            outs = self._outputs(self.module(*self._tensors(inputs)))
        return [o.float().cpu().numpy() if o.is_floating_point() else o.cpu().numpy() for o in outs]

    def bind(self, inputs: Mapping[str, np.ndarray]) -> Callable[[], Any]:
        ts = self._tensors(inputs)
        module = self.module

        def call() -> Any:
            with torch.inference_mode():
                return module(*ts)

        return call

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def compile(
    module: torch.nn.Module,
    example_inputs: Mapping[str, torch.Tensor],
    output_names: Sequence[str],
    spec: DeviceSpec,
    workdir: Path | None = None,
    calibration: Any = None,
) -> TorchCompiled:
    return TorchCompiled(module, list(example_inputs), output_names, spec)


def load(path: str | Path, spec: DeviceSpec) -> TorchCompiled:
    """Load a transformers folder (config.json + weights) exported by `nasbert-deploy export`."""
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    from nasbert_deploy.model import modeling  # noqa: F401  (registers the nasbert model type)

    p = Path(path)
    if not (p / "config.json").is_file():
        raise DeviceError(f"{p} is not a transformers model folder (needs config.json)")
    cfg = AutoConfig.from_pretrained(p)
    is_cls = any(a.endswith("ForSequenceClassification") for a in (cfg.architectures or []))
    auto = AutoModelForSequenceClassification if is_cls else AutoModel
    model = auto.from_pretrained(p)
    return TorchCompiled(model, ["input_ids", "attention_mask"], ["logits" if is_cls else "last_hidden_state"], spec)
