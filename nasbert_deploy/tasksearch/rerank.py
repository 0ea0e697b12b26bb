"""Re-scoring the search's top candidates before the final distillation (KD-NAS: the best of the top candidates
goes on to the full task).

One proxy evaluation is noisy: its split of the training file, its head and its batch order move an architecture's
proxy accuracy by several points (on debian-sections, 1,024 rows x 2 epochs, 1,600 held-out rows: the same arch
scored 0.66 and 0.58 under two split seeds), as much as the gaps between the candidates the controller ends up
comparing. So the `k` distinct architectures with the highest reward are evaluated again under `seeds - 1` more
proxy seeds (each a new stratified split, head and batch order; the search's own seed counts as the first), and the
one with the highest reward on the mean accuracy is the pick. Every extra evaluation is cached next to the search's
cache (`cache.seedN.json`, same format), so a rerank resumes and a shared cache serves several searches.

With a supernet start the candidates may include NAS-BERT's task-agnostic picks within the budget
(`agnostic_archs`): the task search then returns the agnostic student when the proxy cannot tell a better one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from nasbert_deploy.tasksearch.controllers import reward
from nasbert_deploy.tasksearch.loop import ProxySetup
from nasbert_deploy.tasksearch.request import STATE_DIR, Prepared, TaskSearchRequest

Note = Callable[[str], None]


def top_archs(histories: Iterable[list[dict[str, Any]]], k: int) -> list[str]:
    """The `k` distinct architectures with the highest reward over the episodes of one or more searches (rewarded
    ones only: an over-budget arch has reward 0), best first; ties keep the earlier episode."""
    best: dict[str, float] = {}
    for history in histories:
        for h in history:
            if h["reward"] > 0 and h["reward"] > best.get(h["arch"], -1.0):
                best[h["arch"]] = h["reward"]
    return [a for a, _ in sorted(best.items(), key=lambda kv: -kv[1])][:k]


AGNOSTIC_FRACTIONS = (1.0, 0.85, 0.7)


def agnostic_archs(request: TaskSearchRequest, prepared: Prepared, fractions: Iterable[float] = AGNOSTIC_FRACTIONS,
                   note: Note = print) -> list[str]:
    """NAS-BERT's task-agnostic picks (least supernet loss, `export.pipeline.select_arch`) within `fractions` of the
    latency budget on the search's table: candidates for the rerank, so the task search weighs the agnostic
    student too (it is erratic across budgets: at one budget an attention-free pick, a little below it one with
    attention). Supernet starts only (an ETD start has no candidate table): [] otherwise; a fraction no
    architecture meets is skipped."""
    from nasbert_deploy.errors import InfeasibleBudgetError
    from nasbert_deploy.export.pipeline import select_arch

    if prepared.supernet_dir is None:
        return []
    if not (prepared.supernet_dir / "candidates.json").is_file():
        note(f"rerank: the supernet {prepared.supernet_dir} has no candidate table; no task-agnostic candidates")
        return []
    out: list[str] = []
    for f in fractions:
        budget = replace(request.budget, max_latency_ms=request.budget.max_latency_ms * f)
        try:
            arch = str(select_arch(request.spec, budget, request.batch, request.seq_len, prepared.supernet_dir,
                                   [prepared.table]).arch)
        except InfeasibleBudgetError:
            continue
        if arch not in out and prepared.check.fits(prepared.space.parse(arch)):
            out.append(arch)
    note(f"rerank: {len(out)} task-agnostic picks within {', '.join(f'{f:g}' for f in fractions)} x the budget")
    return out


def rerank_candidates(request: TaskSearchRequest, prepared: Prepared, histories: Iterable[list[dict[str, Any]]],
                      note: Note = print) -> list[str]:
    """The rerank's candidates: the `request.rerank_top` best archs of the searches' `histories`, the user's
    `request.rerank_archs`, then (with `request.rerank_agnostic`) NAS-BERT's picks not already among them."""
    cands = top_archs(histories, request.rerank_top)
    own = [str(prepared.space.parse(a)) for a in request.rerank_archs]  # the user's (e.g. hand-designed) students
    cands += [a for a in dict.fromkeys(own) if a not in cands]
    if request.rerank_agnostic:
        cands += [a for a in agnostic_archs(request, prepared, note=note) if a not in cands]
    return cands


def rerank(request: TaskSearchRequest, prepared: Prepared, net: Any, candidates: list[str], seeds: int,
           note: Note = print, cache: Path | None = None) -> dict[str, Any]:
    """Score `candidates` under `seeds` proxy seeds (request.proxy.seed, +1, ...); returns the pick and every score:
    `{"best_arch", "seeds", "candidates": [{"arch", "accuracies", "mean", "sd", "latency_ms", "reward"}, ...]}`,
    candidates sorted by reward on the mean accuracy. `cache`: the first seed's cache file (default the search's,
    so its evaluations are reused; a rerank from other starts keeps its own)."""
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    if not candidates:
        raise ValueError("no candidates to rerank")
    state_dir = request.out / STATE_DIR
    state_dir.mkdir(parents=True, exist_ok=True)
    base_cache = cache or request.cache or state_dir / "cache.json"
    target = request.budget.max_latency_ms
    space, check = prepared.space, prepared.check
    accs: dict[str, list[float]] = {a: [] for a in candidates}
    for i in range(seeds):
        seed = request.proxy.seed + i
        cache_path = base_cache if i == 0 else base_cache.with_name(f"{base_cache.stem}.seed{seed}.json")
        setup = ProxySetup(request, prepared, net, replace(request.proxy, seed=seed), cache_path, state_dir)
        todo = sum(a not in setup.cache for a in candidates)
        if todo:
            note(f"rerank: proxy seed {seed} ({i + 1}/{seeds}): {todo} of {len(candidates)} candidates to evaluate")
        for a in candidates:
            rec = setup.accuracy(a, check.costs(space.parse(a)))
            accs[a].append(float(rec["accuracy"]))
    rows = []
    for a in candidates:
        lat = check.costs(space.parse(a)).latency_ms
        mean = float(np.mean(accs[a]))
        rows.append({"arch": a, "accuracies": accs[a], "mean": mean, "sd": float(np.std(accs[a])), "latency_ms": lat,
                     "reward": reward(mean, lat, target, request.latency_weight)})
    rows.sort(key=lambda r: -r["reward"])
    for r in rows:
        note(f"rerank: {r['arch']} proxy {prepared.metric} {r['mean']:.3f} +- {r['sd']:.3f} over {seeds} seeds, "
             f"{r['latency_ms']:.2f} ms, reward {r['reward']:.3f}")
    return {"best_arch": rows[0]["arch"], "seeds": seeds, "candidates": rows}
