"""One export from the command line's point of view: which arch (given, or searched under a budget), which
weights (the supernet's or random), which tokenizer, where to, all checked before any work is done.

    request = ExportRequest(Path("out/model"), ExportOptions(), load_device("cpu-ort"), budget=parse_budget(5.0, "10M"))
    prepared = prepare_export(request)                  # checks, search, model, tokenizer; writes nothing
    report = export_model(prepared.model, request.out, prepared.tokenizer, request.spec, request.options, prepared.weights)
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nasbert_deploy.errors import ArchError, CheckpointError, CorpusError, ExportError

if TYPE_CHECKING:
    from nasbert_deploy.devices import DeviceSpec
    from nasbert_deploy.export.pipeline import ExportOptions
    from nasbert_deploy.search.problem import Budget
    from nasbert_deploy.space import SearchSpace

DEFAULT_DEVICE = "cpu-ort"


def budget_or_arch(
    arch: str | None,
    device_given: bool | int,
    max_latency_ms: float | list[float] | None,
    max_params: str | None,
    max_memory_mb: float | None,
) -> Budget | None:
    """The search budget, or None when `arch` is given; exactly one of the two, and a budget needs a device.

    `device_given`: whether --device was given, or how many times (then one `max_latency_ms` per device, in order)."""
    from nasbert_deploy.search.run import parse_budget

    if isinstance(max_latency_ms, list) and not max_latency_ms:
        max_latency_ms = None  # a repeatable option given no time
    budget_given = any(v is not None for v in (max_latency_ms, max_params, max_memory_mb))
    budget_help = "a budget to search one (--device NAME --max-latency-ms L [--max-params P] [--max-memory-mb M])"
    if arch is None and not budget_given:
        raise ArchError(f"nothing to export: give --arch ARCH, or {budget_help}")
    if arch is not None and budget_given:
        raise ArchError(f"give either --arch ARCH or {budget_help}, not both")
    if not budget_given:
        return None
    if max_latency_ms is None or not device_given:
        raise ArchError("searching an architecture needs --device NAME and --max-latency-ms L")
    devices = None if isinstance(device_given, bool) else device_given
    return parse_budget(max_latency_ms, max_params, max_memory_mb, devices)


def check_out(out: Path, force: bool) -> None:
    """Fail before any work if `out` cannot be (re)placed: a file, a non-empty folder without `force`, no write access
    (`fileio.check_output`, the one output check every command uses)."""
    from nasbert_deploy.fileio import check_output

    check_output(out, "dir", force)


def read_calibration(path: Path | None) -> tuple[str, ...]:
    """INT8 calibration texts: one per non-empty line of `path` (() = the shipped sample)."""
    if path is None:
        return ()
    from nasbert_deploy.fileio import read_input_lines

    return tuple(read_input_lines(path, "--calibration text", CorpusError))


def export_space(space_name: str | None, init: str, supernet: Path | None) -> SearchSpace:
    """The space of the exported model: the supernet's (a given `space_name` must agree), or for random
    weights `space_name`, else the supernet's, else 'standard'."""
    from nasbert_deploy.export.pipeline import supernet_space
    from nasbert_deploy.space import get_space

    given = get_space(space_name) if space_name else None
    if init == "random":
        if given is not None:
            return given
        try:
            return supernet_space(supernet)
        except CheckpointError:
            if supernet is not None:
                raise
            return get_space("standard")
    sp = supernet_space(supernet)
    if given is not None and given.space_hash() != sp.space_hash():
        raise CheckpointError(
            f"--space {given.name} does not match the supernet's space {sp.name!r}; drop --space or pass "
            "a supernet trained on that space with --supernet DIR"
        )
    return sp


@dataclass(frozen=True)
class ExportRequest:
    """Export `arch` (or the least-loss arch within `budget` on `spec`) to `out` with `options`.

    `init`: 'supernet' (weights inherited from `supernet`, default the shipped one) or 'random' (seeded by
    `seed`, in `space` or the supernet's); `tokenizer`: a tokenizer folder (default: the teacher's);
    `force`: replace a non-empty `out`.
    """

    out: Path
    options: ExportOptions
    spec: DeviceSpec
    arch: str | None = None
    budget: Budget | None = None
    supernet: Path | None = None
    init: str = "supernet"
    space: str | None = None
    seed: int = 0
    tokenizer: Path | None = None
    force: bool = False
    more_specs: tuple[DeviceSpec, ...] = ()  # further devices: the budget has one latency per device, `spec`'s first
    calibrate: bool = False  # time one whole model per device first; scale the search and the report (`check_tables`)
    model: Path | None = None  # a trained folder (`distill`, `finetune`, `finetune-teacher`) instead of arch + weights


