"""Loss vs predicted latency: a sample of feasible architectures, the exact Pareto front, the choice."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nasbert_deploy.search.problem import Budget, ScoredArch, SearchProblem


def plot_search(
    problem: SearchProblem,
    budget: Budget,
    chosen: ScoredArch,
    front: list[ScoredArch],
    path: str | os.PathLike[str],
    samples: int = 4000,
    seed: int = 0,
) -> Path:
    """Write a PNG (atomically): sampled feasible archs (grey), Pareto front (line), chosen arch (star)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from nasbert_deploy.fileio import atomic_path

    ms, loss = problem.sample(budget, samples, seed)
    fig = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.scatter(ms, loss, s=4, c="0.7", alpha=0.5, label=f"feasible sample ({len(ms)} of {samples} random)")
    if front:
        ax.step([s.latency_ms for s in front], [s.loss for s in front], where="post", c="tab:blue", lw=1.5)
        xs, ys = [s.latency_ms for s in front], [s.loss for s in front]
        ax.scatter(xs, ys, s=14, c="tab:blue", label=f"Pareto front ({len(front)})")
    ax.scatter([chosen.latency_ms], [chosen.loss], s=160, marker="*", c="tab:red", zorder=5, label="chosen")
    ax.axvline(budget.max_latency_ms, c="tab:red", ls="--", lw=1, label=f"budget {budget.max_latency_ms:g} ms")
    ax.set_xlabel(f"predicted latency (ms), batch {problem.batch}, seq {problem.seq_len}")
    ax.set_ylabel("loss (sum of block losses)")
    ax.set_title(f"search: {problem.candidates.size():.3g} architectures, {budget.flags()}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    target = Path(path)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png")
    return target
