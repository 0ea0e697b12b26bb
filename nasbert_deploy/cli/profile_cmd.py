"""`devices`, `profile` and `predict`: device specs, per-device latency tables, predicted latency of an arch."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from nasbert_deploy.cli.common import DeviceOpt, SpaceName, console, device_spec, err_console, print_note
from nasbert_deploy.devices import DeviceSpec
from nasbert_deploy.profiling.settings import ProfileSettings
from nasbert_deploy.runtimes.timing import STATISTICS

app = typer.Typer()

_D = ProfileSettings  # the options' defaults are the settings' (docs/profiling.md has the reasons)
SpaceOpt = Annotated[SpaceName, typer.Option("--space", help="Search space.")]


def _opt(*names: str, help: str, **kw: Any) -> Any:
    return typer.Option(*names, help=help, **kw)


@app.command("devices")
def devices(
    spec: Annotated[list[DeviceSpec] | None, typer.Argument(
        parser=device_spec, help="Extra spec files (.toml) to show beside the shipped ones.")] = None,
) -> None:
    """Device specs: runtime, target, precision, threads, profiled shapes, and whether usable here."""
    from rich import box
    from rich.table import Table

    from nasbert_deploy.devices import list_devices
    from nasbert_deploy.runtimes.base import availability

    t = Table(title="device specs (shipped in devices/; any spec file works by path)", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("name", "runtime", "thr", "batch x seq", "usable"):
        t.add_column(col, no_wrap=True)
    why_not = []
    for s in list_devices() + list(spec or []):
        why = availability(s)
        shapes = f"{','.join(map(str, s.batch_sizes))} x {','.join(map(str, s.seq_lens))}"
        rt = {"onnxruntime": "ORT", "openvino": "OpenVINO"}.get(s.runtime, s.runtime)
        how = f"{rt} {s.target} {s.precision}" + (f" {s.quantizer}" if s.kdlsq_bits else "")
        t.add_row(s.name, how, str(s.threads or "all"), shapes,
                  "[green]yes[/]" if why is None else "[red]no[/]")
        if why is not None:
            why_not.append(f"{s.name}: {why}")
    console.print(t)
    for line in why_not:  # reasons below the table, wrapped between words (a table cell would be a narrow column)
        console.print(f"not usable here: {line}", highlight=False)


Statistic = Enum("Statistic", {k: k for k in ("auto", *STATISTICS)}, type=str)  # from runtimes.timing.STATISTICS
Drift = Enum("Drift", {k: k for k in ("auto", "raw", "normalised")}, type=str)


@app.command("profile")
def profile(
    ctx: typer.Context,
    device: DeviceOpt = None,
    space: SpaceOpt = SpaceName("standard"),
    out: Annotated[Path | None, _opt("--out", help="Table to write (default: ./profiles/local/DEVICE.json).")] = None,
    validate: Annotated[int, _opt("--validate", min=0, help="Random whole models timed to fit and check the "
                                 "correction.")] = _D.validate,
    holdout: Annotated[int, _opt("--holdout", min=0, help="More random whole models timed in the same passes but never "
                                 "fitted: the table's error on unseen models (their time is reported apart).")] = 0,
    bundle: Annotated[Path | None, _opt("--bundle", help="Write an on-device profiling bundle to this folder instead.")] = None,
    import_file: Annotated[Path | None, _opt("--import", help="Build the table from a bundle runner's results.json.")] = None,
    refit: Annotated[Path | None, _opt("--refit", help="Fit a table's correction again from its stored whole models "
                                       "(no timing; upgrades an older table). Written to --out or in place.")] = None,
    runs: Annotated[int, _opt("--runs", min=1, help="Timed runs per measurement (at least).")] = _D.runs,
    warmup: Annotated[int, _opt("--warmup", min=0, help="Warm-up runs per measurement.")] = _D.warmup,
    min_time: Annotated[float, _opt("--min-time", min=0.0, help="Seconds of timing per measurement (at least).")] = _D.min_time_s,
    rounds: Annotated[int, _opt("--rounds", min=1, help="Rounds per operation (shuffled passes); the lowest-median round "
                                "is kept.")] = _D.rounds,
    model_rounds: Annotated[int, _opt("--model-rounds", min=1, help="Rounds per whole model, spread evenly over the same "
                                      "passes; split in two halves for the noise ceiling.")] = _D.model_rounds,
    model_min_time: Annotated[float, _opt("--model-min-time", min=0.0, help="Seconds of timing per whole-model "
                                            "round.")] = _D.model_min_time_s,
    statistic: Annotated[Statistic, _opt("--statistic", help="How rounds combine into a figure; auto: the lowest "
                                         "cross-validated error on the fitting models.")] = Statistic("auto"),
    drift: Annotated[Drift, _opt("--drift", help="Figures relative to the reference model timed in the same pass "
                                 "(normalised) or raw; auto: the lower cross-validated error.")] = Drift("auto"),
    adaptive_budget: Annotated[float, _opt("--adaptive-budget", min=0.0, help="Extra rounds for items whose rounds "
                                           "disagree, as a share of the base timing (0: off).")] = _D.adaptive_budget,
    reference_every: Annotated[int, _opt("--reference-every", min=0, help="Items timed between two timings of the reference "
                                         "model (drift normalisation; 0: no reference).")] = _D.reference_every,
    export_workers: Annotated[int, _opt("--export-workers", min=0, help="Export processes (0: one per CPU).")] = 0,
    cache_dir: Annotated[Path | None, _opt("--cache-dir", help="Export cache (default $NASBERT_DEPLOY_CACHE or "
                                           "~/.cache/nasbert-deploy/exports).")] = None,
    pin_cpu: Annotated[int | None, _opt("--pin-cpu", min=0, help="Time on this CPU only (exports use all).")] = None,
    holdout_seed: Annotated[int | None, _opt("--holdout-seed", help="Seed of the held-out models (new seed: new "
                                             "models).")] = None,
    max_cv: Annotated[float, _opt("--max-cv", min=0.0, help="Re-measure above this coefficient of variation "
                                  "(0: never; the rounds are the repeats).")] = _D.max_cv or 0.0,
    seed: Annotated[int, _opt("--seed", help="Seed for the validation architectures and the timing order.")] = 0,
    force: Annotated[bool, _opt("--force", help="Replace an existing --out table or --bundle folder.")] = False,
    fast: Annotated[bool, _opt("--fast", help="Quick-start preset: fewer, shorter rounds and 12 fitting models, for the "
                               "shipped supernet's space unless --space is given (<= 3 min on 2 cores for cpu-ort, exports "
                               "included); options given explicitly still apply.")] = False,
) -> None:
    """Time every distinct operation of the space on a device and write its latency table (resumable)."""
    from nasbert_deploy.errors import NasBertDeployError
    from nasbert_deploy.profiling.profiler import ProfileSettings
    from nasbert_deploy.profiling.settings import fast_settings
    from nasbert_deploy.space import get_space

    if refit is not None:
        _refit(refit, out, force)
        return
    if import_file is not None:
        from nasbert_deploy.profiling.bundle import import_results

        _report(*import_results(import_file, out, force))
        return
    if device is None:
        raise NasBertDeployError("pass --device NAME (see `nasbert-deploy devices`) or --import results.json")
    preset = {"warmup": warmup, "runs": runs, "min_time_s": min_time, "rounds": rounds, "model_rounds": model_rounds,
              "model_min_time_s": model_min_time, "validate": validate, "adaptive_budget": adaptive_budget,
              "reference_every": reference_every}
    if fast:  # the preset's values, except for options given on the command line
        preset = _explicit(ctx, preset)
    settings = (fast_settings if fast else ProfileSettings)(
        **preset, max_cv=max_cv or None, seed=seed, holdout=holdout, holdout_seed=holdout_seed, drift=drift.value,
        statistic=statistic.value, export_workers=export_workers, pin_cpu=pin_cpu,
        cache_dir=str(cache_dir) if cache_dir else None)
    sp = _fast_space() if fast and _default(ctx, "space") else get_space(space.value)
    _profile_or_bundle(device, sp, out, bundle, settings, force)
    if fast:
        console.print(f"fast profile (--fast): {settings.validate} fitting models, {settings.rounds} x {settings.min_time_s:g} s "
                      f"per operation, {settings.model_rounds} x {settings.model_min_time_s:g} s per model: the errors above are "
                      "what the speed cost; profile without --fast for tighter figures")


_CLI_NAMES = {"min_time_s": "min_time", "model_min_time_s": "model_min_time"}  # settings field -> parameter name


def _default(ctx: typer.Context, name: str) -> bool:
    """Whether the parameter `name` took its default (was not given on the command line)."""
    source = ctx.get_parameter_source(name)  # by name: typer may carry its own copy of click's enum
    return source is None or source.name in ("DEFAULT", "DEFAULT_MAP")


def _explicit(ctx: typer.Context, values: dict[str, Any]) -> dict[str, Any]:
    """The settings among `values` whose option was given on the command line (they override a preset)."""
    return {k: v for k, v in values.items() if not _default(ctx, _CLI_NAMES.get(k, k))}


def _fast_space() -> Any:
    """The shipped supernet's space (`--fast` profiles what the quick start searches), else minilm."""
    from nasbert_deploy.errors import NasBertDeployError
    from nasbert_deploy.space import SearchSpace, get_space

    try:
        from nasbert_deploy.supernet.default import resolve_supernet_dir
        from nasbert_deploy.supernet.network import read_meta

        return SearchSpace.from_dict(read_meta(resolve_supernet_dir(None))["space"])
    except (NasBertDeployError, KeyError, TypeError):
        return get_space("minilm")


