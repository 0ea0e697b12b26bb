"""Profile a device: time every distinct operation of a space in isolation, validate on whole models.

    table = profile_device(load_device("cpu-ort"), STANDARD, Path("profiles/cpu-ort.json"))

For each (batch, seq_len) point of the device spec, each item of `profile_items.op_items` (the layer
operations at every hidden size, the block boundaries, embeddings, heads and the per-call overhead) is
exported ONCE through the device's runtime (`runtimes.get_runtime(spec.runtime).compile`, dynamic batch
and sequence) and timed with `timing.measure` at every point. `validate` random whole models, spread over
the parameter range, are compiled and timed the same way, in the same shuffled rounds (machine noise is
spread over all items), and fit the per-point correction (`latency_fit.fit_planes`: the maximum of one or
two planes, each a scale on the parts, a per-weight term and an offset) whose leave-one-out error is
stored in the table.

Interrupting loses nothing measured: completed (item, point, round) timings are kept in a partial file
beside the output (`.NAME.json.partial`) and skipped on the next run; only the final table is written,
atomically.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nasbert_deploy.devices import DeviceSpec
from nasbert_deploy.errors import DeviceError, TableError
from nasbert_deploy.fileio import write_json_atomic
from nasbert_deploy.profiling.fit import correction_dict, fit_planes, held_out_errors
from nasbert_deploy.profiling.items import Item, make_inputs, model_item, op_items, validation_archs
from nasbert_deploy.profiling.table import LatencyTable, environment, parse_point_key, point_key, table_keys
from nasbert_deploy.runtimes.base import require_available
from nasbert_deploy.space import Arch, SearchSpace

Progress = Callable[[str, int, int], None]  # (phase 'export' | 'time', done, total)
Results = dict[str, dict[str, list[dict[str, float]]]]  # key -> point key -> one Timing dict per round


@dataclass(frozen=True)
class ProfileSettings:
    """How hard to measure. Every operation is timed in `rounds` shuffled passes, every whole model in
    `model_rounds` (of `model_min_time_s` each), spread evenly over the same passes; each entry keeps its
    least-noisy round (lowest median). More, shorter model rounds sample more moments of a noisy host
    (on a shared last-level cache, models near the cache step vary most); on the development VM 5 x 0.2 s
    showed no measurable gain over 3 x 0.3 s and cost torch ~1.5x the model timing, so the default is
    the same as for operations (docs/profiling.md)."""

    warmup: int = 5
    runs: int = 20
    min_time_s: float = 0.3
    max_cv: float | None = 0.1
    retries: int = 1
    rounds: int = 3
    model_rounds: int = 3
    model_min_time_s: float = 0.3
    validate: int = 30
    seed: int = 0
    holdout: int = 0  # whole models timed in the same passes but never fitted: a true held-out error

    def measure_kwargs(self, model: bool = False) -> dict[str, Any]:
        return {"warmup": self.warmup, "runs": self.runs, "min_time_s": self.model_min_time_s if model else self.min_time_s,
                "max_cv": self.max_cv, "retries": self.retries}

    def rounds_of(self, kind: str) -> int:
        return self.model_rounds if kind == "model" else self.rounds

    @property
    def passes(self) -> int:
        return max(self.rounds, self.model_rounds)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rounds_due(rounds: int, passes: int, after_pass: int) -> int:
    """How many of an item's `rounds` are due once pass `after_pass` (0-based) of `passes` is done: its
    rounds are spread evenly over the passes (3 of 5: passes 0, 2 and 4)."""
    if rounds <= 1:
        return 1
    return sum(round(j * (passes - 1) / (rounds - 1)) <= after_pass for j in range(rounds))


def partial_path(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


def points_of(spec: DeviceSpec, space: SearchSpace) -> list[tuple[int, int]]:
    too_long = [s for s in spec.seq_lens if s > space.max_positions]
    if too_long:
        raise DeviceError(f"device {spec.name!r}: seq_lens {too_long} exceed the space's {space.max_positions} positions")
    return [(b, s) for b in spec.batch_sizes for s in spec.seq_lens]


def spec_dict(spec: DeviceSpec) -> dict[str, Any]:
    d = spec.to_dict()
    d.pop("source", None)
    return d


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
    """Compile each item still missing a timing, then time all in `settings.passes` shuffled passes (an item
    is timed in the passes its own number of rounds is spread over, `rounds_due`).

    `results` is updated in place and `save()` called after every timing (resumability); `clock`
    accumulates the seconds spent exporting (`export_s`) and timing (`timing_s`); the items in
    `holdout_keys` are clocked apart (`holdout_export_s`, `holdout_timing_s`): they are not part of
    what a table costs to make.
    """
    clock = clock if clock is not None else {}
    from nasbert_deploy.runtimes.base import get_runtime, time_compiled

    rt = get_runtime(spec.runtime)
    passes = settings.passes

    def have(it: Item, pk: str) -> int:
        return len(results.get(it.key, {}).get(pk, []))

    todo = [it for it in items if any(have(it, point_key(b, s)) < settings.rounds_of(it.kind) for b, s in points)]
    total = sum(max(0, settings.rounds_of(it.kind) - have(it, point_key(b, s))) for it in todo for b, s in points)
    with tempfile.TemporaryDirectory(prefix="nasbert-profile-") as wd:
        compiled = {}
        for i, it in enumerate(todo):
            if progress:
                progress("export", i, len(todo))
            t0 = time.perf_counter()
            compiled[it.key] = rt.compile(it.build(space), it.example_inputs(space), it.output_names, spec, Path(wd) / str(i))
            what = "holdout_export_s" if it.key in holdout_keys else "export_s"
            clock[what] = clock.get(what, 0.0) + time.perf_counter() - t0
        if progress:
            progress("export", len(todo), len(todo))
        done = 0
        for r in range(passes):
            for b, s in points:
                pk = point_key(b, s)
                order = list(todo)
                random.Random(f"{settings.seed}/{r}/{pk}").shuffle(order)
                for it in order:
                    if have(it, pk) >= rounds_due(settings.rounds_of(it.kind), passes, r):
                        continue
                    t0 = time.perf_counter()
                    feed = make_inputs(it.inputs, b, s, space.vocab_size, seed=settings.seed)
                    t = time_compiled(compiled[it.key], feed, **settings.measure_kwargs(it.kind == "model"))
                    results.setdefault(it.key, {}).setdefault(pk, []).append(t.to_dict())
                    what = "holdout_timing_s" if it.key in holdout_keys else "timing_s"
                    clock[what] = clock.get(what, 0.0) + time.perf_counter() - t0
                    save()
                    done += 1
                    if progress:
                        progress("time", done, total)
    return results


def best_timing(rounds: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The round with the lowest median (noise only ever adds latency), with the number of rounds."""
    best = min(rounds, key=lambda t: t["median_ms"])
    return {**best, "rounds": len(rounds)}


