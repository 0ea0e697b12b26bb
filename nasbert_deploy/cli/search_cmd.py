"""`search`: the exact least-loss architecture under latency / parameter / memory budgets on a device."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from nasbert_deploy.cli.common import DevicesOpt, PrecisionName, console, err_console, print_note

app = typer.Typer()


def _opt(*names: str, help: str, **kw: Any) -> Any:
    return typer.Option(*names, help=help, **kw)


@app.command("search")
def search(
    max_latency_ms: Annotated[list[float], _opt("--max-latency-ms", help="Latency budget (ms) at --batch/--seq-len; "
                                                "one per --device, in the same order.")],
    device: DevicesOpt = None,
    max_params: Annotated[str | None, _opt("--max-params", help="Parameter budget, embeddings included (10M, 500K).")] = None,
    max_memory_mb: Annotated[float | None, _opt("--max-memory-mb", help="Memory budget (MiB): weights + activations.")] = None,
    seq_len: Annotated[int, _opt("--seq-len", min=1, help="Sequence length the budget applies to.")] = 128,
    batch: Annotated[int, _opt("--batch", min=1, help="Batch size the budget applies to.")] = 1,
    top: Annotated[int, _opt("--top", min=1, help="Show the K best architectures.")] = 1,
    json_out: Annotated[bool, _opt("--json", help="Print machine-readable JSON only.")] = False,
    plot: Annotated[Path | None, _opt("--plot", help="Write loss vs latency (sample, Pareto front, choice) to a PNG.")] = None,
    rerank: Annotated[int, _opt("--rerank", min=0, help="Re-rank the top T whole networks on held-out text.")] = 0,
    candidates: Annotated[Path | None, _opt("--candidates", help="Candidate table (default: the supernet's).")] = None,
    table: Annotated[Path | None, _opt("--table", help="Latency table file (instead of the device's).")] = None,
    supernet: Annotated[Path | None, _opt("--supernet", help="Supernet folder (for --rerank; its candidates.json).")] = None,
    teacher: Annotated[Path | None, _opt("--teacher", help="Teacher for --rerank (default: offline MiniLM-L6).")] = None,
    heldout: Annotated[Path | None, _opt("--heldout", help="Held-out text for --rerank (default: shipped sample).")] = None,
    precision: Annotated[PrecisionName | None, _opt("--precision", help="Weight precision for memory (default: device's).")]
    = None,
    calibrate: Annotated[bool, _opt("--calibrate", help="First time one whole model per device here and scale its "
                                    "table's predictions by measured / predicted (the machine's current state).")] = False,
    force: Annotated[bool, _opt("--force", help="Replace an existing --plot file.")] = False,
) -> None:
    """Exact least-loss architecture under the budgets (sum of block losses; latency from the device's table)."""
    import json
    from contextlib import nullcontext

    from nasbert_deploy.fileio import check_output
    from nasbert_deploy.search.run import SearchRequest, parse_budget, run_search

    if plot is not None:
        check_output(plot, "file", force, option="--plot")
    devices = device or []
    budget = parse_budget(max_latency_ms, max_params, max_memory_mb, len(devices))
    request = SearchRequest(budget, devices[0] if devices else None, table, candidates, supernet,
                            batch, seq_len, top, precision.value if precision is not None else None, rerank, teacher, heldout,
                            pareto=plot is not None or json_out, more_devices=tuple(devices[1:]), calibrate=calibrate)
    busy = err_console.status(f"re-ranking {rerank} networks on held-out text") if rerank else nullcontext()
    with busy:
        outcome = run_search(request, print_note)
    if plot is not None:
        from nasbert_deploy.search.plot import plot_search

        plot_search(outcome.problem, request.budget, outcome.result.best[0], outcome.front, plot)
    if json_out:
        typer.echo(json.dumps(outcome.to_dict(), indent=2))
        return
    _print(outcome.result, outcome.heldout_mse, plot)


def _mb(x: float) -> str:
    return f"{x:.1f}" if x >= 10 else f"{x:.3g}"


def _print(result: Any, mse: dict[str, float], plot: Path | None) -> None:
    from rich.table import Table

    from nasbert_deploy.space import format_params

    t = Table(
        title=f"best of {result.searched:,} architectures, batch {result.batch}, seq {result.seq_len}, "
        f"{result.precision} ({result.elapsed_ms:.1f} ms)"
    )
    several = len(result.devices) > 1
    lat_col = f"latency ms on {result.devices[0]} (blocks + fixed)" if several else "latency ms (blocks + fixed)"
    cols = ["#", "arch", "loss", lat_col] + (["ms on " + ", ".join(result.devices[1:])] if several else [])
    cols += ["params", "memory MB"] + (["held-out MSE"] if mse else [])
    for c in cols:
        t.add_column(c, justify="left" if c == "arch" else "right", overflow="fold", no_wrap=c == "arch")
    for i, s in enumerate(result.best, 1):
        parts = " + ".join(f"{m:.3f}" for m in s.block_ms) + f" + {s.fixed_ms:.3f}"
        arch = " |\n".join(map(str, s.arch.blocks))  # one block per line: never broken inside a block (still parses)
        row = [str(i), arch, f"{s.loss:.4f}", f"{s.latency_ms:.3f} ({parts})"]
        row += [", ".join(f"{m:.3f}" for m in s.latencies_ms[1:])] if several else []
        row += [format_params(s.params),
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
