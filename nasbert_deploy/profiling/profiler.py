"""Profile a device: time every distinct operation of a space in isolation, validate on whole models.

    table = profile_device(load_device("cpu-ort"), STANDARD, Path("profiles/cpu-ort.json"))

1. **Exports** (`cache`): every item of `items.op_items` (operations at every hidden size, boundaries,
   embeddings, heads, the per-call overhead), the reference model and `validate` (+ `holdout`) random whole
   models are converted through the device's runtime plug-in (the path `export` uses), on all cores, into a
   cache reused across runs and interruptions; whole models are assembled from their parts' graphs.
2. **Host check** (`host.check_host`): the reference model's round spread before timing; a `NoisyHostWarning`
   says what to do when the host is too noisy for +-10% figures.
3. **Passes**: every item is timed with `timing.measure` at every point in shuffled passes, its rounds spread
   over them (`rounds_due`); the reference model is timed at the start of every pass and after every
   `reference_every` items, so each timing can be set against the host's state around it (drift).
4. **Adaptive rounds**: items whose rounds disagree by more than `adaptive_spread_pct` get extra rounds,
   the most discordant first, within `adaptive_budget` (a share of the base passes' timing time, for the
   table's items and the held-out models apart), up to `max_rounds`.
5. **The table** (`build.build_table`): the measurement mode (round statistic, raw or drift-normalised)
   chosen by cross-validated error, the per-point corrections, the errors and the noise ceiling.

Interrupting loses nothing measured: completed timings are kept in a partial file beside the output
(`.NAME.json.partial`) and skipped on the next run, exports are in the cache; only the final table is
written, atomically.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nasbert_deploy.devices import DeviceSpec
from nasbert_deploy.errors import DeviceError, NoisyHostWarning
from nasbert_deploy.fileio import write_json_atomic
from nasbert_deploy.profiling.build import (  # noqa: F401  (re-exported: the profiler's public interface)
    best_timing,
    build_table,
    holdout_archs,
    holdout_errors,
    make_manifest,
    refit_table,
    round_spread_pct,
    spec_dict,
)
from nasbert_deploy.profiling.cache import ExportCache, compile_items
from nasbert_deploy.profiling.host import check_host
from nasbert_deploy.profiling.items import (
    REFERENCE_KEY,
    Item,
    make_inputs,
    model_item,
    op_items,
    reference_item,
    validation_archs,
)
from nasbert_deploy.profiling.passes import Progress, Results, pinned, rounds_due, time_items  # noqa: F401
from nasbert_deploy.profiling.settings import EXECUTION_ONLY, ProfileSettings  # noqa: F401
from nasbert_deploy.profiling.table import LatencyTable, point_key
from nasbert_deploy.runtimes.base import require_available
from nasbert_deploy.space import SearchSpace


def partial_path(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


def points_of(spec: DeviceSpec, space: SearchSpace) -> list[tuple[int, int]]:
    too_long = [s for s in spec.seq_lens if s > space.max_positions]
    if too_long:
        raise DeviceError(f"device {spec.name!r}: seq_lens {too_long} exceed the space's {space.max_positions} positions")
    return [(b, s) for b in spec.batch_sizes for s in spec.seq_lens]


def _load_partial(path: Path, identity: dict[str, Any]) -> dict[str, Any]:
    if path.is_file():
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            state = {}
        if isinstance(state, dict) and state.get("identity") == identity:
            return state
    return {"kind": "nasbert-profile-partial", "identity": identity, "results": {}, "wall_s": 0.0, "clock": {}}


def run_items(
    items: Sequence[Item],
    points: Sequence[tuple[int, int]],
    spec: DeviceSpec,
    space: SearchSpace,
    settings: ProfileSettings,
    results: Results,
    save: Callable[[], None],
    progress: Progress | None = None,
    clock: dict[str, float] | None = None,
    holdout_keys: frozenset[str] = frozenset(),
) -> Results:
    """Export (through the cache, models in a temporary run folder) and time `items` (with the reference model
    when `settings.reference_every` > 0) at `points`: what the latency benchmark uses for models alone."""
    import tempfile

    ref = [reference_item(space)] if settings.reference_every > 0 else []
    with tempfile.TemporaryDirectory(prefix="nasbert-run-") as tmp:
        compiled, _ = compile_items([[i for i in items if not i.is_model], ref + [i for i in items if i.is_model]], spec,
                                    space, ExportCache.at(settings.cache_dir), ExportCache(Path(tmp)), settings.export_workers,
                                    progress)
        with pinned(settings.pin_cpu):
            time_items(items, points, compiled, space, settings, results, save, {}, progress, clock, holdout_keys)
    return results


def profile_device(
    spec: DeviceSpec,
    space: SearchSpace,
    out: str | Path,
    settings: ProfileSettings | None = None,
    progress: Progress | None = None,
) -> LatencyTable:
    """Profile `spec` for `space`, write the table atomically to `out` and return it (resumes a partial run).
    Warns (`NoisyHostWarning`) when the host check finds the host too noisy for +-10% figures."""
    import hashlib

    settings = settings or ProfileSettings()
    require_available(spec)
    points = points_of(spec, space)
    out = Path(out)
    ppath = partial_path(out)
    identity = {"device": spec_dict(spec), "space_hash": space.space_hash(), "settings": settings.identity()}
    state = _load_partial(ppath, identity)
    archs = validation_archs(space, settings.validate, settings.seed)
    held = holdout_archs(space, settings.holdout, settings.seed if settings.holdout_seed is None else settings.holdout_seed,
                         archs)
    held_keys = frozenset(model_item(a).key for a in held)
    items = op_items(space) + [model_item(a) for a in archs + held]
    start, before = time.perf_counter(), float(state["wall_s"])

    def save() -> None:
        state["wall_s"] = before + time.perf_counter() - start
        write_json_atomic(ppath, state)

    clock = state.setdefault("clock", {})
    cache = ExportCache.at(settings.cache_dir)
    run_id = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    run_cache = ExportCache(cache.root / "runs" / run_id)
    ref = [reference_item(space)] if settings.reference_every > 0 or settings.host_check_rounds > 0 else []
    stage_names = ["export_s", "export_s", "export_s", "holdout_export_s"]  # parts (-1), ops, models, held-out

    def stage_clock(i: int, seconds: float) -> None:
        clock[stage_names[i + 1]] = clock.get(stage_names[i + 1], 0.0) + seconds

    compiled, made = compile_items([op_items(space), ref + [model_item(a) for a in archs], [model_item(a) for a in held]],
                                   spec, space, cache, run_cache, settings.export_workers, progress, stage_clock)
    state.setdefault("exports", {})
    for k, v in made.items():
        state["exports"][k] = state["exports"].get(k, 0) + v
    ref_compiled = compiled.get(REFERENCE_KEY) if settings.reference_every > 0 else compiled.pop(REFERENCE_KEY, None)
    with pinned(settings.pin_cpu):
        host = state.get("host_check")
        if host is None and ref_compiled is not None and settings.host_check_rounds > 0:
            host = _host_check(ref_compiled, space, points[0], settings, progress, clock)
            state["host_check"] = host
            save()
        if host and host["too_noisy"]:
            warnings.warn(host["advice"], NoisyHostWarning, stacklevel=2)
        time_items(items, points, compiled, space, settings, state["results"], save, state, progress, clock, held_keys)
    held_s = sum(clock.get(k, 0.0) for k in ("holdout_export_s", "holdout_timing_s"))
    wall = before + time.perf_counter() - start - held_s  # the held-out models are a check, not part of the table
    t0 = time.perf_counter()
    manifest = make_manifest(spec, settings.to_dict(), wall, "direct")
    table = build_table(space, spec_dict(spec), state["results"], archs, points, manifest, held, settings.statistic,
                        settings.drift)
    clock["fit_s"] = time.perf_counter() - t0
    manifest["profiling_breakdown_s"] = {k: round(v, 2) for k, v in clock.items()}
    manifest["exports"] = dict(state.get("exports", {}))
    if host:
        manifest["host_check"] = host
    table.save(out)
    ppath.unlink(missing_ok=True)
    shutil.rmtree(run_cache.root, ignore_errors=True)
    return table


def _host_check(compiled_ref: Any, space: SearchSpace, point: tuple[int, int], settings: ProfileSettings,
                progress: Progress | None, clock: dict[str, float]) -> dict[str, Any]:
    """The reference model's rounds before timing (`host.check_host`), as a dict for the manifest."""
    t0 = time.perf_counter()
    if progress:
        progress("host-check", 0, 1)
    item = reference_item(space)
    fn = compiled_ref.bind(make_inputs(item.inputs, *point, space.vocab_size, seed=settings.seed))
    check = check_host(fn, settings.host_check_rounds, settings.noisy_host_pct, sync=compiled_ref.sync,
                       **settings.measure_kwargs(kind="model"))
    clock["host_check_s"] = clock.get("host_check_s", 0.0) + time.perf_counter() - t0
    if progress:
        progress("host-check", 1, 1)
    return {**check.to_dict(), "point": point_key(*point)}