@dataclass
class PreparedExport:
    """The model to export (a `NasBertModel`), its weights info for the report, the tokenizer, the search's
    choice (a `search.ScoredArch`) when the arch was searched, the request's options with the `--calibrate`
    factors (what `export_model` takes) and the calibrations (`host.Calibration`)."""

    model: Any
    weights: dict[str, Any]
    tokenizer: Any
    chosen: Any = None
    options: Any = None
    calibrations: list[Any] = field(default_factory=list)


def device_tables(request: ExportRequest, space: SearchSpace, seq_len: int, on_note: Any = None) -> tuple[Any, list[Any]]:
    """Every device's latency table, checked against this machine and with `request.calibrate` scaled to it
    (`search.run.check_tables`); None when a device has no table for `space` and no search needs one (an
    `--arch` export reports without a prediction)."""
    from nasbert_deploy.errors import SpaceError, TableError
    from nasbert_deploy.export.measure import load_latency_table
    from nasbert_deploy.search.run import check_tables

    specs = [request.spec, *request.more_specs]
    try:
        tables = [load_latency_table(s, space) for s in specs]
    except (TableError, SpaceError):
        if request.budget is not None:
            raise
        return None, []
    return check_tables(tables, specs, space, request.options.batch, seq_len, request.calibrate, on_note)


def prepare_export(request: ExportRequest, on_note: Any = None) -> PreparedExport:
    """Every check and choice before writing: formats vs device, `out`, space, arch (searched or parsed),
    tokenizer, model with its weights; the devices' tables checked against this machine (and calibrated), lines
    through `on_note(line, warning)`. Raises a `NasBertDeployError` subclass; writes nothing."""
    from nasbert_deploy.export.pipeline import (
        check_device_formats,
        load_export_tokenizer,
        model_from_supernet,
        random_model,
        select_arch,
    )

    if request.init not in ("supernet", "random"):
        raise ExportError(f"unknown initialisation {request.init!r}; valid: supernet, random")
    for spec in (request.spec, *request.more_specs):
        check_device_formats(spec, request.options)
    if request.model is not None:
        return _prepare_trained(request, on_note)
    check_out(request.out, request.force)
    sp = export_space(request.space, request.init, request.supernet)
    chosen = None
    if request.budget is None and request.arch is None:
        raise ArchError("give either --arch ARCH or a budget (--max-latency-ms L)")
    arch = sp.parse(request.arch) if request.arch is not None else None
    seq_len = min(request.options.seq_len, sp.max_positions)
    tables, cals = device_tables(request, sp, seq_len, on_note)
    if request.budget is not None:
        chosen = select_arch([request.spec, *request.more_specs], request.budget, request.options.batch, seq_len,
                             request.supernet, tables)
        arch = chosen.arch
    tok = load_export_tokenizer(request.tokenizer, sp)
    if request.init == "random":
        model, weights = random_model(arch, sp, request.seed)
    else:
        model, weights = model_from_supernet(arch, request.supernet)
    options = replace(request.options, latency_factors={c.device: c.factor for c in cals}) if cals else request.options
    return PreparedExport(model, weights, tok, chosen, options, cals)


def _prepare_trained(request: ExportRequest, on_note: Any = None) -> PreparedExport:
    """`export --model DIR`: the folder checked and loaded (`trained.load_trained`), `out` checked; latency predicted
    where a device has a table for the model's space (none needed: the export is measured either way)."""
    from nasbert_deploy.export.trained import check_trained_folder, load_trained

    model_dir = Path(request.model)  # type: ignore[arg-type]
    check_trained_folder(model_dir)
    if request.out.resolve() == model_dir.resolve():
        raise ExportError(f"--out {request.out} is the --model folder; write the export to a new folder")
    check_out(request.out, request.force)
    model, weights, tok = load_trained(model_dir, request.tokenizer)
    sp = model.config.search_space
    seq_len = min(request.options.seq_len, sp.max_positions)
    _, cals = device_tables(request, sp, seq_len, on_note)
    options = replace(request.options, latency_factors={c.device: c.factor for c in cals}) if cals else request.options
    return PreparedExport(model, weights, tok, None, options, cals)
