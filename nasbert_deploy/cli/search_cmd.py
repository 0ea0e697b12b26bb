"""`search`: the exact least-loss architecture under latency / parameter / memory budgets on a device."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any

import typer

from nasbert_deploy.cli.common import console

NO_CANDIDATES = (
    "no candidate table: the default supernet is not installed; pass --candidates FILE "
    "(made by `nasbert-deploy supernet train`)"
)


class Precision(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"


def _latency_table_path(device: str | None, table: Path | None) -> tuple[Path, str | None]:
    """(latency table file, the device spec's precision or None)."""
    from nasbert_deploy.devices import load_device
    from nasbert_deploy.errors import TableError

    if device is None:
        if table is None:
            raise TableError("pass --device NAME (its latency table from profiles/NAME.json) or --table FILE")
        return table, None
    spec = load_device(device)
    if table is None:
        from nasbert_deploy.profiling.table import find_table

        table = find_table(spec.name)
    return table, spec.precision


def _candidates_path(candidates: Path | None, supernet: Path | None) -> Path:
    from nasbert_deploy.errors import CheckpointError, TableError

    if candidates is not None:
        return candidates
    if supernet is not None:
        p = supernet / "candidates.json"
        if not p.is_file():
            raise TableError(f"supernet folder {supernet} has no candidates.json; pass --candidates FILE")
        return p
    try:
        from nasbert_deploy.supernet.default import default_candidates_path

        return default_candidates_path()
    except (ImportError, CheckpointError):
        raise TableError(NO_CANDIDATES) from None


def _load_latency_table(path: Path, space: Any) -> Any:
    """The latency table at `path`, checked to cover `space`'s operations."""
    from nasbert_deploy.profiling.table import LatencyTable

    return LatencyTable.load(path, space)


def _rerank(
    result: Any, space: Any, count: int, supernet: Path | None, teacher: Path | None, heldout: Path | None, seq_len: int
) -> list[Any]:
    from rich.progress import Progress

    from nasbert_deploy.errors import CheckpointError
    from nasbert_deploy.search.rerank import read_heldout, rerank
    from nasbert_deploy.supernet.default import resolve_supernet_dir
    from nasbert_deploy.supernet.network import Supernet
    from nasbert_deploy.teacher import load_teacher

    folder = resolve_supernet_dir(supernet)
    net, _ = Supernet.load(folder)
    if space.space_hash() != net.space.space_hash():
        raise CheckpointError(
            f"supernet {folder} is for space {net.space.name!r} ({net.space.space_hash()}); the candidate table is for "
            f"{space.name!r} ({space.space_hash()}); pass the supernet that made the table with --supernet DIR"
        )
    top = result.best[:count]
    with Progress(console=console, transient=True) as bar:
        bar.add_task(f"re-ranking {len(top)} networks on held-out text", total=None)
        return rerank([s.arch for s in top], [s.loss for s in top], net, load_teacher(teacher), read_heldout(heldout), seq_len)


def register(app: typer.Typer) -> None:
    @app.command("search")
    def search(
        max_latency_ms: float = typer.Option(..., "--max-latency-ms", help="Latency budget (ms) at --batch/--seq-len."),
        device: str | None = typer.Option(None, "--device", help="Device name (latency table profiles/NAME.json)."),
        max_params: str | None = typer.Option(None, "--max-params", help="Parameter budget, embeddings included (10M, 500K)."),
        max_memory_mb: float | None = typer.Option(None, "--max-memory-mb", help="Memory budget (MiB): weights + activations."),
        seq_len: int = typer.Option(128, "--seq-len", min=1, help="Sequence length the budget applies to."),
        batch: int = typer.Option(1, "--batch", min=1, help="Batch size the budget applies to."),
        top: int = typer.Option(1, "--top", min=1, help="Show the K best architectures."),
        json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON only."),
        plot: Path | None = typer.Option(None, "--plot", help="Write loss vs latency (sample, Pareto front, choice) to a PNG."),
        rerank: int = typer.Option(0, "--rerank", min=0, help="Re-rank the top T whole networks on held-out text."),
        candidates: Path | None = typer.Option(None, "--candidates", help="Candidate table (default: the supernet's)."),
        table: Path | None = typer.Option(None, "--table", help="Latency table file (instead of the device's)."),
        supernet: Path | None = typer.Option(None, "--supernet", help="Supernet folder (for --rerank; its candidates.json)."),
        teacher: Path | None = typer.Option(None, "--teacher", help="Teacher for --rerank (default: offline MiniLM-L6)."),
        heldout: Path | None = typer.Option(None, "--heldout", help="Held-out text for --rerank (default: shipped sample)."),
        precision: Precision | None = typer.Option(None, "--precision", help="Weight precision for memory (default: device's)."),
    ) -> None:
        """Exact least-loss architecture under the budgets (sum of block losses; latency from the device's table)."""
        import json

        from nasbert_deploy.errors import ArchError
        from nasbert_deploy.search.problem import Budget, SearchProblem
        from nasbert_deploy.space import parse_count
        from nasbert_deploy.supernet.candidates import CandidateTable

        try:
            params = None if max_params is None else parse_count(max_params)
        except ArchError as exc:
            raise ArchError(f"--max-params: {exc}") from None
        budget = Budget(max_latency_ms, params, max_memory_mb)
        table_path, device_precision = _latency_table_path(device, table)
        cands = CandidateTable.load(_candidates_path(candidates, supernet))
        lat = _load_latency_table(table_path, cands.space)
        table_precision = (getattr(lat, "device", None) or {}).get("precision")
        prec = precision.value if precision is not None else (device_precision or table_precision or "fp32")
        problem = SearchProblem(cands, lat, batch, seq_len, prec)
        result = problem.search(budget, max(top, rerank))
        reranked = _rerank(result, cands.space, rerank, supernet, teacher, heldout, seq_len) if rerank else []
        if reranked:
            order = {str(r.arch): i for i, r in enumerate(reranked)}
            result.best.sort(key=lambda s: order.get(str(s.arch), len(order)))
        result.best = result.best[:top]
        mse = {str(r.arch): r.heldout_mse for r in reranked}
        front = problem.pareto_front(budget) if (plot is not None or json_out) else []
        if plot is not None:
            from nasbert_deploy.search.plot import plot_search

            plot_search(problem, budget, result.best[0], front, plot)
        if json_out:
            data = result.to_dict()
            data.update(candidates=str(_candidates_path(candidates, supernet)), latency_table=str(table_path))
            for entry in data["best"]:
                if entry["arch"] in mse:
                    entry["heldout_mse"] = mse[entry["arch"]]
            data["pareto_front"] = [{"arch": str(s.arch), "latency_ms": s.latency_ms, "loss": s.loss} for s in front]
            typer.echo(json.dumps(data, indent=2))
            return
        _print(result, mse, plot)


def _mb(x: float) -> str:
    return f"{x:.1f}" if x >= 10 else f"{x:.3g}"


def _print(result: Any, mse: dict[str, float], plot: Path | None) -> None:
    from rich.table import Table

    from nasbert_deploy.space import format_params

    t = Table(
        title=f"best of {result.searched:,} architectures, batch {result.batch}, seq {result.seq_len}, "
        f"{result.precision} ({result.elapsed_ms:.1f} ms)"
    )
    cols = ["#", "arch", "loss", "latency ms (blocks + fixed)", "params", "memory MB"] + (["held-out MSE"] if mse else [])
    for c in cols:
        t.add_column(c, justify="left" if c == "arch" else "right", overflow="fold")
    for i, s in enumerate(result.best, 1):
        parts = " + ".join(f"{m:.3f}" for m in s.block_ms) + f" + {s.fixed_ms:.3f}"
        row = [str(i), str(s.arch), f"{s.loss:.4f}", f"{s.latency_ms:.3f} ({parts})", format_params(s.params),
               f"{_mb(s.memory.total_mb)} ({_mb(s.memory.weights_mb)} w + {_mb(s.memory.activations_mb)} act)"]
        if mse:
            row.append(f"{mse[str(s.arch)]:.5f}" if str(s.arch) in mse else "-")
        t.add_row(*row)
    console.print(t)
    if result.binding:
        why = ", ".join(f"{name} (without it the loss would be {loss:.4f})" for name, loss in result.binding.items())
        console.print(f"binding: {why}")
    else:
        console.print("binding: none (the least-loss architecture of the table fits every budget)")
    if plot is not None:
        console.print(f"plot: {plot}")