def round_spread_pct(rounds: Sequence[Mapping[str, float]]) -> float:
    """How far apart an item's rounds were: slowest over fastest median, minus 1, in percent."""
    meds = [t["median_ms"] for t in rounds]
    return 100.0 * (max(meds) / min(meds) - 1.0)


def build_table(
    space: SearchSpace,
    device: dict[str, Any],
    results: Mapping[str, Mapping[str, Sequence[Mapping[str, float]]]],
    archs: Sequence[Arch],
    points: Sequence[tuple[int, int]],
    manifest: dict[str, Any],
    holdout: Sequence[Arch] = (),
) -> LatencyTable:
    """Entries from the measured op timings; per point, the correction fitted on the whole models `archs`,
    and the error on the `holdout` models (timed in the same passes, never fitted)."""
    entries: dict[str, dict[str, dict[str, float]]] = {}
    for key in table_keys(space):
        for b, s in points:
            pk = point_key(b, s)
            timings = results.get(key, {}).get(pk)
            if not timings:
                raise TableError(f"no measurement of {key!r} at {pk}; profile again (or re-run the bundle)")
            entries.setdefault(key, {})[pk] = best_timing(timings)
    table = LatencyTable(space, device, entries, {}, {}, manifest)
    for b, s in points:
        pk = point_key(b, s)
        measured = [best_timing(results[model_item(a).key][pk])["median_ms"] for a in archs if model_item(a).key in results]
        if len(measured) != len(archs):
            raise TableError(f"validation models are missing measurements at {pk}; profile again")
        if len(archs) < 3:
            continue  # too few to fit and hold out: correction stays (1, 0, 0)
        parts = [table.raw_sum_ms(a, b, s) for a in archs]
        mparams = [table.weight_mparams(a) for a in archs]
        spread = [round_spread_pct(results[model_item(a).key][pk]) for a in archs]
        _fit_point(table, pk, parts, mparams, measured, [str(a) for a in archs], [space.params(a) for a in archs], spread)
        if holdout:
            got = [best_timing(results[model_item(a).key][pk])["median_ms"] for a in holdout if model_item(a).key in results]
            if len(got) != len(holdout):
                raise TableError(f"held-out models are missing measurements at {pk}; profile again")
            spread = [round_spread_pct(results[model_item(a).key][pk]) for a in holdout]
            table.validation[pk]["holdout"] = holdout_errors(table, holdout, got, b, s, spread)
    return table


