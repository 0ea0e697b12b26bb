"""`export`: a searched (or given) architecture to a transformers folder, ONNX, OpenVINO IR and INT8, validated."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Any

import typer

from nasbert_deploy.cli.common import console
from nasbert_deploy.space import SPACES

SpaceChoice = Enum("SpaceChoice", {name: name for name in SPACES}, type=str)  # type: ignore[misc]


class Init(str, Enum):
    supernet = "supernet"
    random = "random"


def _check_out(out: Path, force: bool) -> None:
    """Fail before any work if `out` cannot be (re)placed: a file, a non-empty folder without --force, no write access."""
    from nasbert_deploy.errors import ExportError

    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} exists and is a file; give a folder path")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(f"--out {out} exists and is not empty; pass --force to replace it, or choose another folder")
    anc = out.parent.resolve()
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir() or not os.access(anc, os.W_OK | os.X_OK):
        raise ExportError(f"cannot write the output folder {out}: {anc} is not writable; choose a writable --out")


def _space(space_name: str | None, init: Init, supernet: Path | None) -> Any:
    from nasbert_deploy.errors import CheckpointError
    from nasbert_deploy.export.pipeline import supernet_space
    from nasbert_deploy.space import get_space

    given = get_space(space_name) if space_name else None
    if init is Init.random:
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


def _read_calibration(path: Path | None) -> tuple[str, ...]:
    from nasbert_deploy.errors import ExportError

    if path is None:
        return ()
    try:
        lines = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    except (OSError, UnicodeDecodeError) as exc:
        raise ExportError(f"cannot read --calibration {path}: {exc}") from None
    if not lines:
        raise ExportError(f"--calibration {path} has no text; give a UTF-8 file with one text per line")
    return lines


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export(
        out: Path = typer.Option(..., "--out", help="Output folder (written atomically: complete or absent)."),
        arch: str | None = typer.Option(None, "--arch", help="Architecture string, e.g. '128:mha,ffn|192:sep3,ffn'."),
        device: str | None = typer.Option(None, "--device", help="Device spec (name or .toml) to time on (default: cpu-ort)."),
        max_latency_ms: float | None = typer.Option(None, "--max-latency-ms", help="Search the arch: latency budget (ms)."),
        max_params: str | None = typer.Option(None, "--max-params", help="Search the arch: parameter budget (10M, 500K)."),
        max_memory_mb: float | None = typer.Option(None, "--max-memory-mb", help="Search the arch: memory budget (MiB)."),
        formats: str = typer.Option("onnx,openvino", "--format", help="Comma-separated: onnx, openvino."),
        int8: bool = typer.Option(False, "--int8", help="Also write INT8 models (ORT dynamic; NNCF with calibration text)."),
        fp16: bool = typer.Option(False, "--fp16", help="OpenVINO IR with fp16 weights (default fp32)."),
        token_type_ids: bool = typer.Option(False, "--token-type-ids", help="Give the ONNX/IR models a token_type_ids input."),
        supernet: Path | None = typer.Option(None, "--supernet", help="Supernet folder (default: the shipped one)."),
        init: Init = typer.Option(
            Init.supernet, "--init", help="Weights: inherited from the supernet, or random (latency only)."
        ),
        space: SpaceChoice | None = typer.Option(
            None, "--space", help="Search space for --init random (default: the supernet's)."
        ),
        seed: int = typer.Option(0, "--seed", help="Seed for --init random."),
        tokenizer: Path | None = typer.Option(None, "--tokenizer", help="Tokenizer folder (default: the teacher's)."),
        calibration: Path | None = typer.Option(
            None, "--calibration", help="Text file (one text per line) for INT8 calibration."
        ),
        batch: int | None = typer.Option(None, "--batch", min=1, help="Batch for latency/memory (default: the device's first)."),
        seq_len: int | None = typer.Option(None, "--seq-len", min=2, help="Sequence length (default: the device's longest)."),
        no_timing: bool = typer.Option(False, "--no-timing", help="Skip the latency measurement."),
        no_memory: bool = typer.Option(False, "--no-memory", help="Skip the memory measurement."),
        force: bool = typer.Option(False, "--force", help="Replace a non-empty --out folder."),
    ) -> None:
        """Export a model with weights inherited from the supernet; validate every artefact against PyTorch; report."""
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        from nasbert_deploy.devices import load_device
        from nasbert_deploy.errors import ArchError
        from nasbert_deploy.export.pipeline import (
            ExportOptions,
            check_device_formats,
            export_model,
            load_export_tokenizer,
            model_from_supernet,
            parse_formats,
            random_model,
            select_arch,
        )
        from nasbert_deploy.export.report import print_summary
        from nasbert_deploy.space import parse_count

        budget_given = any(v is not None for v in (max_latency_ms, max_params, max_memory_mb))
        if (arch is None) == (not budget_given):
            raise ArchError(
                "give either --arch ARCH or a budget (--device NAME --max-latency-ms L "
                "[--max-params P] [--max-memory-mb M]), not both"
            )
        if budget_given and (max_latency_ms is None or device is None):
            raise ArchError("searching an architecture needs --device NAME and --max-latency-ms L")
        spec = load_device(device or "cpu-ort")
        options = ExportOptions(
            formats=parse_formats(formats),
            int8=int8,
            fp16=fp16,
            token_type_ids=token_type_ids,
            batch=batch or spec.batch_sizes[0],
            seq_len=seq_len or max(spec.seq_lens),
            measure_latency=not no_timing,
            measure_memory=not no_memory,
            calibration_texts=_read_calibration(calibration),
        )
        check_device_formats(spec, options)
        _check_out(out, force)
        sp = _space(space.value if space is not None else None, init, supernet)
        if arch is None:
            try:
                params = None if max_params is None else parse_count(max_params)
            except ArchError as exc:
                raise ArchError(f"--max-params: {exc}") from None
            assert max_latency_ms is not None
            chosen = select_arch(
                spec, max_latency_ms, params, max_memory_mb, options.batch, min(options.seq_len, sp.max_positions), supernet
            )
            arch_obj = chosen.arch
            console.print(f"searched: {arch_obj} (predicted {chosen.latency_ms:.3f} ms, loss {chosen.loss:.4f})", highlight=False)
        else:
            arch_obj = sp.parse(arch)
        tok = load_export_tokenizer(tokenizer, sp)
        if init is Init.random:
            model, weights = random_model(arch_obj, sp, seed)
        else:
            model, weights = model_from_supernet(arch_obj, supernet)

        def show(check: Any) -> None:
            mark = "[green]✓[/]" if check.passed else "[red]✗[/]"
            extra = f", cosine {check.cosine_mean:.4f}" if check.kind == "int8" else f" (tol {check.tolerance:.1e})"
            console.print(
                f"  {mark} {check.runtime:<17} {check.output} batch {check.batch} seq {check.seq_len:<4} "
                f"max abs diff {check.max_abs_diff:.2e}{extra}",
                highlight=False,
            )

        with Progress(
            SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console, transient=True
        ) as bar:
            task = bar.add_task("export", total=None)
            report = export_model(
                model, out, tok, spec, options, weights, on_step=lambda s: bar.update(task, description=s), on_check=show
            )
        print_summary(report, console, out)
