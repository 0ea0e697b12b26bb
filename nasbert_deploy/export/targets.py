"""What an export is validated on: every artefact of the folder, each at the precision it will run at.

Targets (reference = the torch model in memory, see `validate`):

- `transformers`: the folder reloaded with `AutoModel` (must be bit-identical up to `RELOAD_RTOL`);
- `onnxruntime`: `onnx/model.onnx`;
- `openvino`: `openvino/openvino_model.xml` pinned to f32, and again at the precision OpenVINO picks by
  default on this machine when that is not f32 (`openvino-bf16` on CPUs with AVX-512 BF16 / AMX, where
  a plain `Core().compile_model(xml, "CPU")` runs bf16), and at the device spec's
  `runtime_options.INFERENCE_PRECISION_HINT` when it sets one; tolerances from `validate.precision_rtol`;
- INT8 files: cosine against the reference (OpenVINO INT8 at the CPU's default precision, as users run it).

`openvino_precision(...)` is what the report says about it: the default here, what was validated,
and how to pin the precision.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nasbert_deploy.devices import DeviceSpec
from nasbert_deploy.export.validate import (
    RELOAD_RTOL,
    Check,
    Target,
    is_classifier_model,
    output_name,
    precision_rtol,
    shape_grid,
    validate,
)
from nasbert_deploy.space import SearchSpace

PIN_PRECISION = (
    'pin it: `runtime_options = { INFERENCE_PRECISION_HINT = "f32" }` in the device spec, or '
    '`Core().compile_model(xml, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})`'
)


def openvino_precisions(specs: DeviceSpec | Sequence[DeviceSpec]) -> tuple[str, str, list[str]]:
    """(default precision on this CPU, the OpenVINO device specs' pinned precisions (comma-separated) or '',
    precisions to validate at: f32, the default, the pinned ones)."""
    from nasbert_deploy.runtimes.openvino_rt import PRECISION_HINT, default_precision

    specs = [specs] if isinstance(specs, DeviceSpec) else list(specs)
    default = default_precision("cpu")
    pinned = [str(s.runtime_options[PRECISION_HINT]) for s in specs
              if s.runtime == "openvino" and PRECISION_HINT in s.runtime_options]
    wanted = ["f32", default, *pinned]
    return default, ",".join(dict.fromkeys(pinned)), [p for i, p in enumerate(wanted) if p and p not in wanted[:i]]


def openvino_precision(default: str, pinned: str, validated: list[str]) -> dict[str, Any]:
    """The report's `validation.openvino_precision` entry."""
    return {
        "cpu_default": default,
        "device_spec_hint": pinned or None,
        "validated": validated,
        "tolerance_rtol": {p: precision_rtol(p) for p in validated},
        "how_to_pin": PIN_PRECISION,
    }


def _torch_runner(model: Any) -> Callable[[Any], Any]:
    """inputs -> the model's first output (last_hidden_state of an encoder, logits of a classifier) as numpy."""
    import torch

    def run(inputs: Any) -> Any:
        with torch.inference_mode():
            names = ("input_ids", "attention_mask", "token_type_ids")
            kwargs = {k: torch.from_numpy(inputs[k]) if k in inputs else None for k in names}
            return model(**kwargs, return_dict=False)[0].float().numpy()

    return run


def _first(compiled: Any) -> Callable[[Any], Any]:
    return lambda inputs: compiled.run(inputs)[0]


def validation_targets(
    model: Any, folder: Path, fp16: bool, spec: DeviceSpec | Sequence[DeviceSpec]
) -> tuple[list[Target], dict[str, Any] | None]:
    """The targets for every artefact in `folder`, and the OpenVINO precision entry (None without an IR)."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    from nasbert_deploy.model import modeling  # noqa: F401  (registers the nasbert model type with AutoModel)
    from nasbert_deploy.runtimes.base import export_artefact
    from nasbert_deploy.runtimes.onnxruntime_rt import OrtCompiled
    from nasbert_deploy.runtimes.openvino_rt import PRECISION_HINT, OvCompiled

    ort_spec = DeviceSpec(name="validate-ort", runtime="onnxruntime", target="cpu", threads=0)

    def ov_spec(hint: str) -> DeviceSpec:  # runtime_options override the f32 pin of fp32 specs
        return DeviceSpec(name="validate-openvino", runtime="openvino", target="cpu", threads=0,
                          runtime_options={PRECISION_HINT: hint})

    auto = AutoModelForSequenceClassification if is_classifier_model(model) else AutoModel
    reloaded = auto.from_pretrained(str(folder)).eval()
    targets = [
        Target("transformers", _torch_runner(reloaded), "fp32", RELOAD_RTOL),
        Target("onnxruntime", _first(OrtCompiled(export_artefact(folder, "onnx"), ort_spec))),
    ]
    precision = None
    xml, xml8 = export_artefact(folder, "openvino"), export_artefact(folder, "openvino-int8")
    default, pinned, validated = openvino_precisions(spec) if xml.is_file() or xml8.is_file() else ("", "", [])
    if xml.is_file():
        precision = openvino_precision(default, pinned, validated)
        runs = {}
        for p in validated:
            compiled = OvCompiled(xml, ov_spec(p))
            runs[p] = compiled.inference_precision  # what it runs at: a bf16 request on a CPU without bf16 runs f32
            rtol = precision_rtol(p, fp16)
            name = "openvino" + ("-fp16" if fp16 else "") + ("" if p == "f32" else f"-{p}")
            targets.append(Target(name, _first(compiled), "fp16" if fp16 else p, rtol, runs[p]))
        precision["runs_at"] = runs
    if export_artefact(folder, "onnx-int8").is_file():
        targets.append(Target("onnxruntime-int8", _first(OrtCompiled(export_artefact(folder, "onnx-int8"), ort_spec)), "int8"))
    if xml8.is_file():  # at the CPU's default precision, as int8 device specs and plain OpenVINO run it
        targets.append(Target("openvino-int8", _first(OvCompiled(xml8, ov_spec(default))), "int8", precision=default))
    return targets, precision


def validate_export(
    model: Any,
    folder: Path,
    options: Any,
    space: SearchSpace,
    vocab: int,
    spec: DeviceSpec | Sequence[DeviceSpec],
    on_check: Callable[[Check], None] | None = None,
) -> tuple[list[Check], dict[str, Any] | None]:
    """Every check of the artefacts in `folder` against `model` on the shape grid, and the OpenVINO precision entry."""
    targets, precision = validation_targets(model, folder, options.fp16, spec)
    shapes = shape_grid(space.max_positions, options.validation_batches, options.validation_seq_lens)
    checks = validate(_torch_runner(model), targets, shapes, min(vocab, space.vocab_size), options.token_type_ids,
                      output_name(model), on_check)
    return checks, precision
