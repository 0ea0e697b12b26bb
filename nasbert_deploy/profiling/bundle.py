"""Profiling bundles for devices without torch: exported models + a standalone runner + a manifest.

    write_bundle(spec, space, Path("bundle/"))         # here: export every op and validation model
    python bundle/run_profile.py --out results.json     # on the device: numpy + onnxruntime or openvino
    import_results(Path("results.json"), Path("profiles/NAME.json"))   # here: the latency table

The models are converted exactly as `runtimes.<runtime>.compile` converts them (ONNX; INT8 ORT dynamic
quantization; OpenVINO IR, NNCF INT8), so a bundle-made table matches a directly profiled one.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nasbert_deploy.devices import DeviceSpec
from nasbert_deploy.errors import DeviceError, TableError
from nasbert_deploy.fileio import atomic_dir, write_json_atomic
from nasbert_deploy.profiling.items import Item, model_item, op_items, validation_archs
from nasbert_deploy.profiling.profiler import ProfileSettings, build_table, make_manifest, points_of, spec_dict
from nasbert_deploy.profiling.table import LatencyTable
from nasbert_deploy.space import SearchSpace

RUNNER_NAME = "run_profile.py"
BUNDLE_FORMAT = 1


def _artefact(item: Item, space: SearchSpace, spec: DeviceSpec, folder: Path, stem: str) -> str:
    """Convert one item for `spec` into `folder`; returns the file name the runner opens."""
    from nasbert_deploy.runtimes.base import random_calibration
    from nasbert_deploy.runtimes.convert import export_onnx, onnx_to_openvino, quantize_onnx_int8, quantize_openvino_int8

    example = item.example_inputs(space)
    onnx = export_onnx(item.build(space), folder / f"{stem}.onnx", example, item.output_names)
    if spec.runtime == "onnxruntime":
        if spec.precision == "int8":
            q = quantize_onnx_int8(onnx, folder / f"{stem}.int8.onnx")
            onnx.unlink()
            return q.name
        return onnx.name
    xml = onnx_to_openvino(onnx, folder / f"{stem}.xml", fp16=spec.precision == "fp16")
    onnx.unlink()
    if spec.precision == "int8":
        q = quantize_openvino_int8(xml, folder / f"{stem}.int8.xml", random_calibration(example))
        xml.unlink()
        xml.with_suffix(".bin").unlink()
        return q.name
    return xml.name


def _runtime_settings(spec: DeviceSpec) -> dict[str, Any]:
    from nasbert_deploy.runtimes import onnxruntime_rt
    from nasbert_deploy.runtimes.openvino_rt import compile_config

    return {
        "ort": {"threads": spec.threads, "providers": onnxruntime_rt.providers(spec),
                "provider_options": dict(spec.provider_options),
                "session_config": {str(k): str(v) for k, v in spec.runtime_options.items()},
                "disabled_optimizers": list(getattr(onnxruntime_rt, "DISABLED_OPTIMIZERS", ()))},
        "openvino": {"device": spec.target.upper(), "config": {k: str(v) for k, v in compile_config(spec).items()}},
    }


def write_bundle(
    spec: DeviceSpec,
    space: SearchSpace,
    out_dir: str | Path,
    settings: ProfileSettings | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> Path:
    """Write the bundle folder (atomically: nothing half-written); the device need not be present here."""
    settings = settings or ProfileSettings()
    if spec.runtime == "torch":
        raise DeviceError(
            f"device {spec.name!r} uses the torch runtime, which needs torch on the device; bundles are for "
            "onnxruntime or openvino specs (profile torch devices directly with `nasbert-deploy profile`)"
        )
    points = points_of(spec, space)
    archs = validation_archs(space, settings.validate, settings.seed)
    items = op_items(space) + [model_item(a) for a in archs]
    entries = []
    with atomic_dir(out_dir) as tmp:
        (tmp / "models").mkdir()
        for i, it in enumerate(items):
            if progress:
                progress("export", i, len(items))
            name = _artefact(it, space, spec, tmp / "models", f"{i:03d}")
            entries.append({**it.to_dict(), "file": f"models/{name}"})
        if progress:
            progress("export", len(items), len(items))
        manifest = {
            "kind": "nasbert-profile-bundle",
            "format": BUNDLE_FORMAT,
            "bundle_id": uuid.uuid4().hex,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "runtime": spec.runtime,
            "device": spec_dict(spec),
            "space": space.to_dict(),
            "space_hash": space.space_hash(),
            "settings": settings.to_dict(),
            "points": [list(p) for p in points],
            **_runtime_settings(spec),
            "items": entries,
        }
        write_json_atomic(tmp / "manifest.json", manifest)
        shutil.copyfile(Path(__file__).with_name("bundle_runner.py"), tmp / RUNNER_NAME)
    return Path(out_dir)


def import_results(results_path: str | Path, out: str | Path | None = None) -> tuple[LatencyTable, Path]:
    """Turn the runner's `results.json` into a latency table written atomically to `out`
    (default `./profiles/DEVICE.json`, DEVICE as in the results); (table, where it was written)."""
    p = Path(results_path)
    if not p.is_file():
        raise TableError(f"--import {p}: no such file (the runner writes results.json)")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TableError(f"cannot read bundle results {p}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise TableError(f"{p} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("kind") != "nasbert-profile-results":
        raise TableError(f"{p} is not the output of a bundle's {RUNNER_NAME} (kind 'nasbert-profile-results')")
    m = data["bundle"]
    if m.get("format") != BUNDLE_FORMAT:
        raise TableError(f"{p}: bundle format {m.get('format')!r}; this build reads format {BUNDLE_FORMAT}")
    space = SearchSpace.from_dict(m["space"])
    if space.space_hash() != m.get("space_hash"):
        raise TableError(f"{p}: the bundle's space hash does not match its space description")
    archs = [space.parse(it["arch"]) for it in m["items"] if it["kind"] == "model"]
    points = [(int(b), int(s)) for b, s in m["points"]]
    wall_s = float(data.get("wall_s", 0.0))
    manifest = make_manifest(m["device"], m["settings"], wall_s, "bundle", env=data.get("environment", {}))
    table = build_table(space, m["device"], data["results"], archs, points, manifest)
    target = Path(out) if out is not None else Path("profiles") / f"{m['device']['name']}.json"
    table.save(target)
    return table, target
