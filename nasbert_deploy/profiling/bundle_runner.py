"""Standalone on-device profiler: times the models of a profiling bundle; needs only numpy and onnxruntime or openvino.

Written into a bundle by `nasbert-deploy profile --device SPEC --bundle DIR`; run it on the device:

    python run_profile.py [--out results.json]

then bring `results.json` back and turn it into a latency table with
`nasbert-deploy profile --import results.json`. Completed timings are kept in `results.json.partial` and
skipped when the runner is started again after an interruption.

`measure` below is the on-device copy of `nasbert_deploy.runtimes.timing.measure` (the device has no torch and
no nasbert-deploy): warm-up calls, at least `runs` timed calls and `min_time_s` of timing, median /
p90 / mean / CV, whole measurement repeated up to `retries` times while CV > `max_cv`, least noisy kept.
Keep the two in step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("CI", "true")  # openvino telemetry off (a standalone program on the device: its own decision)
HERE = Path(__file__).resolve().parent


def measure(fn, warmup=5, runs=30, min_time_s=0.0, max_runs=2000, max_cv=None, retries=2):
    """Latency statistics (ms) of the blocking call `fn()`; see the module docstring."""
    best = None
    for _ in range(retries + 1):
        for _ in range(warmup):
            fn()
        samples = []
        start = time.perf_counter()
        while len(samples) < runs or (time.perf_counter() - start < min_time_s and len(samples) < max_runs):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
        s = sorted(samples)
        mean = statistics.fmean(s)
        std = statistics.pstdev(s) if len(s) > 1 else 0.0
        t = {"median_ms": statistics.median(s), "p90_ms": s[min(len(s) - 1, int(round(0.9 * (len(s) - 1))))],
             "mean_ms": mean, "cv": std / mean if mean else 0.0, "runs": len(s)}
        if best is None or t["cv"] < best["cv"]:
            best = t
        if max_cv is None or best["cv"] <= max_cv:
            break
    return best


def make_inputs(specs, batch, seq_len, vocab_size, seed=0):
    """Same shapes and kinds as the profiler: ids (b, t) < vocab, mask (b, t) ones, float (b, t, width) normal."""
    rng = np.random.default_rng(seed)
    out = {}
    for s in specs:
        if s["kind"] == "ids":
            out[s["name"]] = rng.integers(0, vocab_size, size=(batch, seq_len), dtype=np.int64)
        elif s["kind"] == "mask":
            out[s["name"]] = np.ones((batch, seq_len), dtype=np.int64)
        else:
            out[s["name"]] = rng.standard_normal((batch, seq_len, s["width"])).astype(np.float32)
    return out


def ort_loader(m):
    import onnxruntime as ort

    o = m["ort"]
    so = ort.SessionOptions()
    if o["threads"]:
        so.intra_op_num_threads = o["threads"]
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    for k, v in o["session_config"].items():
        so.add_session_config_entry(str(k), str(v))
    providers = [(p, o["provider_options"]) if i == 0 and o["provider_options"] else p for i, p in enumerate(o["providers"])]

    def open_model(path):  # the same session settings as nasbert_deploy.runtimes.onnxruntime_rt
        return ort.InferenceSession(str(path), so, providers=providers, disabled_optimizers=o.get("disabled_optimizers", []))

    def bind(sess, feed):
        feed = {i.name: feed[i.name] for i in sess.get_inputs()}
        return lambda: sess.run(None, feed)

    return open_model, bind, {"onnxruntime": ort.__version__}


def ov_loader(m):
    import openvino as ov

    core = ov.Core()

    def open_model(path):
        return core.compile_model(str(path), m["openvino"]["device"], m["openvino"]["config"])

    def bind(compiled, feed):
        request = compiled.create_infer_request()
        for i in compiled.inputs:
            name = i.get_any_name()
            request.set_tensor(name, ov.Tensor(np.ascontiguousarray(feed[name].astype(i.get_element_type().to_dtype()))))
        return request.infer

    return open_model, bind, {"openvino": ov.__version__}


def cpu_model():
    info = Path("/proc/cpuinfo")
    for line in info.read_text().splitlines() if info.is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_features():
    """L3 size per instance (KiB) and kernel ISA, as `host.cpu_features` records them (keep the two in step)."""
    flags, l3 = None, None
    info = Path("/proc/cpuinfo")
    for line in info.read_text().splitlines() if info.is_file() else []:
        if line.startswith(("flags", "Features")):
            flags = set(line.split(":", 1)[1].split())
            break
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            if (index / "level").read_text().strip() == "3":
                size = (index / "size").read_text().strip().upper()
                l3 = int(size[:-1]) * {"K": 1, "M": 1024, "G": 1 << 20}[size[-1]]
        except (OSError, ValueError, KeyError):
            continue
    isa = {"avx2": ("avx2",), "avx512f": ("avx512f",), "avx512_bf16": ("avx512_bf16",), "avx512_vnni": ("avx512_vnni",),
           "amx": ("amx_tile", "amx_bf16", "amx_int8")}
    return {"l3_cache_kb": l3, "isa": None if flags is None else [n for n, fl in isa.items() if flags & set(fl)]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=HERE, help="bundle folder (default: this script's folder)")
    ap.add_argument("--out", type=Path, default=Path("results.json"), help="results file to write")
    args = ap.parse_args(argv)
    m = json.loads((args.bundle / "manifest.json").read_text())
    st, vocab = m["settings"], m["space"]["vocab_size"]
    open_model, bind, versions = (ort_loader if m["runtime"] == "onnxruntime" else ov_loader)(m)
    partial = args.out.with_name(args.out.name + ".partial")
    state = json.loads(partial.read_text()) if partial.is_file() else {"bundle_id": m["bundle_id"], "results": {}, "wall_s": 0.0}
    if state.get("bundle_id") != m["bundle_id"]:
        state = {"bundle_id": m["bundle_id"], "results": {}, "wall_s": 0.0}
    results, start, before = state["results"], time.perf_counter(), state["wall_s"]
    kw = {k: st[k] for k in ("warmup", "runs", "min_time_s", "max_cv", "retries")}
    whole = {"warmup": st.get("model_warmup", kw["warmup"]), "runs": st.get("model_runs", kw["runs"])}
    model_kw = {**kw, **whole, "min_time_s": st.get("model_min_time_s", st["min_time_s"])}
    ref_kw = {**kw, **whole, "min_time_s": st.get("reference_min_time_s", st["min_time_s"])}
    every = st.get("reference_every", 0)

    def rounds_of(it):  # whole models have their own rounds (as nasbert_deploy.profiling.profiler.ProfileSettings)
        return st.get("model_rounds", st["rounds"]) if it["kind"] == "model" else st["rounds"]

    items = [it for it in m["items"] if it["kind"] != "reference"]
    ref = next((it for it in m["items"] if it["kind"] == "reference"), None) if every > 0 else None
    passes = max(rounds_of(it) for it in items)
    models = {}
    total = len(m["points"]) * sum(rounds_of(it) for it in items)
    done = sum(min(len(results.get(it["key"], {}).get(f"b{b}s{s}", [])), rounds_of(it))
               for it in items for b, s in m["points"])

    def time_one(it, b, s, r, kwargs):
        # each round keeps its pass and a counter over the run: the profiler sets it against the reference around it
        if it["key"] not in models:
            models[it["key"]] = open_model(args.bundle / it["file"])
        fn = bind(models[it["key"]], make_inputs(it["inputs"], b, s, vocab, seed=st["seed"]))
        state["n"] = state.get("n", 0) + 1
        t = {**measure(fn, **kwargs), "pass": r, "n": state["n"]}
        results.setdefault(it["key"], {}).setdefault(f"b{b}s{s}", []).append(t)
        state["wall_s"] = before + time.perf_counter() - start
        partial.write_text(json.dumps(state))
        return t

    for r in range(passes):
        for b, s in m["points"]:
            pk = f"b{b}s{s}"
            order = list(items)
            random.Random(f"{st['seed']}/{r}/{pk}").shuffle(order)
            due = [it for it in order if len(results.get(it["key"], {}).get(pk, [])) < (
                1 if rounds_of(it) <= 1 else sum(round(j * (passes - 1) / (rounds_of(it) - 1)) <= r
                                                 for j in range(rounds_of(it))))]
            for i, it in enumerate(due):
                if ref is not None and i % every == 0:  # the reference before the first and every `every` items
                    time_one(ref, b, s, r, ref_kw)
                done += 1
                t = time_one(it, b, s, r, model_kw if it["kind"] == "model" else kw)
                print(f"[{done}/{total}] {it['key']} {pk}: {t['median_ms']:.3f} ms", flush=True)
            if ref is not None and due:  # ... and after the last
                time_one(ref, b, s, r, ref_kw)
    out = {"kind": "nasbert-profile-results", "bundle": m, "results": results,
           "environment": {"runtime_versions": versions, "cpu_model": cpu_model(), "gpu_model": None,
                           "python": platform.python_version(), "cpu_features": cpu_features(),
                           "logical_cpus": os.cpu_count()},
           "wall_s": before + time.perf_counter() - start}
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(out, indent=1))
    os.replace(tmp, args.out)
    partial.unlink()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
