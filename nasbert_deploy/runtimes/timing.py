"""The one measurement function used by the profiler, the validator, the export report and benchmarks,
and the one way of combining several rounds of it into a figure (`round_statistic`)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

# What `measure` times with: wall time, or this process's CPU time, which leaves out the time other processes take
# from the core (a 1-thread runtime on a shared, oversubscribed host; it still includes their cache pollution).
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


@dataclass(frozen=True)
class Timing:
    """Latency statistics of repeated blocking runs, in milliseconds."""

    median_ms: float
    p90_ms: float
    mean_ms: float
    cv: float  # coefficient of variation (std / mean) of the kept runs
    runs: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Timing:
        return cls(**{k: d[k] for k in ("median_ms", "p90_ms", "mean_ms", "cv", "runs")})


def _stats(samples_ms: list[float]) -> Timing:
    s = sorted(samples_ms)
    mean = statistics.fmean(s)
    std = statistics.pstdev(s) if len(s) > 1 else 0.0
    p90 = s[min(len(s) - 1, int(round(0.9 * (len(s) - 1))))]
    return Timing(median_ms=statistics.median(s), p90_ms=p90, mean_ms=mean, cv=std / mean if mean else 0.0, runs=len(s))


def measure(
    fn: Callable[[], Any],
    *,
    warmup: int = 5,
    runs: int = 30,
    min_time_s: float = 0.0,
    max_runs: int = 2000,
    max_cv: float | None = None,
    retries: int = 2,
    sync: Callable[[], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Timing:
    """Time `fn()` (which must block until its result is ready; pass `sync` for async devices).

    `clock` (seconds) is wall time by default; `time.process_time` (this process's CPU time) measures a 1-thread
    runtime without the time other processes take from its core, on a shared, oversubscribed host.

    Warm-up calls, then at least `runs` timed calls and at least `min_time_s` of timing (capped at
    `max_runs`). If `max_cv` is given and the coefficient of variation exceeds it, the whole
    measurement is repeated up to `retries` times and the least noisy one is kept.
    """
    best: Timing | None = None
    for _ in range(retries + 1):
        for _ in range(warmup):
            fn()
        if sync:
            sync()
        samples: list[float] = []
        start = time.perf_counter()
        while len(samples) < runs or (time.perf_counter() - start < min_time_s and len(samples) < max_runs):
            t0 = clock()
            fn()
            if sync:
                sync()
            samples.append((clock() - t0) * 1e3)
        t = _stats(samples)
        if best is None or t.cv < best.cv:
            best = t
        if max_cv is None or best.cv <= max_cv:
            break
    assert best is not None
    return best


# How several rounds (separate `measure` calls, minutes apart) of one item become its figure. The profiler
# picks one per table by cross-validated error on whole models (`profiling.measurement`); the validator and
# the export report use the table's choice, so all three combine rounds the same way.
STATISTICS = ("min", "fastest_half", "median", "trimmed")
DEFAULT_STATISTIC = "min"  # what tables of schema <= 3 used: the lowest round median (noise only adds latency)


def round_statistic(values: Sequence[float], statistic: str = DEFAULT_STATISTIC) -> float:
    """Combine per-round figures (round medians in ms, or ratios to a reference) into one.

    `min`: the lowest; `fastest_half`: the mean of the fastest ceil(k/2); `median`: the median; `trimmed`: the
    interquartile mean (drop floor(k/4) from each end; the mean below 4 rounds).
    """
    if not values:
        raise ValueError("no rounds to combine")
    s = sorted(values)
    k = len(s)
    if statistic == "min":
        return s[0]
    if statistic == "fastest_half":
        return statistics.fmean(s[: (k + 1) // 2])
    if statistic == "median":
        return statistics.median(s)
    if statistic == "trimmed":
        cut = k // 4
        return statistics.fmean(s[cut: k - cut])
    raise ValueError(f"unknown round statistic {statistic!r}; valid: {', '.join(STATISTICS)}")
