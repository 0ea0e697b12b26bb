"""How well do the latency tables predict whole models they were not fitted on, and how well does the host
reproduce its own figures (the noise ceiling)?

Two modes, both per CPU device and (batch, seq_len) point, printing share within +-10%, MAPE, max and
mean error beside the **noise ceiling** (the same whole models measured twice, in separate passes: share of
the two measurements within +-10% of each other, and their MAPE) and which of the two limits the figure.

`--fresh` (the check the goals refer to): profile the device now (`validate` fitting models + `--models`
held-out ones, timed in the same shuffled passes; the correction is fitted on the fitting models only). The
held-out architectures come from a **new seed** every run (printed; `--holdout-seed` repeats one). It also
prints the measurement modes the profiler chose among -- round statistic x raw or drift-normalised -- with
their cross-validated error on the fitting models (what chose) and their error on the held-out models (what
nobody chose with). With `--out-dir profiles` the tables become the reference tables.

Default (stored tables): time `--models` random whole models (none among the table's validation models) with
the table's own measurement settings, against the table in ./profiles or the shipped one. "drift %": the
table's own validation models timed again now, median change since profiling; for tables with a reference
model also the error after rescaling to the host's state now (the reference timed beside the models).

`--smoke`: the whole `--fresh` path on the tiny space in about a minute per device (tiny timings, few
models): checks that the benchmark runs, its numbers mean nothing.

    flock /tmp/nasbert-timing.lock taskset -c 1 python benchmarks/bench_latency_prediction.py --fresh --out-dir profiles
    python benchmarks/bench_latency_prediction.py --models 10 --seq-len 128 --devices cpu-ort
    python benchmarks/bench_latency_prediction.py --smoke

Goals (issue 19): >= 95% within +-10% and MAPE <= 5% at every point on cpu-ort, cpu-openvino, cpu-torch, or
the held-out share within 2 points of the host's noise ceiling (printed beside it); profiling one (batch, seq)
point of the standard space in <= 120 s.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

from rich.console import Console
from rich.table import Table

from nasbert_deploy.devices import load_device
from nasbert_deploy.profiling.items import REFERENCE_KEY, model_item, validation_archs
from nasbert_deploy.profiling.measurement import figure
from nasbert_deploy.profiling.profiler import ProfileSettings, profile_device, run_items
from nasbert_deploy.profiling.table import LatencyTable, find_table, point_key
from nasbert_deploy.runtimes.base import require_available
from nasbert_deploy.space import STANDARD, TINY

SMOKE = ProfileSettings(warmup=1, runs=5, min_time_s=0.01, max_cv=None, retries=0, rounds=2, model_rounds=2,
                        model_min_time_s=0.01, validate=10, reference_min_time_s=0.005, host_check_rounds=3)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def bench_fresh(name: str, settings: ProfileSettings, out_dir: str | None, smoke: bool) -> tuple[list[dict], list[dict]]:
    """Profile `name` now with held-out models in the same passes; rows from the table's hold-out errors and noise
    ceilings, and the measurement modes it chose among."""
    import tempfile
    from pathlib import Path

    spec = load_device(name)
    require_available(spec)
    space = TINY if smoke else STANDARD
    if smoke:
        spec = replace(spec, seq_lens=(8, 16))
    with tempfile.TemporaryDirectory(prefix="bench_latency_") as tmp:
        out = Path(out_dir or tmp) / f"{spec.name}.json"
        t0 = time.perf_counter()
        table = profile_device(spec, space, out, settings)
        bench_s = time.perf_counter() - t0
    rows = []
    for pk, v in table.validation.items():
        h, c = v["holdout"], v.get("noise_ceiling") or {}
        rows.append({
            "device": name, "point": pk, "models": h["models"], "mape": h["mape_pct"], "max": h["max_abs_pct"],
            "within10": h["within_10pct"], "bias": h["mean_pct"], "ceiling": c, "limited_by": h.get("limited_by"),
            "loo": (v["mape_pct"], v["within_10pct"]), "planes": len(table.corrections[pk]["planes"]),
            "wall_s": table.manifest["profiling_wall_s"],
            "spread": statistics.median(v.get("round_spread_pct", [0.0]) + h.get("round_spread_pct", [])),
            "n_points": len(table.batch_sizes) * len(table.seq_lens), "bench_s": bench_s, "cpu": table.manifest.get("cpu_model"),
        })
    m = table.measurement
    modes = [{"device": name, **c, "chosen": (c["statistic"], c["normalised"]) == (m["statistic"], m["normalised"])}
             for c in m.get("candidates", [])]
    if not modes:
        modes = [{"device": name, "statistic": m["statistic"], "normalised": m["normalised"], "chosen": True,
                  "note": m.get("chosen_by")}]
    host = table.manifest.get("host_check") or {}
    if host:
        Console().print(f"{name}: {host.get('advice')}")
    return rows, modes


def bench_device(name: str, n_models: int, seq_lens: list[int] | None, seed: int, n_drift: int = 5) -> list[dict]:
    spec = load_device(name)
    require_available(spec)
    table = LatencyTable.load(find_table(spec.name))
    space = table.space
    fitted = {a for v in table.validation.values() for a in v.get("archs", [])}
    pool = validation_archs(space, n_models * 3, seed=seed)
    archs = [a for a in pool if str(a) not in fitted][::3][:n_models]
    if len(archs) < n_models:
        archs = [a for a in pool if str(a) not in fitted][:n_models]
    points = [(b, s) for b in table.batch_sizes for s in (seq_lens or table.seq_lens)]
    st = {k: v for k, v in table.manifest.get("settings", {}).items() if k in ProfileSettings.__dataclass_fields__}
    settings = replace(ProfileSettings(**st), seed=seed, adaptive_budget=0.0, host_check_rounds=0,
                       reference_every=ProfileSettings.reference_every if table.reference else 0)
    val = next(iter(table.validation.values()), {})
    val_archs = val.get("archs", [])
    drift_archs = [space.parse(val_archs[i]) for i in sorted({round(j * (len(val_archs) - 1) / max(n_drift - 1, 1))
                                                               for j in range(n_drift)})] if val_archs and n_drift else []
    results: dict = {}
    t0 = time.perf_counter()
    run_items([model_item(a) for a in archs + drift_archs], points, spec, space, settings, results, lambda: None)
    rows = []
    for b, s in points:
        pk = point_key(b, s)
        refs = results.get(REFERENCE_KEY, {}).get(pk, [])
        errs, rescaled = [], []
        for a in archs:
            rounds = results[model_item(a).key][pk]
            measured = figure(rounds, refs, table.statistic, False)
            pred = table.predict(a, b, s).total_ms
            errs.append(100.0 * (pred - measured) / measured)
            if refs:  # the prediction for the host's state now: x (reference now / reference in the table)
                factor = statistics.median(r["median_ms"] for r in refs) / table.reference_ms(b, s)
                rescaled.append(100.0 * (pred * factor - measured) / measured)
        v = table.validation.get(pk, {})
        then = dict(zip(v.get("archs", []), v.get("measured_ms", [])))
        ratios = sorted(figure(results[model_item(a).key][pk], refs, table.statistic, False) / then[str(a)]
                        for a in drift_archs if str(a) in then)
        rows.append({
            "device": name, "point": pk, "models": len(archs),
            "mape": sum(abs(e) for e in errs) / len(errs), "max": max(abs(e) for e in errs),
            "within10": sum(abs(e) <= 10 for e in errs) / len(errs), "bias": sum(errs) / len(errs),
            "drift": 100.0 * (statistics.median(ratios) - 1.0) if ratios else float("nan"),
            "rescaled": (sum(abs(e) <= 10 for e in rescaled) / len(rescaled), sum(map(abs, rescaled)) / len(rescaled))
            if rescaled else None,
            "wall_s": table.manifest.get("profiling_wall_s", 0.0), "n_points": len(table.batch_sizes) * len(table.seq_lens),
            "bench_s": time.perf_counter() - t0, "cpu": table.manifest.get("cpu_model"),
        })
    return rows


def _modes_table(modes: list[dict]) -> Table:
    t = Table(title="measurement modes the profiler chose among (mean over points)")
    for col in ("device", "statistic", "figures", "CV MAPE % (fit set: chooses)", "held-out MAPE %", "held-out ±10%",
                "ceiling ±10%", "ceiling MAPE %", "chosen"):
        t.add_column(col, justify="right")
    for m in modes:
        style = "bold" if m["chosen"] else None
        t.add_row(m["device"], m["statistic"], "drift-normalised" if m["normalised"] else "raw",
                  f"{m['cv_mape_pct']:.2f}" if "cv_mape_pct" in m else m.get("note", "–"),
                  f"{m['holdout_mape_pct']:.2f}" if "holdout_mape_pct" in m else "–", _pct(m.get("holdout_within_10pct")),
                  _pct(m.get("ceiling_within_10pct")),
                  f"{m['ceiling_mape_pct']:.2f}" if "ceiling_mape_pct" in m else "–", "✓" if m["chosen"] else "",
                  style=style)
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", default="cpu-ort,cpu-openvino,cpu-torch", help="comma-separated device names")
    ap.add_argument("--models", type=int, default=50, help="held-out whole models per device")
    ap.add_argument("--fresh", action="store_true", help="profile each device now, held-out models in the same passes")
    ap.add_argument("--smoke", action="store_true", help="--fresh on the tiny space with tiny timings (a quick run-through)")
    ap.add_argument("--validate", type=int, default=ProfileSettings.validate,
                    help="--fresh: whole models the correction is fitted on")
    ap.add_argument("--out-dir", default=None, help="--fresh: keep the tables here (e.g. profiles)")
    ap.add_argument("--model-rounds", type=int, default=ProfileSettings.model_rounds, help="--fresh: rounds per whole model")
    ap.add_argument("--model-min-time", type=float, default=ProfileSettings.model_min_time_s,
                    help="--fresh: seconds per whole-model round")
    ap.add_argument("--min-time", type=float, default=ProfileSettings.min_time_s, help="--fresh: seconds per operation round")
    ap.add_argument("--reference-every", type=int, default=ProfileSettings.reference_every,
                    help="--fresh: items between two timings of the reference model")
    ap.add_argument("--adaptive-budget", type=float, default=ProfileSettings.adaptive_budget,
                    help="--fresh: extra rounds' time as a share of the base timing")
    ap.add_argument("--pin-cpu", type=int, default=None, help="--fresh: time on this CPU only (exports use all)")
    ap.add_argument("--holdout-seed", type=int, default=None, help="--fresh: seed of the held-out architectures "
                    "(default: a new one each run, printed)")
    ap.add_argument("--cache-dir", default=None, help="export cache (default: $NASBERT_DEPLOY_CACHE or ~/.cache/nasbert-deploy)")
    ap.add_argument("--seq-len", type=int, action="append", help="sequence length(s) to test (default: the table's)")
    ap.add_argument("--seed", type=int, default=1234, help="stored tables: seed of the new architectures (tables use 0)")
    ap.add_argument("--drift-models", type=int, default=5, help="table validation models re-timed to measure drift")
    args = ap.parse_args()
    fresh = args.fresh or args.smoke
    console = Console(width=max(Console().width, 170))
    if fresh:
        hseed = args.holdout_seed if args.holdout_seed is not None else int(time.time()) % 1_000_000
        base = SMOKE if args.smoke else ProfileSettings()
        settings = replace(base, validate=args.validate if not args.smoke else base.validate,
                           holdout=args.models if not args.smoke else min(args.models, 6), holdout_seed=hseed,
                           model_rounds=args.model_rounds if not args.smoke else base.model_rounds,
                           model_min_time_s=args.model_min_time if not args.smoke else base.model_min_time_s,
                           cache_dir=args.cache_dir)
        if not args.smoke:
            settings = replace(settings, min_time_s=args.min_time, reference_every=args.reference_every,
                               adaptive_budget=args.adaptive_budget, pin_cpu=args.pin_cpu)
        console.print(f"held-out architectures from seed {hseed} (repeat with --holdout-seed {hseed})")
    how = "timed in the same passes as the table" if fresh else "timed against the stored tables"
    t = Table(title=f"latency prediction on held-out whole models ({how}) beside the host's noise ceiling")
    cols = ["device", "batch/seq", "models", "within ±10%", "MAPE %", "max |err| %", "mean err %"]
    cols += (["ceiling ±10% / MAPE %", "limited by", "LOO MAPE % / ±10% (fit set)", "planes", "round spread %"] if fresh
             else ["drift %", "rescaled to now: ±10% / MAPE %"])
    for col in cols + ["profiling wall s (per point)"]:
        t.add_column(col, justify="right")
    cpu, modes = None, []
    for name in args.devices.split(","):
        if fresh:
            rows, m = bench_fresh(name.strip(), settings, args.out_dir, args.smoke)
            modes += m
        else:
            rows = bench_device(name.strip(), args.models, args.seq_len, args.seed, args.drift_models)
        for r in rows:
            cpu = r["cpu"]
            if fresh:
                c = r["ceiling"]
                extra = [f"{_pct(c.get('within_10pct'))} / {c['mape_pct']:.1f}" if c else "–", r["limited_by"] or "–",
                         f"{r['loo'][0]:.1f} / {100 * r['loo'][1]:.0f}%", str(r["planes"]), f"{r['spread']:.0f}"]
            else:
                rs = r["rescaled"]
                extra = [f"{r['drift']:+.1f}", f"{_pct(rs[0])} / {rs[1]:.1f}" if rs else "– (no reference in the table)"]
            t.add_row(r["device"], r["point"], str(r["models"]), f"{100 * r['within10']:.0f}%", f"{r['mape']:.1f}",
                      f"{r['max']:.1f}", f"{r['bias']:+.1f}", *extra, f"{r['wall_s']:.0f} ({r['wall_s'] / r['n_points']:.0f})")
            console.print(f"{r['device']} {r['point']}: within ±10% {100 * r['within10']:.0f}%, MAPE {r['mape']:.1f}%")
    console.print(t)
    if modes:
        console.print(_modes_table(modes))
    console.print(f"tables profiled on: {cpu}")
    if fresh:
        console.print("ceiling: each whole model's rounds split into two halves (separate passes), each turned into a "
                      "figure; share of models whose two figures are within ±10% of each other, and their MAPE. "
                      "'limited by noise': the held-out share within ±10% is no more than 2 points below the ceiling's. "
                      "round spread %: median over the whole models of (slowest / fastest round - 1)")
    if args.smoke:
        console.print("[bold]smoke run[/]: tiny space and tiny timings; the numbers mean nothing")


if __name__ == "__main__":
    main()
