"""`export`: a searched (or given) architecture to a transformers folder, ONNX, OpenVINO IR and INT8, validated."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from nasbert_deploy.cli.common import DevicesOpt, InitName, SeedOpt, SpaceName, console, print_note

app = typer.Typer()


def _opt(*names: str, help: str, **kw: Any) -> Any:
    return typer.Option(*names, help=help, **kw)


@app.command("export")
def export(
    out: Annotated[Path, _opt("--out", help="Output folder (written atomically: complete or absent).")],
    arch: Annotated[str | None, _opt("--arch", help="Architecture string, e.g. '128:mha,ffn|192:sep3,ffn'.")] = None,
    device: DevicesOpt = None,
    max_latency_ms: Annotated[list[float] | None, _opt("--max-latency-ms", help="Search the arch: latency budget (ms), "
                                                       "one per --device in the same order.")] = None,
    max_params: Annotated[str | None, _opt("--max-params", help="Search the arch: parameter budget (10M, 500K).")] = None,
    max_memory_mb: Annotated[float | None, _opt("--max-memory-mb", help="Search the arch: memory budget (MiB).")] = None,
    formats: Annotated[str, _opt("--format", help="Comma-separated: onnx, openvino.")] = "onnx,openvino",
    int8: Annotated[bool, _opt("--int8", help="Also write INT8 models (ORT dynamic; NNCF with calibration text).")] = False,
    fp16: Annotated[bool, _opt("--fp16", help="OpenVINO IR with fp16 weights (default fp32).")] = False,
    token_type_ids: Annotated[bool, _opt("--token-type-ids", help="Give the ONNX/IR models a token_type_ids input.")] = False,
    supernet: Annotated[Path | None, _opt("--supernet", help="Supernet folder (default: the shipped one).")] = None,
    init: Annotated[InitName, _opt("--init", help="Weights: inherited from the supernet, or random (latency only).")]
    = InitName("supernet"),
    space: Annotated[SpaceName | None, _opt("--space", help="Search space for --init random (default: the supernet's).")]
    = None,
    seed: SeedOpt = 0,
    tokenizer: Annotated[Path | None, _opt("--tokenizer", help="Tokenizer folder (default: the teacher's).")] = None,
    calibration: Annotated[Path | None, _opt("--calibration", help="Text file (one text per line) for INT8 calibration.")]
    = None,
    batch: Annotated[int | None, _opt("--batch", min=1, help="Batch for latency/memory (default: the device's first).")]
    = None,
    seq_len: Annotated[int | None, _opt("--seq-len", min=2, help="Sequence length (default: the device's longest).")] = None,
    no_timing: Annotated[bool, _opt("--no-timing", help="Skip the latency measurement.")] = False,
    no_memory: Annotated[bool, _opt("--no-memory", help="Skip the memory measurement.")] = False,
    calibrate: Annotated[bool, _opt("--calibrate", help="First time one whole model per device here and scale its "
                                    "table's predictions (search and report) by measured / predicted.")] = False,
    force: Annotated[bool, _opt("--force", help="Replace a non-empty --out folder.")] = False,
    model: Annotated[Path | None, _opt("--model", help="Export this trained folder instead (a `distill` encoder, a "
                                       "`finetune` / `finetune-teacher` classifier): no --arch, budget, --supernet, "
                                       "--init.")] = None,
) -> None:
    """Export a model (weights inherited from the supernet, or a trained folder with --model); validate every
    artefact against PyTorch; report."""
    from nasbert_deploy.devices import load_device
    from nasbert_deploy.export.pipeline import ExportOptions, parse_formats
    from nasbert_deploy.export.run import DEFAULT_DEVICE, ExportRequest, budget_or_arch, prepare_export, read_calibration

    if model is not None:
        _check_model_options(arch, max_latency_ms, max_params, max_memory_mb, supernet, init, space)
        budget = None
    else:
        budget = budget_or_arch(arch, len(device or []), max_latency_ms, max_params, max_memory_mb)
    spec = device[0] if device else load_device(DEFAULT_DEVICE)
    options = ExportOptions(formats=parse_formats(formats), int8=int8, fp16=fp16, token_type_ids=token_type_ids,
                            batch=batch or spec.batch_sizes[0], seq_len=seq_len or max(spec.seq_lens),
                            measure_latency=not no_timing, measure_memory=not no_memory,
                            calibration_texts=read_calibration(calibration),
                            budget_ms=tuple(budget.latencies_ms) if budget is not None else ())
    request = ExportRequest(out, options, spec, arch, budget, supernet, init.value, space.value if space else None, seed,
                            tokenizer, force, tuple((device or [])[1:]), calibrate, model)
    prepared = prepare_export(request, print_note)
    if prepared.weights.get("init") == "trained":
        console.print(f"trained {prepared.weights['kind']} {model}: {prepared.model.config.arch}", highlight=False)
    if prepared.chosen is not None:
        c = prepared.chosen
        ms = ", ".join(f"{m:.3f} ms on {d.name}" for m, d in zip(c.latencies_ms or (c.latency_ms,), device or [spec]))
        console.print(f"searched: {c.arch} (predicted {ms}, loss {c.loss:.4f})", highlight=False)
    _export(request, prepared)


def _check_model_options(arch: str | None, max_latency_ms: list[float] | None, max_params: str | None,
                         max_memory_mb: float | None, supernet: Path | None, init: Any, space: Any) -> None:
    """--model fixes the architecture and the weights: the options that choose them are errors beside it."""
    from nasbert_deploy.errors import ArchError

    given = [name for name, value in (("--arch", arch), ("--max-latency-ms", max_latency_ms or None),
                                      ("--max-params", max_params), ("--max-memory-mb", max_memory_mb),
                                      ("--supernet", supernet), ("--space", space)) if value is not None]
    if init.value != "supernet":
        given.append("--init")
    if given:
        raise ArchError(f"--model exports a trained folder as it is: drop {', '.join(given)} (they choose an "
                        "architecture and weights from the supernet)")


class _Checks:
    """The numeric validation in one line per artefact (its worst shape), not one per shape: every check is in
    report.json. Collected while the export runs, printed when it succeeded (a failure is one error line)."""

    def __init__(self) -> None:
        self.by: dict[tuple[str, str], list[Any]] = {}

    def __call__(self, check: Any) -> None:
        self.by.setdefault((check.runtime, check.output), []).append(check)

    def print(self) -> None:
        outputs = {o for _, o in self.by}
        console.print("numeric validation against PyTorch (every shape in report.json):")
        for (runtime, output), cs in self.by.items():
            ok = sum(c.passed for c in cs)
            mark = "[green]✓[/]" if ok == len(cs) else "[red]✗[/]"
            label = runtime if len(outputs) == 1 else f"{runtime}/{output}"
            worst = f"max abs diff {max(c.max_abs_diff for c in cs):.1e}"
            limit = (f", cosine >= {min(c.cosine_mean for c in cs):.4f}" if cs[0].kind == "int8"
                     else f" (tol {cs[0].tolerance:.0e})")
            console.print(f"  {mark} {label:<17} {ok}/{len(cs)} shapes, {worst}{limit}", highlight=False)


def _export(request: Any, prepared: Any) -> None:
    """Write, validate and measure with a spinner naming the step; then the summary."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from nasbert_deploy.export.pipeline import export_model
    from nasbert_deploy.export.report import print_summary

    checks = _Checks()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                  transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("export", total=None)
        report = export_model(prepared.model, request.out, prepared.tokenizer, request.spec, prepared.options,
                              prepared.weights, on_step=lambda s: bar.update(task, description=s), on_check=checks,
                              more_specs=request.more_specs)
    checks.print()
    print_summary(report, console, request.out)
