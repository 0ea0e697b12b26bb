"""One search from files: the candidate and latency tables found, the exact search, re-ranking, the Pareto front.

    from nasbert_deploy.search.run import SearchRequest, parse_budget, run_search
    outcome = run_search(SearchRequest(parse_budget(5.0, "10M", None), device=load_device("cpu-ort")))
    outcome.result.best[0].arch

This is what `nasbert-deploy search` runs; `export` uses `parse_budget` too. Module import is light.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nasbert_deploy.errors import ArchError, CheckpointError, TableError

if TYPE_CHECKING:
    from nasbert_deploy.devices import DeviceSpec
    from nasbert_deploy.profiling.host import Calibration
    from nasbert_deploy.search.problem import Budget, ScoredArch, SearchProblem, SearchResult

Note = Callable[[str, bool], None]  # (one line, whether it is a warning) for the command to print

NO_CANDIDATES = (
    "no candidate table: the default supernet is not installed; pass --candidates FILE "
    "(made by `nasbert-deploy supernet train`)"
)


def parse_budget(
    max_latency_ms: float | Sequence[float], max_params: str | None = None, max_memory_mb: float | None = None,
    devices: int | None = None,
) -> Budget:
    """A `Budget` from command-line strings: `max_params` like '10M' or '500K' (`ArchError` naming --max-params);
    `max_latency_ms` one number, or one per device (`devices` of them when given, else `ArchError`)."""
    from nasbert_deploy.search.problem import Budget
    from nasbert_deploy.space import parse_count

    lats = [max_latency_ms] if isinstance(max_latency_ms, int | float) else list(max_latency_ms)
    if devices is not None and len(lats) != max(devices, 1):
        raise ArchError(
            f"--max-latency-ms given {len(lats)} time(s) for {devices} --device(s): give one latency budget per device, "
            "in the same order"
        )
    try:
        params = None if max_params is None else parse_count(max_params)
    except ArchError as exc:
        raise ArchError(f"--max-params: {exc}") from None
    return Budget.per_device(lats, params, max_memory_mb)


@dataclass(frozen=True)
class SearchRequest:
    """A budget at (`batch`, `seq_len`) on a device (its latency table, unless `table` is given); the top `top`.

    `candidates`: the candidate table (default: `supernet`'s candidates.json, else the shipped supernet's);
    `precision`: weight precision for memory (default: the device's, else the table's, else fp32);
    `rerank` > 0 re-evaluates the top T whole networks of `supernet` against `teacher` on `heldout` text;
    `pareto`: also compute the Pareto front (loss vs latency) within the budget.
    `more_devices`: further devices the one model must also fit (the budget has one latency per device, `device`'s
    first); their latency tables are found by name, like `device`'s. `calibrate`: see `check_tables`.
    """

    budget: Budget
    device: DeviceSpec | None = None
    table: Path | None = None
    candidates: Path | None = None
    supernet: Path | None = None
    batch: int = 1
    seq_len: int = 128
    top: int = 1
    precision: str | None = None
    rerank: int = 0
    teacher: Path | None = None
    heldout: Path | None = None
    pareto: bool = False
    more_devices: tuple[DeviceSpec, ...] = ()
    calibrate: bool = False  # time one whole model per device first and scale its table to this machine (`check_tables`)


@dataclass
class SearchOutcome:
    """The result (top `top`, re-ranked if asked), the problem it came from, the files used, held-out MSEs, the front."""

    result: SearchResult
    problem: SearchProblem
    candidates: Path
    latency_table: Path
    heldout_mse: dict[str, float] = field(default_factory=dict)
    front: list[ScoredArch] = field(default_factory=list)
    calibrations: list[Calibration] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = self.result.to_dict()
        data.update(candidates=str(self.candidates), latency_table=str(self.latency_table))
        if self.calibrations:
            data["calibration"] = [c.to_dict() for c in self.calibrations]
        for entry in data["best"]:
            if entry["arch"] in self.heldout_mse:
                entry["heldout_mse"] = self.heldout_mse[entry["arch"]]
        data["pareto_front"] = [{"arch": str(s.arch), "latency_ms": s.latency_ms, "loss": s.loss} for s in self.front]
        return data


def latency_table_path(device: DeviceSpec | None, table: Path | None) -> Path:
    """`table` if given, else the device's (`./profiles/NAME.json` or the shipped one)."""
    if table is not None:
        return table
    if device is None:
        raise TableError("pass --device NAME (its latency table from profiles/NAME.json) or --table FILE")
    from nasbert_deploy.profiling.table import find_table

    return find_table(device.name)


def candidates_path(candidates: Path | None, supernet: Path | None) -> Path:
    """`candidates` if given, else `supernet`/candidates.json, else the shipped supernet's table."""
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


def load_latency_table(path: Path, space: Any) -> Any:
    """The latency table at `path`, checked to cover `space`'s operations."""
    from nasbert_deploy.profiling.table import LatencyTable

    return LatencyTable.load(path, space)


