"""A latency table from timed rounds: the measurement mode, the entries, per-point corrections, errors, noise.

`build_table` turns the profiler's (or a bundle runner's) rounds into a `LatencyTable`:

1. **Measurement mode** (`choose_measurement`): which round statistic (`timing.STATISTICS`) and whether
   drift-normalised (`measurement`) or raw figures. Each candidate's correction is fitted on the fitting
   models and its **5-fold cross-validated** MAPE (every model predicted by a fit that did not see it,
   `fit.cv_errors`) averaged over the points decides; the default (raw lowest medians, what schema <= 3
   tables hold) wins ties and is kept where there are too few whole models (< 10) to decide. The separate
   held-out models never take part in the choice: their error per candidate is stored beside it, so the
   table shows whether the choice also holds on models nobody chose with.
2. **Entries**: each item's figure in that mode (`median_ms`, the field predictions read), with its lowest
   round median (`min_ms`), its rounds (`rounds_ms`, and the reference around each, `rounds_ref_ms`), and
   its figure relative to the reference (`rel_ref`).
3. **Per point**: the correction (`fit.fit_planes`) with its leave-one-out error, the held-out error, and the
   **noise ceiling** (`measurement.noise_ceiling`, over all whole models) with which of the two limits
   each error (`limited_by`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from nasbert_deploy.devices import DeviceSpec
from nasbert_deploy.errors import TableError
from nasbert_deploy.profiling.fit import CV_FOLDS, correction_dict, cv_errors, fit_planes, held_out_errors, planes_value
from nasbert_deploy.profiling.host import environment
from nasbert_deploy.profiling.items import REFERENCE_KEY, model_item, reference_item, validation_archs
from nasbert_deploy.profiling.measurement import (
    candidates,
    figure,
    half_figures,
    limited_by,
    noise_ceiling,
    reference_at,
    reference_typical,
    relative_rounds,
    spread_pct,
)
from nasbert_deploy.profiling.table import LatencyTable, parse_point_key, point_key, table_keys
from nasbert_deploy.runtimes.timing import round_statistic
from nasbert_deploy.space import Arch, SearchSpace

Rounds = Sequence[Mapping[str, Any]]
Results = Mapping[str, Mapping[str, Rounds]]


def best_timing(rounds: Rounds) -> dict[str, Any]:
    """The round with the lowest median (noise only ever adds latency), with the number of rounds."""
    best = min(rounds, key=lambda t: t["median_ms"])
    return {k: v for k, v in {**best, "rounds": len(rounds)}.items() if k not in ("pass", "n", "s")}


def round_spread_pct(rounds: Rounds) -> float:
    """How far apart an item's rounds were: slowest over fastest median, minus 1, in percent."""
    return spread_pct([t["median_ms"] for t in rounds])


def _refs(results: Results, pk: str) -> Rounds:
    return results.get(REFERENCE_KEY, {}).get(pk, [])


def _entry(rounds: Rounds, refs: Rounds, statistic: str, normalised: bool) -> dict[str, Any]:
    best = best_timing(rounds)
    out = {**best, "median_ms": figure(rounds, refs, statistic, normalised), "min_ms": best["median_ms"],
           "spread_pct": round_spread_pct(rounds), "rounds_ms": [r["median_ms"] for r in rounds]}
    rel = relative_rounds(rounds, refs)
    if rel is not None:
        out["rel_ref"] = round_statistic(rel, statistic)
        out["rounds_ref_ms"] = [reference_at(refs, r["pass"], r["n"]) for r in rounds]
    return out


def _entries(space: SearchSpace, results: Results, pks: Sequence[str], statistic: str, normalised: bool) -> dict[str, Any]:
    entries: dict[str, dict[str, Any]] = {}
    for key in table_keys(space):
        for pk in pks:
            timings = results.get(key, {}).get(pk)
            if not timings:
                raise TableError(f"no measurement of {key!r} at {pk}; profile again (or re-run the bundle)")
            entries.setdefault(key, {})[pk] = _entry(timings, _refs(results, pk), statistic, normalised)
    return entries


def _figures(results: Results, archs: Sequence[Arch], pk: str, statistic: str, normalised: bool, what: str) -> list[float]:
    rounds = [results.get(model_item(a).key, {}).get(pk) for a in archs]
    if not all(rounds):
        raise TableError(f"{what} models are missing measurements at {pk}; profile again")
    return [figure(r, _refs(results, pk), statistic, normalised) for r in rounds]  # type: ignore[arg-type]


