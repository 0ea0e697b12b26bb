"""From timed rounds to figures: the round statistic, drift normalisation, and the host's noise ceiling.

Every item is timed in several rounds (separate `timing.measure` calls in shuffled passes, minutes apart).
Each round is a dict with the `Timing` fields plus `pass` (which pass) and `n` (a counter over the whole
run), so that it can be set against the **reference model** (`items.reference_item`) timed in the same
pass before and after it:

    rel = round median / reference median interpolated (by `n`) between the reference timings around it

A slow minute of the host slows the reference too and cancels in `rel`. An item's figure is then either
*raw*, `round_statistic(round medians)`, or *normalised*, `round_statistic(rels) x` the reference's typical
median at that point (the median of all its timings), i.e. the item's latency at the host's typical state.

**Noise ceiling.** Each whole model's rounds are split into two interleaved halves (rounds 1, 3, ... and
2, 4, ...: separate passes), each half turned into a figure the same way: two measurements of the same
model. The share of models whose two measurements are within +-10% of each other, and the MAPE between
them, is how well the host reproduces its own figures; a prediction cannot be checked more closely than that.
`floor_*` is the error a *perfect* predictor would show against the mean of the two halves
(|a - b| / (a + b)).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from nasbert_deploy.errors import TableError
from nasbert_deploy.runtimes.timing import DEFAULT_STATISTIC, STATISTICS, round_statistic

Round = Mapping[str, Any]
DRIFT_MODES = ("auto", "raw", "normalised")
NOISE_MARGIN = 0.02  # a prediction within 2 points of the ceiling's share within +-10% is limited by the noise


def reference_at(refs: Sequence[Round], pass_: int, n: int) -> float | None:
    """The reference median around timing `n` of pass `pass_`: interpolated (by `n`) between the reference
    timings just before and after it in that pass, the nearer one if only one side has one; None if none."""
    same = [r for r in refs if r.get("pass") == pass_ and "n" in r]
    before = max((r for r in same if r["n"] < n), key=lambda r: r["n"], default=None)
    after = min((r for r in same if r["n"] > n), key=lambda r: r["n"], default=None)
    if before is None and after is None:
        return None
    if before is None or after is None:
        return float((before or after)["median_ms"])  # type: ignore[index]
    w = (n - before["n"]) / (after["n"] - before["n"])
    return float((1 - w) * before["median_ms"] + w * after["median_ms"])


def relative_rounds(rounds: Sequence[Round], refs: Sequence[Round]) -> list[float] | None:
    """Each round's median over the reference timed around it in the same pass; None if any round has none."""
    out = []
    for r in rounds:
        ref = reference_at(refs, r["pass"], r["n"]) if "pass" in r and "n" in r else None
        if not ref:
            return None
        out.append(r["median_ms"] / ref)
    return out


def reference_typical(refs: Sequence[Round]) -> float | None:
    """The reference's typical median (ms) at one point: the median over all its timings; None if never timed."""
    meds = [float(r["median_ms"]) for r in refs]
    return statistics.median(meds) if meds else None


def figure(rounds: Sequence[Round], refs: Sequence[Round], statistic: str, normalised: bool) -> float:
    """An item's figure in ms from its rounds (see the module docstring)."""
    if not normalised:
        return round_statistic([r["median_ms"] for r in rounds], statistic)
    rel, typ = relative_rounds(rounds, refs), reference_typical(refs)
    if rel is None or typ is None:
        raise TableError("normalised figures need the reference model timed in every pass; profile again")
    return round_statistic(rel, statistic) * typ


def half_figures(rounds: Sequence[Round], refs: Sequence[Round], statistic: str, normalised: bool) -> tuple[float, float] | None:
    """The figures of the two interleaved halves of an item's rounds (None with fewer than 2 rounds)."""
    if len(rounds) < 2:
        return None
    return figure(rounds[0::2], refs, statistic, normalised), figure(rounds[1::2], refs, statistic, normalised)


def noise_ceiling(pairs: Sequence[tuple[float, float]]) -> dict[str, Any] | None:
    """Agreement of two measurements of the same models (see the module docstring); None without pairs.

    `within_10pct`, `mape_pct`: the first half as a re-measurement of the second (error relative to the second);
    `floor_within_10pct`, `floor_mape_pct`: |a - b| / (a + b), a perfect predictor's error against their mean."""
    if not pairs:
        return None
    err = [100.0 * (a - b) / b for a, b in pairs]
    floor = [100.0 * abs(a - b) / (a + b) for a, b in pairs]
    n = len(pairs)
    return {
        "models": n,
        "within_10pct": sum(abs(e) <= 10.0 for e in err) / n,
        "mape_pct": sum(abs(e) for e in err) / n,
        "max_abs_pct": max(abs(e) for e in err),
        "floor_within_10pct": sum(f <= 10.0 for f in floor) / n,
        "floor_mape_pct": sum(floor) / n,
    }


def limited_by(within_10pct: float, ceiling: Mapping[str, Any] | None) -> str | None:
    """'noise' where the prediction's share within +-10% is no more than `NOISE_MARGIN` below the ceiling's
    (the host does not reproduce its own figures better), else 'prediction'; None without a ceiling."""
    if not ceiling:
        return None
    return "noise" if within_10pct >= ceiling["within_10pct"] - NOISE_MARGIN else "prediction"


def candidates(statistic: str, drift: str, have_reference: bool) -> list[tuple[str, bool]]:
    """The (statistic, normalised) pairs to choose among, the default first (the choice on a tie)."""
    if statistic != "auto" and statistic not in STATISTICS:
        raise TableError(f"unknown round statistic {statistic!r}; valid: auto, {', '.join(STATISTICS)}")
    if drift not in DRIFT_MODES:
        raise TableError(f"unknown drift mode {drift!r}; valid: {', '.join(DRIFT_MODES)}")
    if drift == "normalised" and not have_reference:
        raise TableError("drift 'normalised' needs the reference model timed in every pass (reference_every > 0)")
    stats = [DEFAULT_STATISTIC] + [s for s in STATISTICS if s != DEFAULT_STATISTIC] if statistic == "auto" else [statistic]
    norms = {"raw": [False], "normalised": [True]}.get(drift, [False, True] if have_reference else [False])
    return [(s, n) for n in norms for s in stats]


def spread_pct(values: Sequence[float]) -> float:
    """How far apart an item's rounds were: slowest over fastest, minus 1, in percent (0 for one round)."""
    return 100.0 * (max(values) / min(values) - 1.0) if len(values) > 1 else 0.0
