"""The export report: predicted vs measured latency, memory estimate vs measured, files, validation.

`report.json` (schema below, version `REPORT_SCHEMA`) and `report.md` (the same, readable) are
written into the export folder; `print_summary` prints it with rich.

Memory: the estimate is `memory.estimate_memory` (weights in the export's precision + peak
activations at the report's batch/seq); the measurement is the RSS growth of a fresh process that
loads the exported ONNX in ONNX Runtime (1 thread) and runs one inference (`export_validate.measure_onnx_memory`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nasbert_deploy.devices import DeviceSpec
from nasbert_deploy.space import Arch, SearchSpace, format_params

REPORT_SCHEMA = 1
MIB = 2**20
MEASURE_ROUNDS = 3  # passes of the latency measurement; the lowest median is kept, as in the latency tables


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("nasbert-deploy", "torch", "transformers", "onnxruntime", "openvino", "nncf"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _int8_deviation(checks: Sequence[Any]) -> dict[str, Any]:
    """Per INT8 runtime: worst mean cosine, worst token cosine and max abs difference vs fp32 over all shapes."""
    out: dict[str, Any] = {}
    for c in checks:
        if c.kind != "int8":
            continue
        d = out.setdefault(c.runtime, {"cosine_mean_min": 1.0, "cosine_token_min": 1.0, "max_abs_diff": 0.0})
        d["cosine_mean_min"] = min(d["cosine_mean_min"], c.cosine_mean)
        d["cosine_token_min"] = min(d["cosine_token_min"], c.cosine_min)
        d["max_abs_diff"] = max(d["max_abs_diff"], c.max_abs_diff)
    return out


def machine() -> dict[str, Any]:
    """The CPU model (/proc/cpuinfo), logical CPUs and OS the export was measured on."""
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    info = Path("/proc/cpuinfo")
    for line in info.read_text().splitlines() if info.is_file() else []:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {"cpu_model": cpu, "logical_cpus": os.cpu_count(), "os": f"{platform.system()} {platform.release()}"}


OVERRUN = 0.10  # a measured latency more than 10% over (or under) the budget or the prediction is flagged


def latency_flags(latencies: Sequence[dict[str, Any]], budget_ms: Sequence[float] = ()) -> list[str]:
    """One line per measured latency that is more than `OVERRUN` over its device's budget or its prediction, or
    more than `OVERRUN` under its prediction (a pessimistic table: the budget had room for a larger model)."""
    flags = []
    for i, one in enumerate(latencies):
        measured = (one.get("measured") or {}).get("median_ms")
        if measured is None:
            continue
        budget = budget_ms[i] if i < len(budget_ms) else None
        if budget and measured > (1 + OVERRUN) * budget:
            flags.append(f"{one['device']}: measured {measured:.3g} ms is {measured / budget - 1:.0%} over the "
                         f"{budget:g} ms budget; profile this machine (nasbert-deploy profile --device {one['device']}) "
                         "and search again")
        predicted = one.get("predicted_ms")
        if predicted and measured > (1 + OVERRUN) * predicted:
            flags.append(f"{one['device']}: measured {measured:.3g} ms is {measured / predicted - 1:.0%} over the "
                         f"predicted {predicted:.3g} ms (table from another machine, or a busy host)")
        elif predicted and measured < (1 - OVERRUN) * predicted:
            flags.append(f"{one['device']}: measured {measured:.3g} ms is {1 - measured / predicted:.0%} under the "
                         f"predicted {predicted:.3g} ms: the table overestimates this model here (a --fast profile, or "
                         "a host busier when profiled), so a larger model may fit the budget; profile again without "
                         "--fast and search again")
    return flags


def build_report(
    arch: Arch,
    space: SearchSpace,
    spec: DeviceSpec,
    options: Any,
    seq_len: int,
    weights: dict[str, Any],
    checks: Sequence[Any],
    measured: dict[str, Any],
    folder: Path,
    openvino_precision: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The report as a JSON-ready dict (sizes in MiB, latencies in ms; files by path relative to `folder`)."""
    files = {
        p.relative_to(folder).as_posix(): p.stat().st_size / MIB
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    }
    return {
        "schema": REPORT_SCHEMA,
        "arch": str(arch),
        "space": space.name,
        "space_hash": space.space_hash(),
        "params": space.params(arch),
        "flops": space.flops(arch, seq_len),
        "output_dim": space.output_dim,
        "output": "logits" if weights.get("kind") == "classifier" else "last_hidden_state",
        "weights": weights,
        "device": spec.to_dict(),
        "formats": list(options.formats),
        "int8": options.int8,
        "fp16": options.fp16,
        "inputs": ["input_ids", "attention_mask"] + (["token_type_ids"] if options.token_type_ids else []),
        "files_mb": files,
        "validation": {
            "passed": all(c.passed for c in checks),
            "checks": [c.to_dict() for c in checks],
            "int8_deviation_from_fp32": _int8_deviation(checks),
            "openvino_precision": openvino_precision,
        },
        "latency": measured["latency"],
        "latencies": measured.get("latencies", [measured["latency"]]),
        "latency_flags": latency_flags(measured.get("latencies", [measured["latency"]]), getattr(options, "budget_ms", ())),
        "memory": measured["memory"],
        "machine": machine(),
        "versions": _versions(),
    }


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _latency_md(lat: dict[str, Any]) -> list[str]:
    lines = [
        f"## Latency on {lat['device']} ({lat['runtime']}, {lat['precision']}, {lat['threads']} thread(s)), "
        f"batch {lat['batch']}, seq {lat['seq_len']}",
        "",
        "| predicted ms | measured median ms | measured p90 ms | CV | measured / predicted |",
        "|---|---|---|---|---|",
    ]
    m = lat.get("measured") or {}
    ratio = lat.get("measured_over_predicted")
    lines.append(
        f"| {_ms(lat.get('predicted_ms'))} | {_ms(m.get('median_ms'))} | {_ms(m.get('p90_ms'))} | "
        f"{m.get('cv', float('nan')):.3f} | {'n/a' if ratio is None else f'{ratio:.2f}'} |"
    )
    for note in ("predicted_note", "measured_note"):
        if lat.get(note):
            lines.append(f"\n{lat[note]}")
    if lat.get("calibration_factor"):
        lines.append(f"\nPredicted with the table scaled by x{lat['calibration_factor']:.3f} (`--calibrate`: one whole model "
                     "timed on this machine first).")
    return lines + [""]