def _profile_or_bundle(device: DeviceSpec, sp: Any, out: Path | None, bundle: Path | None, settings: Any, force: bool) -> None:
    """Check the output first, then profile into a table (or write an on-device bundle)."""
    from nasbert_deploy.fileio import check_output
    from nasbert_deploy.profiling.table import local_table_path

    target = out or local_table_path(device.name)
    if bundle is not None:
        check_output(bundle, "dir", force, option="--bundle")
        _bundle(device, sp, bundle, settings)
        return
    check_output(target, "file", force, option="--out")
    from nasbert_deploy.profiling.profiler import profile_device

    with _progress() as cb:
        table = profile_device(device, sp, target, settings, cb)
    _report(table, target)


def _bundle(device: DeviceSpec, sp: Any, bundle: Path, settings: Any) -> None:
    from nasbert_deploy.profiling.bundle import RUNNER_NAME, write_bundle

    with _progress() as cb:
        write_bundle(device, sp, bundle, settings, cb)
    console.print(f"wrote bundle {bundle}: on the device run `python {bundle / RUNNER_NAME} --out results.json`, "
                  "then `nasbert-deploy profile --import results.json`")


def _refit(path: Path, out: Path | None, force: bool) -> None:
    from nasbert_deploy.errors import NasBertDeployError, TableError
    from nasbert_deploy.fileio import check_output
    from nasbert_deploy.profiling.profiler import refit_table
    from nasbert_deploy.profiling.table import LatencyTable

    in_place = out is None or out.absolute() == path.absolute()
    check_output(out or path, "file", force or in_place, option="--out" if out else "--refit")
    table = LatencyTable.load(path)
    try:
        table = refit_table(table)
    except NasBertDeployError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, ArithmeticError) as exc:
        raise TableError(f"--refit {path}: the table's whole-model measurements are malformed ({type(exc).__name__}: "
                         f"{exc}); profile the device again") from None
    table.save(out or path)
    _report(table, out or path)


