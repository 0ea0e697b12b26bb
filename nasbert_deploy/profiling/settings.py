"""How hard and how the profiler measures: `ProfileSettings` (docs/profiling.md has the reasons for the defaults)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

EXECUTION_ONLY = ("export_workers", "cache_dir")  # settings that change how fast, not what is measured


@dataclass(frozen=True)
class ProfileSettings:
    """How to measure (docs/profiling.md has the reasons for the defaults).

    Every operation is timed in `rounds` shuffled passes (each `warmup` calls, then at least `runs` calls and
    `min_time_s`), every whole model in `model_rounds` rounds of `model_min_time_s` (an even number: the noise
    ceiling compares two halves), spread over the same passes; whole models and the reference take
    `model_warmup` and at least `model_runs` calls (a 30 ms model in 20 runs would be 0.6 s a round).
    The reference model is timed for `reference_min_time_s` at the start of each pass and after every
    `reference_every` items (0: never; no drift normalisation). `drift` ('auto', 'raw', 'normalised') and
    `statistic` ('auto' or a name in `timing.STATISTICS`) fix the measurement mode or leave it to
    cross-validation. Items whose rounds differ by more than `adaptive_spread_pct` get extra rounds within
    `adaptive_budget` (share of the base timing; 0: none), up to `max_rounds` each. `host_check_rounds`
    rounds of the reference before timing; above `noisy_host_pct` spread the host is reported too noisy.
    `pin_cpu` pins the timing to one CPU (exports still use all). `export_workers` (0: one per CPU) and
    `cache_dir` (None: `$NASBERT_DEPLOY_CACHE` or ~/.cache/nasbert-deploy/exports) only change how fast.
    """

    warmup: int = 5
    runs: int = 20
    min_time_s: float = 0.2
    max_cv: float | None = None  # no re-measuring: the rounds are the repeats (docs/profiling.md)
    retries: int = 1
    rounds: int = 3
    model_rounds: int = 4
    model_min_time_s: float = 0.2
    model_runs: int = 5  # whole models and the reference: at least this many timed runs (runs: operations)
    model_warmup: int = 2
    validate: int = 30
    seed: int = 0
    holdout: int = 0  # whole models timed in the same passes but never fitted: a true held-out error
    holdout_seed: int | None = None  # seed of the held-out architectures (None: `seed`); a new one draws new models
    reference_every: int = 24
    reference_min_time_s: float = 0.1
    drift: str = "auto"
    statistic: str = "auto"
    adaptive_budget: float = 0.08
    adaptive_spread_pct: float = 5.0
    max_rounds: int = 8
    host_check_rounds: int = 10
    noisy_host_pct: float = 10.0
    pin_cpu: int | None = None
    export_workers: int = 0
    cache_dir: str | None = None

    def measure_kwargs(self, model: bool = False, kind: str | None = None) -> dict[str, Any]:
        kind = kind or ("model" if model else "op")
        t = {"model": self.model_min_time_s, "reference": self.reference_min_time_s}.get(kind, self.min_time_s)
        whole = kind in ("model", "reference")  # 1-50 ms a call: `min_time_s`, not 20 runs, should set the cost
        return {"warmup": self.model_warmup if whole else self.warmup, "runs": self.model_runs if whole else self.runs,
                "min_time_s": t, "max_cv": self.max_cv, "retries": self.retries}

    def rounds_of(self, kind: str) -> int:
        return self.model_rounds if kind == "model" else self.rounds

    @property
    def passes(self) -> int:
        return max(self.rounds, self.model_rounds)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def identity(self) -> dict[str, Any]:
        """What a resumed run must share with the interrupted one (not how fast it exports)."""
        return {k: v for k, v in asdict(self).items() if k not in EXECUTION_ONLY}


# `profile --fast`: a usable table for a small space (the shipped supernet's) in <= 3 minutes on 2 cores, exports
# included (measured in docs/profiling.md). Fewer and shorter rounds, fewer fitting models, a shorter host check;
# the exports are the cached, parallel ones of every profile. The table's leave-one-out error says what it cost.
FAST = {"warmup": 3, "runs": 10, "min_time_s": 0.1, "rounds": 2, "model_rounds": 2, "model_min_time_s": 0.1,
        "validate": 12, "adaptive_budget": 0.1, "host_check_rounds": 4}


def fast_settings(**overrides: Any) -> ProfileSettings:
    """The `FAST` preset, with `overrides` (settings the user gave explicitly) on top."""
    return ProfileSettings(**{**FAST, **overrides})

