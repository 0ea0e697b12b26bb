"""Fitting a latency table's whole-model correction, and its leave-one-out error.

Per (batch, seq_len) point a table predicts a whole model from two regressors computed from the table
and the space: `parts` (the sum of the model's operations timed alone, ms) and `mparams` (the weights
those operations stream, millions of parameters). A *plane* is

    scale * parts + ms_per_mparam * mparams + offset_ms

and a correction is the **maximum of one or two planes**. One plane is the affine model of schema 2.
The second one follows the cache-size step: once a model's weights stop fitting in the last-level
cache, every call streams them from DRAM, and at short sequences such models run 1.3-1.6x their
isolated parts (measured on this project's machine, docs/profiling.md). The maximum of planes keeps
the search exact: `max(p1, p2) <= L` is `p1 <= L and p2 <= L`, two additive constraints, and a linear
interpolation between two points' maxima is the maximum of the interpolated plane pairs.

Fit: a plane is a non-negative least-squares fit of the *relative* error (the upper plane's offset may
be negative). The two-plane candidates are every split of the models by weight (5+ models on each side),
a plane fitted on each side. The correction is the candidate -- one plane or a split -- with the lowest
**5-fold cross-validated** error (folds dealt round-robin over the models sorted by weight, so each spans
the range), and a split must beat one plane by 10%: a second plane is kept only where it predicts models
it was not fitted on better (on data without a step, one plane is kept). Choosing by cross-validation
rather than by the fit to all models matters: a plane fitted on one side can overshoot on models outside
that side, and with 40 models the fit to all of them does not always see it (900 random 40/50 splits of
the reference tables' 90 measured models per point: choosing by the fit to all left more than 20% of
the held-out models outside +-10% in 10 splits, cross-validation in 1; docs/profiling.md). One plane
is refitted once without outliers (robust); a split is not: models near the step are not noise.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

Plane = tuple[float, float, float]  # (scale, ms_per_mparam, offset_ms)
MIN_SIDE = 5  # models on each side of a two-plane split


def plane_value(plane: Plane, parts: float, mparams: float) -> float:
    return plane[0] * parts + plane[1] * mparams + plane[2]


def planes_value(planes: Sequence[Plane], parts: float, mparams: float) -> float:
    """The correction's prediction: the largest plane."""
    return max(plane_value(p, parts, mparams) for p in planes)


def _nnls_relative(X: Any, y: Any) -> Any:
    """Non-negative coefficients minimising sum(((X @ coef) - y) / y)^2: every support set is solved by least
    squares and the best non-negative solution kept (exact NNLS for the few columns used here)."""
    A, ones = X / y[:, None], np.ones_like(y)
    k = X.shape[1]
    best, best_res = np.zeros(k), float(len(y))  # all-zero coefficients: every relative residual is -1
    for r in range(1, k + 1):
        for cols in itertools.combinations(range(k), r):
            sol, *_ = np.linalg.lstsq(A[:, cols], ones, rcond=None)
            if (sol < 0).any():
                continue
            coef = np.zeros(k)
            coef[list(cols)] = sol
            res = float(np.sum((A @ coef - ones) ** 2))
            if res < best_res - 1e-15:
                best, best_res = coef, res
    return best


def _fit_plane(P: np.ndarray, W: np.ndarray, y: np.ndarray, free_offset: bool) -> Plane:
    cols = [P, W, np.ones_like(y)] + ([-np.ones_like(y)] if free_offset else [])
    c = _nnls_relative(np.stack(cols, axis=1), y)
    return float(c[0]), float(c[1]), float(c[2] - (c[3] if free_offset else 0.0))


def _outliers_kept(rel: np.ndarray) -> np.ndarray:
    """Models whose relative residual is within 3 robust standard deviations (MAD) of the median, at least 5%."""
    dev = np.abs(rel - np.median(rel))
    return dev <= max(3 * 1.4826 * float(np.median(dev)), 0.05)


def fit_correction(parts_ms: Sequence[float], mparams: Sequence[float], measured_ms: Sequence[float],
                   robust: bool = True, free_offset: bool = False) -> Plane:
    """One plane (scale, ms_per_mparam, offset_ms), coefficients >= 0 (the offset free with `free_offset`),
    minimising the squared *relative* error vs measured.

    `robust`: refit once without the models whose relative residual is more than 3 robust standard
    deviations (MAD) from the median, at least 5% -- a whole model timed while another process took
    the core would otherwise tilt the fit. Needs 5+ models; the error report keeps every model.
    """
    y = np.asarray(measured_ms, float)
    P, W = np.asarray(parts_ms, float), np.asarray(mparams, float)
    plane = _fit_plane(P, W, y, free_offset)
    if robust and len(y) >= 5:
        keep = _outliers_kept((plane[0] * P + plane[1] * W + plane[2] - y) / y)
        if 4 <= keep.sum() < len(y):
            plane = _fit_plane(P[keep], W[keep], y[keep], free_offset)
    return plane


def _rel_sse(planes: Sequence[Plane], P: np.ndarray, W: np.ndarray, y: np.ndarray) -> float:
    pred = np.max([p[0] * P + p[1] * W + p[2] for p in planes], axis=0)
    return float(np.sum(((pred - y) / y) ** 2))