@app.command("predict")
def predict(
    arch: Annotated[str, typer.Argument(help="Arch string, e.g. '128:mha,ffn,id,id,id,id|...'.")],
    device: DeviceOpt = None,
    table: Annotated[Path | None, _opt("--table", help="A latency table file (instead of --device).")] = None,
    space: SpaceOpt = SpaceName("standard"),
    seq_len: Annotated[int, _opt("--seq-len", min=2, help="Sequence length (interpolated between profiled ones).")] = 128,
    batch: Annotated[int, _opt("--batch", min=1, help="Batch size (a profiled one).")] = 1,
    rescale: Annotated[bool, _opt("--rescale", help="Re-time the table's reference model now and scale the prediction "
                                  "to the host's current state (needs the device here).")] = False,
) -> None:
    """Predicted latency of one architecture on a device, with the per-block breakdown."""
    from rich.table import Table

    from nasbert_deploy.errors import NasBertDeployError
    from nasbert_deploy.profiling.table import LatencyTable, find_table
    from nasbert_deploy.space import get_space

    sp = get_space(space.value)
    a = sp.parse(arch)
    if table is None:
        if device is None:
            raise NasBertDeployError("pass --device NAME or --table FILE")
        table = find_table(device.name)
    lt = LatencyTable.load(table, space=sp)
    lt = _check_machine(lt, device, rescale, batch, seq_len)
    p = lt.predict(a, batch, seq_len)
    console.print(f"arch {a}", highlight=False, soft_wrap=True)
    t = Table(title=f"{lt.device.get('name')}, batch {batch}, seq {seq_len}")
    t.add_column("part")
    t.add_column("ms", justify="right")
    for i, (b, ms) in enumerate(zip(a.blocks, p.blocks_ms), 1):
        t.add_row(f"block {i} ({b})", f"{ms:.3f}")
    for name, ms in (("embedding", p.embedding_ms), ("boundaries", p.boundaries_ms), ("head", p.head_ms),
                     ("offset (correction)", p.offset_ms)):
        t.add_row(name, f"{ms:.3f}")
    t.add_row("[bold]total[/]", f"[bold]{p.total_ms:.3f}[/]")
    console.print(t)
    near = lt.spread_near(a, batch, seq_len)
    if near and near[1] > 10.0:
        console.print(f"note: {near[0]} whole model(s) of about this size (weights ±20%) varied by up to {near[1]:.0f}% "
                      "between profiling rounds on this device: expect its measured latency to vary as much")


