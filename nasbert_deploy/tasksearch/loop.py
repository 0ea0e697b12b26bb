"""The search loop: a controller proposes, the proxy evaluates (or the cache answers), the reward goes back.

On disk under `out/search/` (JSON, written atomically after every episode, so Ctrl-C loses at most the
evaluation in flight): `state.json` (the request's key, the episode, the controller's state with its random
generator, the history, the best) and `cache.json` (every evaluated architecture keyed by its arch string, with
proxy accuracy, macro-F1, loyalty, latency, params, seconds; valid for one proxy setting and one start: the
supernet, or for ETD the init, space and encoder). Teacher logits for the
proxy rows are computed once (`teacher_logits.safetensors`). Run again with the same request: it resumes and says so.

The search stops after `evaluations` distinct architectures, or `4 * evaluations` episodes (a controller that keeps
proposing archs it has seen), whichever comes first.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nasbert_deploy.fileio import atomic_path, write_json_atomic
from nasbert_deploy.student.tasks import TaskData
from nasbert_deploy.tasksearch.controllers import make_controller, reward
from nasbert_deploy.tasksearch.proxy import ProxyConfig, ProxyEvaluator, split_proxy
from nasbert_deploy.tasksearch.request import STATE_DIR, Prepared, TaskSearchRequest, read_json, resumed_state
from nasbert_deploy.tasksearch.retrieval import proxy_config, search_proxy

Note = Callable[[str], None]
EPISODES_PER_EVALUATION = 4


@dataclass
class SearchOutcome:
    """The best architecture found (by reward), its record, every episode, the cost."""

    best_arch: str
    best: dict[str, Any]
    history: list[dict[str, Any]]
    evaluations: int
    episodes: int
    wall_s: float
    rejected: int
    fallbacks: int
    proxy_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"best_arch": self.best_arch, "best": self.best, "evaluations": self.evaluations, "episodes": self.episodes,
                "wall_s": round(self.wall_s, 1), "proxy_s": round(self.proxy_s, 1), "rejected_over_budget": self.rejected,
                "fallbacks": self.fallbacks, "history": self.history, **self.extra}


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def teacher_logits(teacher_model: Path, rows: TaskData, labels: list[str], path: Path, key: str, max_len: int) -> np.ndarray:
    """The teacher's logits (n, c) for `rows`, in `labels` order; read from `path` when it holds them for `key`."""
    from safetensors.numpy import load_file, save_file

    from nasbert_deploy.student.finetune import load_classifier, model_labels, predict_logits

    if path.is_file():
        try:
            data = load_file(str(path))
            if key in data and data[key].shape[0] == len(rows):
                return data[key]
        except Exception:  # a damaged cache is recomputed, not an error
            pass
    teacher, tok = load_classifier(teacher_model)
    order = [model_labels(teacher).index(n) for n in labels]
    logits = predict_logits(teacher, tok, rows, max_len=max_len)[:, order].astype(np.float32)
    with atomic_path(path) as tmp:
        save_file({key: np.ascontiguousarray(logits)}, str(tmp))
    return logits


class ProxySetup:
    """One proxy setting's evaluator and its cache: the split of the training file (`cfg.seed`), the teacher's logits
    for it (computed once, kept in `state_dir`; the file names carry the seed unless it is the search's own), and the
    cache of evaluated architectures at `cache_path` when it holds results of this very setting and start."""

    def __init__(self, request: TaskSearchRequest, prepared: Prepared, net: Any, cfg: ProxyConfig, cache_path: Path,
                 state_dir: Path) -> None:
        self.cfg, self.cache_path = cfg, cache_path
        self.key = _digest({"proxy": cfg.to_dict(), "task": str(request.task), "teacher": str(request.teacher_model),
                            "supernet": str(prepared.supernet_dir), "labels": prepared.labels, **prepared.start_key,
                            **({"retrieval": proxy_config(cfg).to_dict()} if prepared.retrieval else {})})
        self.cache: dict[str, Any] = {}
        if cache_path.is_file():
            data = read_json(cache_path)
            if isinstance(data, dict) and data.get("proxy_key") == self.key:
                self.cache = dict(data.get("archs", {}))
        if prepared.retrieval:
            self.evaluator: Any = search_proxy(request.teacher_model, prepared.train, prepared.tokenizer, net, cfg)
            self.train, self.heldout = self.evaluator.train, self.evaluator.heldout
            return
        self.train, self.heldout = split_proxy(prepared.train, cfg)
        tag = "" if cfg.seed == request.proxy.seed else f"_seed{cfg.seed}"
        t_train = teacher_logits(request.teacher_model, self.train, prepared.labels,
                                 state_dir / f"teacher_logits{tag}.safetensors", "proxy_" + self.key, cfg.max_len)
        t_held = teacher_logits(request.teacher_model, self.heldout, prepared.labels,
                                state_dir / f"teacher_heldout{tag}.safetensors", "heldout_" + self.key, cfg.max_len)
        self.evaluator = ProxyEvaluator(net, prepared.tokenizer, self.train, self.heldout, prepared.labels, t_train, cfg,
                                        t_held)

    def accuracy(self, arch: str, costs: Any) -> dict[str, Any]:
        """The proxy record of `arch` (evaluated now unless cached; the cache is written at once)."""
        if arch not in self.cache:
            r = self.evaluator.evaluate(arch)
            self.cache[arch] = {"accuracy": r.accuracy, "macro_f1": r.macro_f1, "label_loyalty": r.label_loyalty,
                                "latency_ms": costs.latency_ms, "params": costs.params, "proxy_s": round(r.seconds, 2)}
            write_json_atomic(self.cache_path, {"proxy_key": self.key, "proxy": self.cfg.to_dict(), "archs": self.cache})
        return dict(self.cache[arch])


