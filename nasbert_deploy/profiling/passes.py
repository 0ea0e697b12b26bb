"""The timing passes of a profile: shuffled passes with the reference model between items, then adaptive rounds.

Every item is timed at every point in `settings.passes` shuffled passes, its rounds spread over them
(`rounds_due`); the reference model is timed at the start of every pass, after every `reference_every`
items and after the last, each round keeping its pass and a run-wide counter `n` so that it can be set
against the reference timed around it (`measurement`). Then, per point, items whose rounds differ by more
than `adaptive_spread_pct` get extra rounds in further passes, the most discordant first, while the time
they take stays within `adaptive_budget` x the base passes' timing time (for the table's items and the
held-out models apart), up to `max_rounds` rounds each.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from nasbert_deploy.errors import DeviceError
from nasbert_deploy.profiling.items import REFERENCE_KEY, Item, make_inputs, reference_item
from nasbert_deploy.profiling.measurement import spread_pct
from nasbert_deploy.profiling.settings import ProfileSettings
from nasbert_deploy.profiling.table import point_key
from nasbert_deploy.space import SearchSpace

Progress = Callable[[str, int, int], None]  # (phase 'export' | 'host-check' | 'time' | 'extra', done, total)
Results = dict[str, dict[str, list[dict[str, Any]]]]  # key -> point key -> one Timing dict (+ pass, n, s) per round


def rounds_due(rounds: int, passes: int, after_pass: int) -> int:
    """How many of an item's `rounds` are due once pass `after_pass` (0-based) of `passes` is done: its
    rounds are spread evenly over the passes (3 of 5: passes 0, 2 and 4)."""
    if rounds <= 1:
        return 1
    return sum(round(j * (passes - 1) / (rounds - 1)) <= after_pass for j in range(rounds))


@contextmanager
def pinned(cpu: int | None) -> Iterator[None]:
    """Run the block on CPU `cpu` only (None: as started), then restore the process's CPUs."""
    if cpu is None:
        yield
        return
    try:
        old = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {cpu})
    except (AttributeError, OSError) as exc:
        raise DeviceError(f"cannot pin the timing to CPU {cpu} (this machine has {os.cpu_count()}): {exc}") from None
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


class _Timer:
    """Times items and the reference, keeping the rounds in `results` (each with its pass and counter `n`)."""

    def __init__(self, compiled: dict[str, Any], space: SearchSpace, settings: ProfileSettings, results: Results,
                 state: dict[str, Any], save: Callable[[], None], clock: dict[str, float], holdout_keys: frozenset[str]):
        self.compiled, self.space, self.st, self.results = compiled, space, settings, results
        self.state, self.save, self.clock, self.holdout_keys = state, save, clock, holdout_keys
        self.ref = reference_item(space) if REFERENCE_KEY in compiled else None

    def _add(self, what: str, seconds: float) -> None:
        self.clock[what] = self.clock.get(what, 0.0) + seconds

    def time(self, it: Item, b: int, s: int, pass_: int, extra: bool = False) -> None:
        from nasbert_deploy.runtimes.base import time_compiled

        t0 = time.perf_counter()
        feed = make_inputs(it.inputs, b, s, self.space.vocab_size, seed=self.st.seed)
        t = time_compiled(self.compiled[it.key], feed, **self.st.measure_kwargs(kind=it.kind))
        n = self.state["n"] = self.state.get("n", 0) + 1
        seconds = time.perf_counter() - t0
        self.results.setdefault(it.key, {}).setdefault(point_key(b, s), []).append(
            {**t.to_dict(), "pass": pass_, "n": n, "s": round(seconds, 4)})
        group = "holdout_" if it.key in self.holdout_keys else ""
        self._add(f"{group}timing_s", seconds)
        if extra:
            self._add(f"{group}adaptive_s", seconds)
        if it.kind == "reference":
            self._add("reference_s", seconds)
        self.save()

    def run_pass(self, order: Sequence[Item], b: int, s: int, pass_: int, extra: bool = False,
                 each: Callable[[], None] | None = None) -> None:
        """Time `order` at (b, s), the reference before the first, after every `reference_every` and after the last."""
        every = self.st.reference_every
        for i, it in enumerate(order):
            if self.ref is not None and every > 0 and i % every == 0:
                self.time(self.ref, b, s, pass_, extra)
            self.time(it, b, s, pass_, extra)
            if each:
                each()
        if self.ref is not None and every > 0 and order:
            self.time(self.ref, b, s, pass_, extra)


