"""Profiling bundles for devices without torch: exported models + a standalone runner + a manifest.

    write_bundle(spec, space, Path("bundle/"))         # here: export every op and validation model
    python bundle/run_profile.py --out results.json     # on the device: numpy + onnxruntime or openvino
    import_results(Path("results.json"), Path("profiles/local/NAME.json"))   # here: the latency table

The models are converted exactly as the direct profiler converts them (`cache.prepare_exports`: the runtime
plug-in's `from_onnx` -- ONNX; INT8 ORT dynamic quantization; OpenVINO IR, NNCF INT8 -- through the export
cache, whole models assembled from their parts), so a bundle-made table matches a directly profiled one. The
bundle holds the reference model too: the runner times it in every pass (drift normalisation, as direct).
"""

from __future__ import annotations

import re
import shutil
import tempfile
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nasbert_deploy.devices import DeviceSpec
from nasbert_deploy.errors import DeviceError, NasBertDeployError, TableError
from nasbert_deploy.fileio import atomic_dir, check_output, read_input_json, write_json_atomic
from nasbert_deploy.profiling.cache import ExportCache, prepare_exports
from nasbert_deploy.profiling.items import model_item, op_items, reference_item, validation_archs
from nasbert_deploy.profiling.profiler import ProfileSettings, build_table, make_manifest, points_of, spec_dict
from nasbert_deploy.profiling.table import LatencyTable, local_table_path
from nasbert_deploy.space import SearchSpace

RUNNER_NAME = "run_profile.py"
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # a device name that is a plain file name
BUNDLE_FORMAT = 1


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
    ref = [reference_item(space)] if settings.reference_every > 0 else []  # timed in every pass: drift normalisation
    items = op_items(space) + ref + [model_item(a) for a in archs]
    entries = []
    with atomic_dir(out_dir) as tmp, tempfile.TemporaryDirectory(prefix="nasbert-bundle-") as run:
        (tmp / "models").mkdir()
        # converted as the profiler converts (the export cache; whole models assembled from their parts)
        files, _ = prepare_exports([op_items(space), ref + [model_item(a) for a in archs]], spec, space,
                                   ExportCache.at(settings.cache_dir), ExportCache(Path(run)), settings.export_workers,
                                   progress)
        for i, it in enumerate(items):
            src = files[it.key]
            dst = tmp / "models" / f"{i:03d}.{src.name}"
            shutil.copyfile(src, dst)
            if src.suffix == ".xml":  # an OpenVINO IR: its weights beside it, under the same stem
                shutil.copyfile(src.with_suffix(".bin"), dst.with_suffix(".bin"))
            entries.append({**it.to_dict(), "file": f"models/{dst.name}"})
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


def import_results(
    results_path: str | Path, out: str | Path | None = None, force: bool = False
) -> tuple[LatencyTable, Path]:
    """Turn the runner's `results.json` into a latency table written atomically to `out`
    (default `./profiles/local/DEVICE.json`, DEVICE as in the results; an existing table is replaced only with
    `force`); (table, where it was written). A file that is not a complete results file is one `TableError`."""
    p = Path(results_path)
    data = read_input_json(p, "bundle results", TableError, hint=f"give the results.json a bundle's {RUNNER_NAME} wrote")
    if not isinstance(data, dict) or data.get("kind") != "nasbert-profile-results":
        raise TableError(f"{p} is not the output of a bundle's {RUNNER_NAME} (kind 'nasbert-profile-results')")
    m = data.get("bundle")
    if not isinstance(m, dict) or m.get("format") != BUNDLE_FORMAT:
        found = m.get("format") if isinstance(m, dict) else None
        raise TableError(f"{p}: bundle format {found!r}; this build reads format {BUNDLE_FORMAT}")
    try:
        space = SearchSpace.from_dict(m["space"])
        if space.space_hash() != m.get("space_hash"):
            raise TableError(f"{p}: the bundle's space hash does not match its space description")
        archs = [space.parse(it["arch"]) for it in m["items"] if it["kind"] == "model"]
        points = [(int(b), int(s)) for b, s in m["points"]]
        device, results = dict(m["device"]), data["results"]
        name = str(device["name"])
        if not _SAFE_NAME.fullmatch(name) or not isinstance(results, dict):
            raise TableError(f"{p}: device name {name!r} or results are malformed")
        target = Path(out) if out is not None else local_table_path(name)
        check_output(target, "file", force)
        wall_s = float(data.get("wall_s", 0.0))
        manifest = make_manifest(device, m["settings"], wall_s, "bundle", env=data.get("environment", {}))
        st = m["settings"]
        table = build_table(space, device, results, archs, points, manifest, (), st.get("statistic", "auto"),
                            st.get("drift", "auto"))
    except NasBertDeployError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, ArithmeticError) as exc:
        raise TableError(f"{p} is not a complete bundle results file ({type(exc).__name__}: {exc}); "
                         f"run the bundle's {RUNNER_NAME} again") from None
    table.save(target)
    return table, target
