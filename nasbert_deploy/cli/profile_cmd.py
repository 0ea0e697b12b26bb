"""`devices`, `profile` and `predict`: device specs, per-device latency tables, predicted latency of an arch."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any

import typer

from nasbert_deploy.cli.common import console, err_console


class ProfileSpace(str, Enum):
    standard = "standard"
    minilm = "minilm"
    tiny = "tiny"


def register(app: typer.Typer) -> None:
    @app.command("devices")
    def devices(spec: list[str] = typer.Argument(None, help="Extra spec files (.toml) to show beside the shipped ones.")) -> None:
        """Device specs: runtime, target, precision, threads, profiled shapes, and whether usable here."""
        from rich.table import Table

        from nasbert_deploy.devices import list_devices, load_device
        from nasbert_deploy.runtimes.base import availability

        specs = list_devices() + [load_device(p) for p in spec or []]
        t = Table(title="device specs (shipped in devices/; any spec file works by path)")
        for col in ("name", "runtime", "target", "precision", "threads", "batch", "seq_lens", "usable here"):
            t.add_column(col, no_wrap=col != "usable here")
        for s in specs:
            why = availability(s)
            t.add_row(s.name, s.runtime, s.target, s.precision, str(s.threads or "all"), ",".join(map(str, s.batch_sizes)),
                      ",".join(map(str, s.seq_lens)), "[green]yes[/]" if why is None else f"[red]no[/]: {why}")
        console.print(t)

    @app.command("profile")
    def profile(
        device: str = typer.Option(None, "--device", help="Device name (devices/NAME.toml) or a spec file path."),
        space: ProfileSpace = typer.Option(ProfileSpace.standard, help="Search space to profile."),
        out: Path = typer.Option(None, "--out", help="Table to write (default: ./profiles/DEVICE.json)."),
        validate: int = typer.Option(30, "--validate", min=0, help="Random whole models timed to fit and check the correction."),
        holdout: int = typer.Option(0, "--holdout", min=0, help="More random whole models timed in the same passes but "
                                    "never fitted: the table's error on unseen models (their time is reported apart)."),
        bundle: Path = typer.Option(None, "--bundle", help="Write an on-device profiling bundle to this folder instead."),
        import_file: Path = typer.Option(None, "--import", help="Build the table from a bundle runner's results.json."),
        refit: Path = typer.Option(None, "--refit", help="Fit a table's correction again from its stored whole models "
                                   "(no timing; upgrades an older table). Written to --out or in place."),
        runs: int = typer.Option(20, min=1, help="Timed runs per measurement (at least)."),
        warmup: int = typer.Option(5, min=0, help="Warm-up runs per measurement."),
        min_time: float = typer.Option(0.3, "--min-time", min=0.0, help="Seconds of timing per measurement (at least)."),
        rounds: int = typer.Option(3, min=1, help="Rounds per operation (shuffled passes); the lowest-median round is kept."),
        model_rounds: int = typer.Option(3, "--model-rounds", min=1, help="Rounds per whole model, spread evenly over "
                                         "the same passes (e.g. 5 with --model-min-time 0.2 on a noisy host)."),
        model_min_time: float = typer.Option(0.3, "--model-min-time", min=0.0, help="Seconds of timing per whole-model round."),
        max_cv: float = typer.Option(0.1, "--max-cv", min=0.0, help="Re-measure above this coefficient of variation (0: never)."),
        seed: int = typer.Option(0, help="Seed for the validation architectures and the timing order."),
    ) -> None:
        """Time every distinct operation of the space on a device and write its latency table (resumable)."""
        from nasbert_deploy.errors import NasBertDeployError

        if refit is not None:
            from nasbert_deploy.profiling.profiler import refit_table
            from nasbert_deploy.profiling.table import LatencyTable

            table = refit_table(LatencyTable.load(refit))
            target = out or refit
            table.save(target)
            _report(table, target)
            return
        if import_file is not None:
            from nasbert_deploy.profiling.bundle import import_results

            if not import_file.is_file():
                raise NasBertDeployError(f"--import {import_file}: no such file (the runner writes results.json)")
            pending = Path(out) if out is not None else None
            table = _import(import_results, import_file, pending)
            _report(table, out or Path("profiles") / f"{table.device['name']}.json")
            return
        if device is None:
            raise NasBertDeployError("pass --device NAME (see `nasbert-deploy devices`) or --import results.json")
        from nasbert_deploy.devices import load_device
        from nasbert_deploy.profiling.profiler import ProfileSettings
        from nasbert_deploy.space import get_space

        spec = load_device(device)
        sp = get_space(space.value)
        settings = ProfileSettings(warmup=warmup, runs=runs, min_time_s=min_time, max_cv=max_cv or None, rounds=rounds,
                                   model_rounds=model_rounds, model_min_time_s=model_min_time, validate=validate, seed=seed,
                                   holdout=holdout)
        if bundle is not None:
            from nasbert_deploy.profiling.bundle import RUNNER_NAME, write_bundle

            with _progress() as cb:
                write_bundle(spec, sp, bundle, settings, cb)
            console.print(f"wrote bundle {bundle}: on the device run `python {bundle / RUNNER_NAME} --out results.json`, "
                          "then `nasbert-deploy profile --import results.json`")
            return
        from nasbert_deploy.profiling.profiler import profile_device

        target = out or Path("profiles") / f"{spec.name}.json"
        with _progress() as cb:
            table = profile_device(spec, sp, target, settings, cb)
        _report(table, target)

    @app.command("predict")
    def predict(
        arch: str = typer.Argument(..., help="Arch string, e.g. '128:mha,ffn,id,id,id,id|...'."),
        device: str = typer.Option(None, "--device", help="Device name: uses ./profiles/NAME.json or the shipped table."),
        table: Path = typer.Option(None, "--table", help="A latency table file (instead of --device)."),
        space: ProfileSpace = typer.Option(ProfileSpace.standard, help="Search space of the arch."),
        seq_len: int = typer.Option(128, "--seq-len", min=2, help="Sequence length (interpolated between profiled ones)."),
        batch: int = typer.Option(1, "--batch", min=1, help="Batch size (a profiled one)."),
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
            from nasbert_deploy.devices import load_device

            table = find_table(load_device(device).name)
        lt = LatencyTable.load(table, space=sp)
        p = lt.predict(a, batch, seq_len)
        t = Table(title=f"{a}  on {lt.device.get('name')} (batch {batch}, seq {seq_len})")
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


def _import(fn: Any, path: Path, out: Path | None) -> Any:
    """Import bundle results; the output name comes from the device in the results unless --out is given."""
    import json

    from nasbert_deploy.errors import TableError

    if out is None:
        try:
            name = json.loads(path.read_text(encoding="utf-8"))["bundle"]["device"]["name"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise TableError(f"{path} is not the output of a profiling bundle's runner") from None
        out = Path("profiles") / f"{name}.json"
    return fn(path, out)


class _progress:
    """A rich progress bar fed by the profiler's (phase, done, total) callback."""

    def __enter__(self) -> Any:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TimeRemainingColumn(), console=err_console)
        self.tasks: dict[str, int] = {}
        self.bar.start()
        return self.callback

    def callback(self, phase: str, done: int, total: int) -> None:
        label = {"export": "exporting models", "time": "timing"}.get(phase, phase)
        if phase not in self.tasks:
            self.tasks[phase] = self.bar.add_task(label, total=total)
        self.bar.update(self.tasks[phase], completed=done, total=total)

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()