def time_items(
    items: Sequence[Item],
    points: Sequence[tuple[int, int]],
    compiled: dict[str, Any],
    space: SearchSpace,
    settings: ProfileSettings,
    results: Results,
    save: Callable[[], None],
    state: dict[str, Any],
    progress: Progress | None = None,
    clock: dict[str, float] | None = None,
    holdout_keys: frozenset[str] = frozenset(),
) -> Results:
    """The timing passes, then the adaptive extra rounds (see the module docstring). `results` and `state` are
    updated in place and `save()` called after every timing (resumability); `clock` gets the seconds spent
    (`timing_s`, `reference_s`, `adaptive_s`, and `holdout_*` for the models in `holdout_keys`)."""
    clock = clock if clock is not None else {}
    timer = _Timer(compiled, space, settings, results, state, save, clock, holdout_keys)
    passes = settings.passes

    def have(it: Item, pk: str) -> int:
        return len(results.get(it.key, {}).get(pk, []))

    todo = [it for it in items if any(have(it, point_key(b, s)) < settings.rounds_of(it.kind) for b, s in points)]
    total = sum(max(0, settings.rounds_of(it.kind) - have(it, point_key(b, s))) for it in todo for b, s in points)
    done = [0]

    def tick() -> None:
        done[0] += 1
        if progress:
            progress("time", done[0], total)

    for r in range(passes):
        for b, s in points:
            pk = point_key(b, s)
            order = list(todo)
            random.Random(f"{settings.seed}/{r}/{pk}").shuffle(order)
            timer.run_pass([it for it in order if have(it, pk) < rounds_due(settings.rounds_of(it.kind), passes, r)],
                           b, s, r, each=tick)
    if settings.adaptive_budget > 0:
        for b, s in points:
            _adaptive(timer, items, b, s, settings, state, holdout_keys, progress)
    return results


def _adaptive(timer: _Timer, items: Sequence[Item], b: int, s: int, settings: ProfileSettings, state: dict[str, Any],
              holdout_keys: frozenset[str], progress: Progress | None) -> None:
    """Extra rounds at one point for the items whose rounds disagree, the most discordant first, within budget."""
    pk = point_key(b, s)
    st = state.setdefault("adaptive", {}).setdefault(pk, {"passes": 0, "spent_s": {}, "done": False})
    if st["done"]:
        return
    results, passes = timer.results, settings.passes

    def group(it: Item) -> str:
        return "holdout" if it.key in holdout_keys else "table"

    base: dict[str, float] = {}
    for it in items:
        rounds = results.get(it.key, {}).get(pk, [])[: settings.rounds_of(it.kind)]
        base[group(it)] = base.get(group(it), 0.0) + sum(r.get("s", 0.0) for r in rounds)
    budget = {g: settings.adaptive_budget * v for g, v in base.items()}
    while True:
        spent = st["spent_s"]
        flagged = []
        for it in items:
            rounds = results.get(it.key, {}).get(pk, [])
            sp = spread_pct([r["median_ms"] for r in rounds]) if rounds else 0.0
            if rounds and len(rounds) < settings.max_rounds and sp > settings.adaptive_spread_pct:
                flagged.append((sp, it))
        chosen, cost = [], {g: 0.0 for g in budget}
        for _, it in sorted(flagged, key=lambda x: -x[0]):
            g, est = group(it), results[it.key][pk][-1].get("s", 0.0)
            if spent.get(g, 0.0) + cost[g] + est <= budget[g]:
                chosen.append(it)
                cost[g] += est
        if not chosen:
            st["done"] = True
            timer.save()
            return
        r = passes + st["passes"]
        random.Random(f"{settings.seed}/{r}/{pk}").shuffle(chosen)
        before = {g: timer.clock.get(k, 0.0) for g, k in (("table", "adaptive_s"), ("holdout", "holdout_adaptive_s"))}
        timer.run_pass(chosen, b, s, r, extra=True)
        for g, k in (("table", "adaptive_s"), ("holdout", "holdout_adaptive_s")):
            spent[g] = spent.get(g, 0.0) + timer.clock.get(k, 0.0) - before[g]
        st["passes"] += 1
        timer.save()
        if progress:
            progress("extra", round(sum(spent.values())), round(sum(budget.values())))