def _ceiling(results: Results, archs: Sequence[Arch], pk: str, statistic: str, normalised: bool) -> dict[str, Any] | None:
    pairs = [half_figures(results[model_item(a).key][pk], _refs(results, pk), statistic, normalised) for a in archs]
    return noise_ceiling([p for p in pairs if p is not None])


def _has_reference(results: Results, keys: Sequence[str], pks: Sequence[str]) -> bool:
    """Whether every round of `keys` at `pks` has the reference timed around it in its pass."""
    return all(relative_rounds(results.get(k, {}).get(pk, []), _refs(results, pk)) is not None and _refs(results, pk)
               for k in keys for pk in pks)


def choose_measurement(space: SearchSpace, results: Results, archs: Sequence[Arch], holdout: Sequence[Arch],
                       pks: Sequence[str], statistic: str = "auto", drift: str = "auto") -> dict[str, Any]:
    """The measurement mode of a table (see the module docstring): {"statistic", "normalised", "chosen_by",
    "candidates": [{"statistic", "normalised", "cv_mape_pct", "holdout_mape_pct", ..., "points": {...}}]}."""
    keys = table_keys(space) + [model_item(a).key for a in list(archs) + list(holdout)]
    cands = candidates(statistic, drift, _has_reference(results, keys, pks))
    if len(cands) == 1:
        return {"statistic": cands[0][0], "normalised": cands[0][1], "chosen_by": "settings", "candidates": []}
    if len(archs) < 2 * CV_FOLDS:
        return {"statistic": cands[0][0], "normalised": cands[0][1], "candidates": [],
                "chosen_by": f"default (fewer than {2 * CV_FOLDS} whole models to cross-validate)"}
    report = []
    for stat, norm in cands:
        points: dict[str, Any] = {}
        for pk in pks:
            b, s = parse_point_key(pk)
            t = LatencyTable(space, {}, _entries(space, results, [pk], stat, norm))
            parts = [t.raw_sum_ms(a, b, s) for a in archs]
            mparams = [t.weight_mparams(a) for a in archs]
            measured = _figures(results, archs, pk, stat, norm, "validation")
            cv = cv_errors(parts, mparams, measured)
            row = {"cv_mape_pct": cv["mape_pct"], "cv_within_10pct": cv["within_10pct"]}
            if holdout:
                planes, _ = fit_planes(parts, mparams, measured)
                got = _figures(results, holdout, pk, stat, norm, "held-out")
                errs = [100.0 * (planes_value(planes, t.raw_sum_ms(a, b, s), t.weight_mparams(a)) - m) / m
                        for a, m in zip(holdout, got)]
                row.update(holdout_mape_pct=sum(map(abs, errs)) / len(errs),
                           holdout_within_10pct=sum(abs(e) <= 10.0 for e in errs) / len(errs))
            ceil = _ceiling(results, list(archs) + list(holdout), pk, stat, norm)
            if ceil:
                row.update(ceiling_within_10pct=ceil["within_10pct"], ceiling_mape_pct=ceil["mape_pct"])
            points[pk] = row
        mean = {k: sum(p[k] for p in points.values()) / len(points) for k in next(iter(points.values()))}
        report.append({"statistic": stat, "normalised": norm, **mean, "points": points})
    best = min(range(len(report)), key=lambda i: (round(report[i]["cv_mape_pct"], 2), i))
    return {"statistic": report[best]["statistic"], "normalised": report[best]["normalised"],
            "chosen_by": f"{CV_FOLDS}-fold cross-validated MAPE on the fitting models", "candidates": report}