def _report(table: Any, path: Path) -> None:
    from rich.table import Table

    wall = table.manifest.get("profiling_wall_s")
    console.print(f"wrote {path} ({len(table.entries)} entries, profiling wall time {wall:.0f} s)")
    bd = table.manifest.get("profiling_breakdown_s")
    if bd:
        n = len(table.batch_sizes) * len(table.seq_lens)
        console.print(f"exporting {bd.get('export_s', 0):.0f} s, timing {bd.get('timing_s', 0):.0f} s "
                      f"({bd.get('timing_s', 0) / n:.0f} s per (batch, seq) point, {n} points)")
        if "holdout_timing_s" in bd:
            console.print(f"held-out models (not in the wall time): exporting {bd.get('holdout_export_s', 0):.0f} s, "
                          f"timing {bd['holdout_timing_s']:.0f} s")
    val = table.validation
    if not val:
        console.print("no whole-model validation (--validate 0 or fewer than 3): no correction (scale 1, offset 0)")
        return
    t = Table(title="prediction error on whole models (leave-one-out, after the correction: the largest plane)")
    for col in ("batch/seq", "models", "MAPE %", "max |err| %", "within ±10%", "uncorrected MAPE %", "plane",
                "scale", "ms/Mparam", "offset ms"):
        t.add_column(col, justify="right")
    for pk, v in val.items():
        corr = table.corrections[pk]
        split = corr.get("split_mparams")
        for i, p in enumerate(corr["planes"]):
            where = "" if split is None else (f" (≤{split:.2f}M)" if i == 0 else f" (>{split:.2f}M)")
            head = (pk, str(v["models"]), f"{v['mape_pct']:.1f}", f"{v['max_abs_pct']:.1f}", f"{100 * v['within_10pct']:.0f}%",
                    f"{v['uncorrected_mape_pct']:.1f}") if i == 0 else ("",) * 6
            t.add_row(*head, f"{i + 1}{where}", f"{p['scale']:.3f}", f"{p.get('ms_per_mparam', 0.0):.4f}",
                      f"{p['offset_ms']:.3f}")
    console.print(t)
    _report_spread(val)
    held = {pk: v["holdout"] for pk, v in val.items() if v.get("holdout")}
    if not held:
        return
    t = Table(title="prediction error on held-out whole models (timed in the same passes, never fitted)")
    for col in ("batch/seq", "models", "MAPE %", "max |err| %", "within ±10%", "mean err %"):
        t.add_column(col, justify="right")
    for pk, h in held.items():
        t.add_row(pk, str(h["models"]), f"{h['mape_pct']:.1f}", f"{h['max_abs_pct']:.1f}", f"{100 * h['within_10pct']:.0f}%",
                  f"{h['mean_pct']:+.1f}")
    console.print(t)


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