def _split_fit(P: np.ndarray, W: np.ndarray, y: np.ndarray, split: float) -> list[Plane]:
    lo = W <= split
    return [_fit_plane(P[lo], W[lo], y[lo], False), _fit_plane(P[~lo], W[~lo], y[~lo], True)]


CV_FOLDS = 5
KEEP_SPLIT = 0.9  # a split must cut the cross-validated error of one plane by 10%


def _cv_sse(P: np.ndarray, W: np.ndarray, y: np.ndarray, split: float | None) -> float | None:
    """Relative SSE of one plane (`split` None) or of the split at `split`, each model predicted by the fit to
    the other folds; None where a training side has fewer than 3 models."""
    fold = np.empty(len(y), int)
    fold[np.argsort(W, kind="stable")] = np.arange(len(y)) % CV_FOLDS
    sse = 0.0
    for f in range(CV_FOLDS):
        tr = fold != f
        if split is None:
            planes = [_fit_plane(P[tr], W[tr], y[tr], False)]
        else:
            lo = W[tr] <= split
            if lo.sum() < 3 or (~lo).sum() < 3:
                return None
            planes = _split_fit(P[tr], W[tr], y[tr], split)
        sse += _rel_sse(planes, P[~tr], W[~tr], y[~tr])
    return sse


def fit_planes(parts_ms: Sequence[float], mparams: Sequence[float], measured_ms: Sequence[float],
               robust: bool = True, max_planes: int = 2) -> tuple[list[Plane], float | None]:
    """The correction (one or two planes, see the module docstring) and the weight split (Mparams) it was
    fitted with (None for one plane)."""
    y = np.asarray(measured_ms, float)
    P, W = np.asarray(parts_ms, float), np.asarray(mparams, float)
    n = len(y)
    if max_planes >= 2 and n >= 2 * MIN_SIDE:
        one = _cv_sse(P, W, y, None)
        best: tuple[float, float] | None = None
        ws = np.sort(W)
        for i in range(MIN_SIDE - 1, n - MIN_SIDE):
            if ws[i + 1] <= ws[i]:
                continue  # equal weights cannot be split
            split = float((ws[i] + ws[i + 1]) / 2)
            sse = _cv_sse(P, W, y, split)
            if sse is not None and (best is None or sse < best[0]):
                best = (sse, split)
        if best is not None and one is not None and best[0] < KEEP_SPLIT * one:
            return _split_fit(P, W, y, best[1]), best[1]
    return [fit_correction(P, W, y, robust)], None


def correction_dict(planes: Sequence[Plane], split_mparams: float | None) -> dict[str, Any]:
    """A table's stored form of a correction."""
    return {
        "planes": [{"scale": a, "ms_per_mparam": m, "offset_ms": c} for a, m, c in planes],
        "split_mparams": split_mparams,
    }


def held_out_errors(parts_ms: Sequence[float], mparams: Sequence[float], measured_ms: Sequence[float],
                    max_planes: int = 2) -> dict[str, Any]:
    """Leave-one-out error of `fit_planes`: MAPE (%), max |error| (%), share within +-10%, per-model predictions."""
    n = len(parts_ms)
    preds = []
    for i in range(n):
        rest = [j for j in range(n) if j != i]
        planes, _ = fit_planes([parts_ms[j] for j in rest], [mparams[j] for j in rest], [measured_ms[j] for j in rest],
                               max_planes=max_planes)
        preds.append(planes_value(planes, parts_ms[i], mparams[i]))
    errs = [100.0 * (p - m) / m for p, m in zip(preds, measured_ms)]
    return {
        "method": "leave-one-out",
        "models": n,
        "mape_pct": sum(abs(e) for e in errs) / n if n else None,
        "max_abs_pct": max((abs(e) for e in errs), default=None),
        "within_10pct": sum(abs(e) <= 10.0 for e in errs) / n if n else None,
        "predicted_ms": preds,
    }


def cv_errors(parts_ms: Sequence[float], mparams: Sequence[float], measured_ms: Sequence[float],
              folds: int = CV_FOLDS) -> dict[str, Any]:
    """`folds`-fold cross-validated error of the whole correction procedure (`fit_planes` on the other folds,
    folds dealt round-robin by weight): MAPE (%) and share within +-10%. Cheaper than `held_out_errors`
    (5 fits instead of n): what the profiler compares measurement modes by."""
    y = np.asarray(measured_ms, float)
    P, W = np.asarray(parts_ms, float), np.asarray(mparams, float)
    fold = np.empty(len(y), int)
    fold[np.argsort(W, kind="stable")] = np.arange(len(y)) % folds
    errs = np.empty(len(y))
    for f in range(folds):
        tr = fold != f
        planes, _ = fit_planes(P[tr], W[tr], y[tr])
        pred = np.max([p[0] * P[~tr] + p[1] * W[~tr] + p[2] for p in planes], axis=0)
        errs[~tr] = 100.0 * (pred - y[~tr]) / y[~tr]
    return {"models": len(y), "mape_pct": float(np.mean(np.abs(errs))), "within_10pct": float(np.mean(np.abs(errs) <= 10.0))}