class _progress:
    """The profiler's (phase, done, total) callback: a rich bar on a terminal, a plain line now and then on a pipe."""

    def __enter__(self) -> Any:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        from nasbert_deploy.cli.common import Ticker

        self.plain, self.ticker = not err_console.is_terminal, Ticker()
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TimeRemainingColumn(), console=err_console, disable=self.plain)
        self.tasks: dict[str, int] = {}
        self.bar.start()
        return self.callback

    def callback(self, phase: str, done: int, total: int) -> None:
        label = {"export": "exporting models", "time": "timing"}.get(phase, phase)
        if phase not in self.tasks:
            self.tasks[phase] = self.bar.add_task(label, total=total)
        self.bar.update(self.tasks[phase], completed=done, total=total)
        if self.plain and self.ticker.due(done, total, key=phase):
            err_console.print(f"{label}: {done} of {total}", highlight=False)

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()


def _check_machine(lt: Any, device: DeviceSpec | None, rescale: bool, batch: int, seq_len: int) -> Any:
    """Warn in one line when the table was made on another machine; with `rescale`, scale it to the host now."""
    from nasbert_deploy.profiling.host import host_factor, machine_mismatch

    name = lt.device.get("name") or (device.name if device else "DEVICE")
    note = machine_mismatch(lt.manifest, name)
    if note:
        print_note(note, warning=True)
    if not rescale:
        return lt
    if device is None:
        from nasbert_deploy.devices import load_device

        device = load_device(name)
    factor = host_factor(device, lt, batch, seq_len)
    console.print(f"host now runs the table's reference model {factor:.2f}x as long as when profiled: rescaled")
    return lt.rescaled(factor)