def check_tables(tables: Sequence[Any], specs: Sequence[DeviceSpec | None], space: Any, batch: int, seq_len: int,
                 calibrate: bool = False, on_note: Note | None = None) -> tuple[list[Any], list[Calibration]]:
    """Each device's latency table checked against this machine, and with `calibrate` scaled to it.

    A table whose manifest says it was made on another machine (`host.machine_mismatch`) gets one warning line
    through `on_note`. With `calibrate`, `space`'s reference model is timed on each device now (`host.calibrate`,
    through the device's runtime) and the table's predictions scaled by measured / predicted (one line each);
    `DeviceError` (before any timing) for a device that is not usable here or not given (`--table` alone)."""
    from nasbert_deploy.errors import DeviceError
    from nasbert_deploy.profiling.host import calibrate as calibrate_table
    from nasbert_deploy.profiling.host import machine_mismatch
    from nasbert_deploy.runtimes.base import require_available

    note = on_note or (lambda line, warning: None)
    if calibrate:
        for spec in specs:
            if spec is None:
                raise DeviceError("--calibrate times a model on the device: pass --device NAME (with --table FILE if needed)")
            require_available(spec)
    for lt, spec in zip(tables, specs):  # any latency model serves the search; only a table has a manifest
        manifest = getattr(lt, "manifest", None) or {}
        name = spec.name if spec is not None else str((getattr(lt, "device", None) or {}).get("name", "DEVICE"))
        check = "--calibrate scales it to this machine below" if calibrate else "pass --calibrate"
        line = machine_mismatch(manifest, name, check)
        if line:
            note(line, True)
    if not calibrate:
        return list(tables), []
    out, cals = [], []
    for lt, spec in zip(tables, specs):
        assert spec is not None
        cal = calibrate_table(spec, lt, space, batch, seq_len)
        note(cal.line(), False)
        out.append(lt.rescaled(cal.factor))
        cals.append(cal)
    return out, cals


def rerank_top(result: SearchResult, space: Any, request: SearchRequest) -> list[Any]:
    """The top `request.rerank` of `result` ordered by held-out MSE of the whole extracted network (`rerank.Reranked`)."""
    from nasbert_deploy.search.rerank import read_heldout, rerank
    from nasbert_deploy.supernet.default import resolve_supernet_dir
    from nasbert_deploy.supernet.network import Supernet
    from nasbert_deploy.teacher import load_teacher

    folder = resolve_supernet_dir(request.supernet)
    net, _ = Supernet.load(folder)
    if space.space_hash() != net.space.space_hash():
        raise CheckpointError(
            f"supernet {folder} is for space {net.space.name!r} ({net.space.space_hash()}); the candidate table is for "
            f"{space.name!r} ({space.space_hash()}); pass the supernet that made the table with --supernet DIR"
        )
    top = result.best[: request.rerank]
    teacher = load_teacher(request.teacher)
    return rerank([s.arch for s in top], [s.loss for s in top], net, teacher, read_heldout(request.heldout), request.seq_len)


def run_search(request: SearchRequest, on_note: Note | None = None) -> SearchOutcome:
    """The exact least-loss architectures under `request.budget` (`InfeasibleBudgetError` names the binding one);
    machine mismatches and calibrations (`check_tables`) as lines through `on_note`."""
    from nasbert_deploy.search.problem import SearchProblem
    from nasbert_deploy.supernet.candidates import CandidateTable

    if request.more_devices and request.table is not None:
        raise TableError("--table gives one device's latency table; with several --device, each uses its own table")
    table_path = latency_table_path(request.device, request.table)
    cands_path = candidates_path(request.candidates, request.supernet)
    if request.rerank:  # its inputs fail here, not after the search and the supernet are loaded
        from nasbert_deploy.search.rerank import read_heldout
        from nasbert_deploy.supernet.default import resolve_supernet_dir
        from nasbert_deploy.supernet.network import read_meta
        from nasbert_deploy.teacher import resolve_teacher_path

        read_heldout(request.heldout)
        read_meta(resolve_supernet_dir(request.supernet))
        resolve_teacher_path(request.teacher)
    cands = CandidateTable.load(cands_path)
    lat = load_latency_table(table_path, cands.space)
    others = [load_latency_table(latency_table_path(d, None), cands.space) for d in request.more_devices]
    specs = [request.device, *request.more_devices]
    tables, cals = check_tables([lat, *others], specs, cands.space, request.batch, request.seq_len, request.calibrate, on_note)
    table_precision = (getattr(lat, "device", None) or {}).get("precision")
    precision = request.precision or (request.device.precision if request.device else None) or table_precision or "fp32"
    names = [request.device.name if request.device else str(table_path), *(d.name for d in request.more_devices)]
    problem = SearchProblem(cands, tables, request.batch, request.seq_len, precision, names)
    result = problem.search(request.budget, max(request.top, request.rerank))
    reranked = rerank_top(result, cands.space, request) if request.rerank else []
    if reranked:
        order = {str(r.arch): i for i, r in enumerate(reranked)}
        result.best.sort(key=lambda s: order.get(str(s.arch), len(order)))
    result.best = result.best[: request.top]
    front = problem.pareto_front(request.budget) if request.pareto else []
    mse = {str(r.arch): r.heldout_mse for r in reranked}
    return SearchOutcome(result, problem, cands_path, table_path, mse, front, cals)