def build_table(
    space: SearchSpace,
    device: dict[str, Any],
    results: Results,
    archs: Sequence[Arch],
    points: Sequence[tuple[int, int]],
    manifest: dict[str, Any],
    holdout: Sequence[Arch] = (),
    statistic: str = "auto",
    drift: str = "auto",
) -> LatencyTable:
    """Entries in the chosen measurement mode; per point, the correction fitted on the whole models `archs`, its
    leave-one-out error, the error on the `holdout` models (timed in the same passes, never fitted) and the
    noise ceiling (see the module docstring)."""
    pks = [point_key(b, s) for b, s in points]
    for pk in pks:  # a clear error before any fitting
        _figures(results, archs, pk, "min", False, "validation")
    mode = choose_measurement(space, results, archs, holdout, pks, statistic, drift)
    stat, norm = mode["statistic"], mode["normalised"]
    ref: dict[str, Any] = {}
    if all(_refs(results, pk) for pk in pks):
        ref = {"key": REFERENCE_KEY, "arch": reference_item(space).arch, "points": {
            pk: {"median_ms": reference_typical(_refs(results, pk)), "timings": len(_refs(results, pk)),
                 "spread_pct": round_spread_pct(_refs(results, pk))} for pk in pks}}
    table = LatencyTable(space, device, _entries(space, results, pks, stat, norm), {}, {}, manifest, mode, ref)
    for (b, s), pk in zip(points, pks):
        measured = _figures(results, archs, pk, stat, norm, "validation")
        if len(archs) < 3:
            continue  # too few to fit and hold out: correction stays (1, 0, 0)
        model_rounds = [results[model_item(a).key][pk] for a in archs]
        _fit_point(table, pk, [table.raw_sum_ms(a, b, s) for a in archs], [table.weight_mparams(a) for a in archs],
                   measured, [str(a) for a in archs], [space.params(a) for a in archs], list(map(round_spread_pct, model_rounds)))
        v = table.validation[pk]
        v["rounds_ms"] = [[r["median_ms"] for r in rr] for rr in model_rounds]
        if ref:
            v["rounds_ref_ms"] = [[reference_at(_refs(results, pk), r["pass"], r["n"]) for r in rr] for rr in model_rounds]
        ceiling = _ceiling(results, list(archs) + list(holdout), pk, stat, norm)
        if ceiling:
            v["noise_ceiling"] = ceiling
            v["limited_by"] = limited_by(v["within_10pct"], ceiling)
        if holdout:
            got = _figures(results, holdout, pk, stat, norm, "held-out")
            spread = [round_spread_pct(results[model_item(a).key][pk]) for a in holdout]
            h = holdout_errors(table, holdout, got, b, s, spread)
            if ceiling:
                h["limited_by"] = limited_by(h["within_10pct"], ceiling)
            v["holdout"] = h
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
        **table.validation.get(pk, {}),
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
    table measured by an older build to this build's correction (its measurement mode and noise ceiling stay)."""
    for pk, v in list(table.validation.items()):
        try:
            parts, mparams, measured = (list(map(float, v[k])) for k in ("parts_ms", "weight_mparams", "measured_ms"))
            archs, params = list(v["archs"]), list(v["params"])
        except (KeyError, TypeError, ValueError):
            raise TableError(f"table's validation at {pk} lacks the whole-model data to refit; profile again") from None
        held = v.get("holdout")
        if len(parts) >= 3:
            _fit_point(table, pk, parts, mparams, measured, archs, params, v.get("round_spread_pct"))
            if v.get("noise_ceiling"):
                table.validation[pk]["limited_by"] = limited_by(table.validation[pk]["within_10pct"], v["noise_ceiling"])
        if held:
            b, s = parse_point_key(pk)
            held_archs = [table.space.parse(a) for a in held["archs"]]
            h = holdout_errors(table, held_archs, held["measured_ms"], b, s, held.get("round_spread_pct"))
            if v.get("noise_ceiling"):
                h["limited_by"] = limited_by(h["within_10pct"], v["noise_ceiling"])
            table.validation[pk]["holdout"] = h
    table.manifest["refitted"] = datetime.now(UTC).isoformat(timespec="seconds")
    return table


def spec_dict(spec: DeviceSpec) -> dict[str, Any]:
    d = spec.to_dict()
    d.pop("source", None)
    return d


def make_manifest(spec_or_dict: DeviceSpec | dict[str, Any], settings: dict[str, Any], wall_s: float, source: str,
                  env: dict[str, Any] | None = None) -> dict[str, Any]:
    env = env if env is not None else environment()
    device = spec_dict(spec_or_dict) if isinstance(spec_or_dict, DeviceSpec) else spec_or_dict
    return {
        "device": device,
        "runtime_versions": env.get("runtime_versions", {}),
        "cpu_model": env.get("cpu_model"),
        "gpu_model": env.get("gpu_model"),
        **{k: env[k] for k in ("cpu_features", "logical_cpus") if env.get(k) is not None},  # machine_mismatch's finer check
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "profiling_wall_s": round(wall_s, 2),
        "settings": settings,
        "source": source,
    }