def _report(table: Any, path: Path) -> None:
    """What was written and how well it predicts, in a few lines (80 columns, pipes); per-point figures are in
    the table file's `validation`."""
    wall = table.manifest.get("profiling_wall_s")
    wall_text = f"{wall:.0f} s" if isinstance(wall, int | float) else "unknown"
    console.print(f"wrote {path} ({len(table.entries)} entries, profiling wall time {wall_text})", soft_wrap=True)
    bd = table.manifest.get("profiling_breakdown_s")
    if isinstance(bd, dict) and bd:
        n = max(1, len(table.batch_sizes) * len(table.seq_lens))
        console.print(f"exporting {bd.get('export_s', 0):.0f} s, timing {bd.get('timing_s', 0):.0f} s "
                      f"({bd.get('timing_s', 0) / n:.0f} s per (batch, seq) point, {n} points)")
        if "holdout_timing_s" in bd:
            console.print(f"held-out models (not in the wall time): exporting {bd.get('holdout_export_s', 0):.0f} s, "
                          f"timing {bd['holdout_timing_s']:.0f} s")
    val = {pk: v for pk, v in table.validation.items() if isinstance(v, dict)}
    if not val:
        console.print("no whole-model validation (--validate 0 or fewer than 3): no correction (scale 1, offset 0)")
        return
    planes = [len((table.corrections.get(pk) or {}).get("planes", [])) for pk in val]
    two = sum(n > 1 for n in planes)
    console.print(f"whole models, leave-one-out error after the correction, {_summary(list(val.values()))}; "
                  f"uncorrected MAPE {_range([v.get('uncorrected_mape_pct') for v in val.values()])}%"
                  + (f"; a second plane (cache step) at {two} of {len(val)} points" if two else ""), highlight=False)
    held = [v["holdout"] for v in val.values() if isinstance(v.get("holdout"), dict) and v["holdout"]]
    if held:
        console.print(f"held-out whole models (timed in the same passes, never fitted), {_summary(held)}", highlight=False)
    _report_spread(val)
    _report_noise(table, val)
    console.print(f"per-point figures: 'validation' in {path}", highlight=False, soft_wrap=True)


def _report_noise(table: Any, val: dict[str, Any]) -> None:
    """The host's own repeatability (the same models measured twice) beside the prediction, and which one limits."""
    ceil = [v["noise_ceiling"] for v in val.values() if isinstance(v.get("noise_ceiling"), dict)]
    if ceil:
        limits = sorted({str(v.get("limited_by")) for v in val.values() if v.get("limited_by")})
        within = _range([c.get("within_10pct") for c in ceil], 100.0)
        console.print(f"noise ceiling (same models re-measured in other passes): within ±10% {within}%, "
                      f"MAPE {_range([c.get('mape_pct') for c in ceil])}%"
                      + (f"; the error is limited by: {', '.join(limits)}" if limits else ""), highlight=False)
    m = getattr(table, "measurement", None) or {}
    if m:
        console.print(f"figures: {m.get('statistic', 'min')} of the rounds, "
                      f"{'drift-normalised' if m.get('normalised') else 'raw'} ({m.get('chosen_by', 'default')})",
                      highlight=False)


def _range(values: list[Any], scale: float = 1.0) -> str:
    """'median (min-max)' of the numbers among `values` (times `scale`), or '?' if none."""
    xs = sorted(scale * x for x in values if isinstance(x, int | float))
    if not xs:
        return "?"
    mid = f"{xs[len(xs) // 2]:.1f}"
    return mid if xs[0] == xs[-1] else f"{mid} ({xs[0]:.1f}-{xs[-1]:.1f})"


def _summary(vals: list[dict[str, Any]]) -> str:
    """One line over the points: MAPE, largest error and share within +-10% (median and range over points)."""
    models = sum(v.get("models", 0) for v in vals if isinstance(v.get("models", 0), int))
    worst = max((v["max_abs_pct"] for v in vals if isinstance(v.get("max_abs_pct"), int | float)), default=None)
    worst_text = "?" if worst is None else f"{worst:.0f}"
    return (f"{len(vals)} point(s), {models} models: MAPE {_range([v.get('mape_pct') for v in vals])}%, "
            f"max |err| {worst_text}%, within ±10% {_range([v.get('within_10pct') for v in vals], 100.0)}%")


def _report_spread(val: dict[str, Any]) -> None:
    """One line on how reproducible the whole models were: their round-to-round spread, fitting and held-out."""
    spread = sorted(x for v in val.values()
                    for x in v.get("round_spread_pct", []) + (v.get("holdout") or {}).get("round_spread_pct", []))
    if not spread:
        return
    wide = sum(x > 10.0 for x in spread)
    note = " (a noisy host; on a shared last-level cache, models near the cache step vary most: docs/profiling.md)"
    console.print(f"whole models, slowest over fastest round: median {spread[len(spread) // 2]:.1f}%, max {spread[-1]:.0f}%, "
                  f"{wide} of {len(spread)} above 10%" + (note if wide else ""))