def run_search(request: TaskSearchRequest, prepared: Prepared, net: Any, note: Note = print) -> SearchOutcome:
    """Search within the budget: at most `request.evaluations` distinct architectures; resumable. `net`: where the
    students start (a `Supernet`, or a `tasksearch.start` start: `.space`, `.extract(arch, **config)`)."""
    state_dir = request.out / STATE_DIR
    state_dir.mkdir(parents=True, exist_ok=True)
    state_path, cache_path = state_dir / "state.json", request.cache or state_dir / "cache.json"
    cfg = request.proxy
    proxy = ProxySetup(request, prepared, net, cfg, cache_path, state_dir)
    cache = proxy.cache

    check, target = prepared.check, request.budget.max_latency_ms
    ctrl = make_controller(request.controller, prepared.space, check.fits, prepared.fastest, request.seed)
    key = request.key()
    episode, history, seen, wall = 0, [], [], 0.0
    st = resumed_state(request)  # OutputError: a search with other settings (`prepare` said so before any work)
    if st is not None:
        ctrl.load_state(st["controller"])
        episode, history, seen, wall = st["episode"], st["history"], st["seen"], st["wall_s"]
        if len(seen) < request.evaluations:
            note(f"resuming the task search at episode {episode + 1} ({len(seen)} of {request.evaluations} "
                 f"evaluations done, {len(cache)} archs cached)")
    t0 = time.perf_counter() - wall
    max_episodes = EPISODES_PER_EVALUATION * request.evaluations
    while len(seen) < request.evaluations and episode < max_episodes:
        arch = ctrl.propose()
        a = str(arch)
        rec = proxy.accuracy(a, check.costs(arch))
        lat = check.costs(arch).latency_ms  # this run's table (a shared cache may come from another)
        rew = reward(rec["accuracy"], lat, target, request.latency_weight)
        ctrl.observe(arch, rew)
        episode += 1
        new = a not in seen
        if new:
            seen.append(a)
        history.append({"episode": episode, "arch": a, "accuracy": rec["accuracy"], "latency_ms": lat,
                        "params": rec["params"], "reward": rew, "new": new})
        best = max(history, key=lambda h: h["reward"])
        wall = time.perf_counter() - t0
        write_json_atomic(state_path, {"key": key, "episode": episode, "controller": ctrl.state(), "history": history,
                                       "seen": seen, "wall_s": wall})
        note(f"episode {episode}: eval {len(seen)}/{request.evaluations} ({100 * len(seen) // request.evaluations}% "
             f"of budget) {prepared.metric} {rec['accuracy']:.3f} {lat:.2f} ms reward {rew:.3f} | best {best['reward']:.3f} "
             f"(ep {best['episode']}) | {wall:.0f}s")
    best = max(history, key=lambda h: h["reward"])
    proxy_s = sum(cache[a].get("proxy_s", 0.0) for a in seen if a in cache)
    return SearchOutcome(best["arch"], {**best, **{k: v for k, v in cache[best["arch"]].items() if k != "latency_ms"}},
                         history, len(seen), episode, wall, ctrl.state()["rejected"], ctrl.state()["fallbacks"], proxy_s,
                         {"controller": request.controller, "proxy_rows": len(proxy.train), "heldout_rows": len(proxy.heldout)})