def report_markdown(r: dict[str, Any]) -> str:
    """`report.md`: the report as readable Markdown."""
    lat = r["latency"]
    w = r["weights"]
    lines = [f"# Export report: `{r['arch']}`", ""]
    start = w.get("start") if isinstance(w.get("start"), dict) else {}
    if w.get("init") == "random":
        lines += ["**WARNING: the weights are RANDOM** (`--init random`): use this export for latency studies only.", ""]
    elif w.get("init") == "trained":  # export --model DIR
        lines += [f"Weights of the trained {w.get('kind')} `{w.get('model')}` (training reports: "
                  f"{', '.join(w.get('training') or {}) or 'none in the folder'}).", ""]
    elif start.get("encoder"):  # search-task --init etd-*: Extract Then Distill
        lines += [f"Weights extracted from the encoder `{start['encoder']}` ({start.get('init')}; layer map "
                  f"{start.get('layer_map')}), then distilled.", ""]
    else:
        lines += [f"Weights inherited from the supernet `{w.get('supernet')}`.", ""]
    lines += [
        f"- space: {r['space']} ({r['space_hash']}), params: {format_params(r['params'])} ({r['params']:,}), "
        f"FLOPs at seq {lat['seq_len']}: {r['flops']:,}",
        f"- inputs: {', '.join(r['inputs'])}; output: {r.get('output', 'last_hidden_state')}; formats: {', '.join(r['formats'])}"
        + (", int8" if r["int8"] else "")
        + (", OpenVINO fp16 weights" if r["fp16"] else ""),
        "",
    ]
    for one in r.get("latencies") or [lat]:
        lines += _latency_md(one)
    lines += [
        "## Memory (MiB): estimate = weights + peak activations; measured = peak RSS growth in ORT",
        "",
        "| file | precision | weights | activations | estimate | measured (session) | measured (peak) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in r["memory"]:
        lines.append(
            f"| {row['file']} | {row['precision']} | {row['weights_mb']:.2f} | {row['activations_mb']:.2f} | "
            f"{row['estimate_mb']:.2f} | {_ms(row.get('measured_session_mb'))} | {_ms(row.get('measured_peak_mb'))} |"
        )
    lines += ["", "## Files (MiB)", "", "| file | size |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in r["files_mb"].items()]
    v = r["validation"]
    lines += [
        "",
        f"## Numeric validation: {'passed' if v['passed'] else 'FAILED'} ({len(v['checks'])} checks)",
        "",
        "| runtime | batch | seq | max abs diff | tolerance | mean cosine | |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in v["checks"]:
        tol = f"cos >= {0.98}" if c["kind"] == "int8" else f"{c['tolerance']:.2g}"
        lines.append(
            f"| {c['runtime']} | {c['batch']} | {c['seq_len']} | {c['max_abs_diff']:.3g} | {tol} | "
            f"{c['cosine_mean']:.5f} | {'✓' if c['passed'] else '✗'} |"
        )
    ov = v.get("openvino_precision")
    if ov:
        lines.append(
            f"\nOpenVINO inference precision: the CPU default here is {ov['cpu_default']} (bf16 on CPUs with AVX-512 BF16 / "
            f"AMX); validated at {', '.join(ov['validated'])} (rtol {ov['tolerance_rtol']}); to {ov['how_to_pin']}."
        )
    for name, d in v["int8_deviation_from_fp32"].items():
        lines.append(
            f"\nINT8 {name} vs fp32: worst mean cosine {d['cosine_mean_min']:.4f}, worst token cosine "
            f"{d['cosine_token_min']:.4f}, max abs diff {d['max_abs_diff']:.3g}"
        )
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], folder: Path) -> None:
    from nasbert_deploy.fileio import write_json_atomic, write_text_atomic

    write_json_atomic(folder / "report.json", report)
    write_text_atomic(folder / "report.md", report_markdown(report))


def print_summary(report: dict[str, Any], console: Any, out: Path) -> None:
    """A short console summary of the report (the full one is in report.md)."""
    from rich.table import Table

    lat, w = report["latency"], report["weights"]
    if w.get("init") == "random":
        console.print("[bold yellow]warning:[/] the weights are RANDOM (--init random): for latency studies only")
    t = Table(title=f"exported {report['arch']} ({format_params(report['params'])} params) to {out}")
    for col in ("what", "value"):
        t.add_column(col, no_wrap=col == "what")  # file names whole; the values wrap between words
    lats = report.get("latencies") or [lat]
    for one in lats:
        m = one.get("measured") or {}
        cal = f" (calibrated x{one['calibration_factor']:.2f})" if one.get("calibration_factor") else ""
        t.add_row(
            f"latency {one['device']} b{one['batch']} s{one['seq_len']}",
            f"predicted {_ms(one.get('predicted_ms'))} ms{cal}, measured {_ms(m.get('median_ms'))} ms "
            f"(p90 {_ms(m.get('p90_ms'))})",
        )
    ov = report["validation"].get("openvino_precision")
    if ov:
        t.add_row("OpenVINO precision", f"CPU default {ov['cpu_default']}; validated at {', '.join(ov['validated'])}")
    for row in report["memory"]:
        t.add_row(
            f"memory {row['file']}",
            f"estimate {row['estimate_mb']:.1f} MiB, measured peak {_ms(row.get('measured_peak_mb'))} MiB",
        )
    for name, size in report["files_mb"].items():
        t.add_row(name, f"{size:.2f} MiB")
    for name, d in report["validation"]["int8_deviation_from_fp32"].items():
        t.add_row(f"{name} vs fp32", f"cosine >= {d['cosine_mean_min']:.4f}, max abs diff {d['max_abs_diff']:.3g}")
    console.print(t)
    for flag in report.get("latency_flags", []):
        console.print(f"[bold yellow]latency check:[/] {flag}", highlight=False)
    for one in lats:
        for note in ("predicted_note", "measured_note"):
            if one.get(note):
                console.print(note.split("_")[0] + f" ({one['device']}): " + one[note], highlight=False)