def holdout_archs(space: SearchSpace, n: int, seed: int, exclude: Sequence[Arch]) -> list[Arch]:
    """`n` architectures spread over the parameter range like the validation ones, none of them in `exclude`."""
    if n <= 0:
        return []
    taken = {str(a) for a in exclude}
    pool = [a for a in validation_archs(space, 2 * n + len(taken), seed + 7919) if str(a) not in taken]
    return pool[:: max(1, len(pool) // n)][:n]


def holdout_errors(table: LatencyTable, archs: Sequence[Arch], measured: Sequence[float], batch: int,
                   seq_len: int, spread: Sequence[float] | None = None) -> dict[str, Any]:
    """Error of the table's prediction on models it was not fitted on: MAPE, max, share within +-10%, mean
    (`spread`: each model's round-to-round spread, `round_spread_pct`, kept with the data)."""
    pred = [table.predict(a, batch, seq_len).total_ms for a in archs]
    errs = [100.0 * (p - m) / m for p, m in zip(pred, measured)]
    n = len(errs)
    return {
        "models": n,
        "mape_pct": sum(abs(e) for e in errs) / n,
        "max_abs_pct": max(abs(e) for e in errs),
        "within_10pct": sum(abs(e) <= 10.0 for e in errs) / n,
        "mean_pct": sum(errs) / n,
        "archs": [str(a) for a in archs],
        "measured_ms": list(measured),
        "predicted_ms": pred,
        **({"round_spread_pct": list(spread)} if spread is not None else {}),
    }


def _fit_point(table: LatencyTable, pk: str, parts: list[float], mparams: list[float], measured: list[float],
               archs: list[str], params: list[int], spread: list[float] | None = None) -> None:
    """Fit one point's correction on its whole models and store it with its leave-one-out error."""
    table.corrections[pk] = correction_dict(*fit_planes(parts, mparams, measured))
    raw_err = [100.0 * abs(p - m) / m for p, m in zip(parts, measured)]
    table.validation[pk] = {
        **held_out_errors(parts, mparams, measured),
        "uncorrected_mape_pct": sum(raw_err) / len(raw_err),
        "archs": archs,
        "params": params,
        "measured_ms": measured,
        "parts_ms": parts,
        "weight_mparams": mparams,
        **({"round_spread_pct": spread} if spread is not None else {}),
    }


def refit_table(table: LatencyTable) -> LatencyTable:
    """Fit every point's correction again from the whole models stored in the table (no timing): upgrades a
    table measured by an older build to this build's correction."""
    for pk, v in list(table.validation.items()):
        try:
            parts, mparams, measured = (list(map(float, v[k])) for k in ("parts_ms", "weight_mparams", "measured_ms"))
            archs, params = list(v["archs"]), list(v["params"])
        except (KeyError, TypeError, ValueError):
            raise TableError(f"table's validation at {pk} lacks the whole-model data to refit; profile again") from None
        held = v.get("holdout")
        if len(parts) >= 3:
            _fit_point(table, pk, parts, mparams, measured, archs, params, v.get("round_spread_pct"))
        if held:
            b, s = parse_point_key(pk)
            held_archs = [table.space.parse(a) for a in held["archs"]]
            table.validation[pk]["holdout"] = holdout_errors(table, held_archs, held["measured_ms"], b, s,
                                                             held.get("round_spread_pct"))
    table.manifest["refitted"] = datetime.now(UTC).isoformat(timespec="seconds")
    return table


def make_manifest(spec_or_dict: DeviceSpec | dict[str, Any], settings: dict[str, Any], wall_s: float, source: str,
                  env: dict[str, Any] | None = None) -> dict[str, Any]:
    env = env if env is not None else environment()
    device = spec_dict(spec_or_dict) if isinstance(spec_or_dict, DeviceSpec) else spec_or_dict
    return {
        "device": device,
        "runtime_versions": env.get("runtime_versions", {}),
        "cpu_model": env.get("cpu_model"),
        "gpu_model": env.get("gpu_model"),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "profiling_wall_s": round(wall_s, 2),
        "settings": settings,
        "source": source,
    }


def profile_device(
    spec: DeviceSpec,
    space: SearchSpace,
    out: str | Path,
    settings: ProfileSettings | None = None,
    progress: Progress | None = None,
) -> LatencyTable:
    """Profile `spec` for `space`, write the table atomically to `out` and return it (resumes a partial run)."""
    settings = settings or ProfileSettings()
    require_available(spec)
    points = points_of(spec, space)
    out = Path(out)
    ppath = partial_path(out)
    identity = {"device": spec_dict(spec), "space_hash": space.space_hash(), "settings": settings.to_dict()}
    state = _load_partial(ppath, identity)
    archs = validation_archs(space, settings.validate, settings.seed)
    held = holdout_archs(space, settings.holdout, settings.seed, archs)
    held_keys = frozenset(model_item(a).key for a in held)
    items = op_items(space) + [model_item(a) for a in archs + held]
    start, before = time.perf_counter(), float(state["wall_s"])

    def save() -> None:
        state["wall_s"] = before + time.perf_counter() - start
        write_json_atomic(ppath, state)

    clock = state.setdefault("clock", {})
    run_items(items, points, spec, space, settings, state["results"], save, progress, clock, held_keys)
    # the held-out models are a check, not part of making the table: their time is reported apart
    wall = before + time.perf_counter() - start - clock.get("holdout_export_s", 0.0) - clock.get("holdout_timing_s", 0.0)
    manifest = make_manifest(spec, settings.to_dict(), wall, "direct")
    manifest["profiling_breakdown_s"] = {k: round(v, 2) for k, v in clock.items()}
    table = build_table(space, spec_dict(spec), state["results"], archs, points, manifest, held)
    table.save(out)
    ppath.unlink(missing_ok=True)
    return table
