"""Measure an export on the device: predicted vs measured latency, estimated vs measured memory.

Latency: the device's latency table predicts, the device's runtime measures (`time_compiled`, the
one measurement function; the lowest median of `MEASURE_ROUNDS` passes, the statistic the tables are
made of). Memory: `model.memory.estimate_memory` (weights in the export's precision + peak
activations) against the RSS growth of a fresh process that loads the exported ONNX in ONNX Runtime
(1 thread) and runs one inference (`measure_onnx_memory`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nasbert_deploy.devices import DeviceSpec
from nasbert_deploy.errors import ExportError, SpaceError, TableError
from nasbert_deploy.space import Arch, SearchSpace

DEFAULT_TIMING: dict[str, Any] = {"warmup": 5, "runs": 30, "min_time_s": 1.0, "max_cv": 0.1}  # `timing.measure` kwargs
MEASURE_ROUNDS = 3  # passes of the latency measurement; the lowest median is kept, as in the latency tables


def load_latency_table(spec: DeviceSpec, space: SearchSpace | None = None) -> Any:
    """The device's latency table (`./profiles/NAME.json`, else the shipped one), checked against `space`.

    `TableError` if there is none (or `nasbert_deploy.profiling.table` is missing), `SpaceError` if it is for another space.
    """
    try:
        from nasbert_deploy.profiling.table import LatencyTable, find_table
    except ImportError:
        raise TableError("latency tables are not supported by this build (nasbert_deploy.profiling.table is missing)") from None
    return LatencyTable.load(find_table(spec.name), space)



def measure_latency(
    folder: Path,
    spec: DeviceSpec,
    space: SearchSpace | None,
    arch: Arch | None,
    batch: int,
    seq_len: int,
    vocab: int,
    timing_kwargs: dict[str, Any],
    measure: bool,
    rescale: bool = False,
    factor: float | None = None,
) -> dict[str, Any]:
    """Predicted (device latency table) and measured (`time_compiled` on the device's runtime) latency in ms.

    The measured figure combines `MEASURE_ROUNDS` rounds with the table's round statistic (as the table's
    entries and models were). With `rescale` and a table that has a reference model, the reference is timed
    before, between and after the rounds: `host_factor` (its median now over the table's) and the prediction
    rescaled to the host's state now (`predicted_rescaled_ms`). `factor`: a `--calibrate` factor (`host.calibrate`)
    the table's predictions are scaled by (`calibration_factor`). Without `arch` (a model outside every search
    space: BERT, a pruned model) the latency is measured only."""
    import statistics

    import numpy as np

    from nasbert_deploy.runtimes.base import get_runtime, time_compiled
    from nasbert_deploy.runtimes.timing import DEFAULT_STATISTIC, round_statistic

    out: dict[str, Any] = {
        "device": spec.name,
        "runtime": spec.runtime,
        "precision": spec.precision,
        "threads": spec.threads,
        "batch": batch,
        "seq_len": seq_len,
        "predicted_ms": None,
        "blocks_ms": None,
        "measured": None,
    }
    table = None
    try:
        if arch is None or space is None:
            raise TableError("the model is not an architecture of a search space, which latency tables cover")
        table = load_latency_table(spec, space)
        if factor is not None:
            table = table.rescaled(factor)
            out["calibration_factor"] = factor
        pred = table.predict(arch, batch, seq_len)
        out["predicted_ms"] = float(pred.total_ms)
        out["blocks_ms"] = [float(x) for x in pred.blocks_ms]
    except (TableError, SpaceError) as exc:
        out["predicted_note"] = f"not predicted: {exc}"
    if not measure:
        out["measured_note"] = "not measured (--no-timing)"
        return out
    rt = get_runtime(spec.runtime)
    reason = rt.availability(spec)
    if reason:
        out["measured_note"] = f"not measured: device {spec.name!r} is not usable here ({reason})"
        return out
    compiled = rt.load(folder, spec)
    ids = np.random.default_rng(0).integers(1, vocab, size=(batch, seq_len), dtype=np.int64)
    inputs = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    probe = None
    if rescale and table is not None and table.reference and out["predicted_ms"]:
        from nasbert_deploy.profiling.host import reference_probe

        probe = reference_probe(spec, table, batch, seq_len)
    # measured as the table's entries are: MEASURE_ROUNDS rounds combined by the table's statistic
    rounds, refs = [], []
    for _ in range(MEASURE_ROUNDS):
        if probe:
            refs.append(probe())
        rounds.append(time_compiled(compiled, inputs, **timing_kwargs).to_dict())
    if probe:
        refs.append(probe())
    stat = table.statistic if table is not None else DEFAULT_STATISTIC
    meds = [r["median_ms"] for r in rounds]
    out["measured"] = {**min(rounds, key=lambda t: t["median_ms"]), "median_ms": round_statistic(meds, stat),
                       "min_ms": min(meds), "rounds": MEASURE_ROUNDS, "statistic": stat}
    if out["predicted_ms"]:
        out["measured_over_predicted"] = out["measured"]["median_ms"] / out["predicted_ms"]
    if refs and table is not None:
        hf = statistics.median(refs) / table.reference_ms(batch, seq_len)
        out["host_factor"] = hf
        out["predicted_rescaled_ms"] = out["predicted_ms"] * hf
        out["measured_over_predicted_rescaled"] = out["measured"]["median_ms"] / out["predicted_rescaled_ms"]
    return out


def measure_memory(
    folder: Path, space: SearchSpace, arch: Arch, batch: int, seq_len: int, vocab: int, measure: bool
) -> list[dict[str, Any]]:
    """Estimate vs measured peak RSS growth (MiB) for each exported ONNX file."""
    from nasbert_deploy.model.memory import estimate_memory
    from nasbert_deploy.runtimes.base import export_artefact

    rows = []
    for kind, precision in (("onnx", "fp32"), ("onnx-int8", "int8")):
        file = export_artefact(folder, kind)
        if not file.is_file():
            continue
        name = file.relative_to(folder).as_posix()
        est = estimate_memory(space, arch, batch, seq_len, precision)
        row: dict[str, Any] = {
            "file": name,
            "precision": precision,
            "batch": batch,
            "seq_len": seq_len,
            "estimate_mb": est.total_mb,
            "weights_mb": est.weights_mb,
            "activations_mb": est.activations_mb,
        }
        if measure:
            m = measure_onnx_memory(file, batch, seq_len, vocab)
            row.update(
                measured_session_mb=m.session_mb,
                measured_peak_mb=m.peak_mb,
                measured_over_estimate=m.peak_mb / est.total_mb if est.total_mb else None,
            )
        rows.append(row)
    return rows


def measure_all(
    model: Any,
    folder: Path,
    spec: DeviceSpec,
    arch: Arch,
    space: SearchSpace,
    options: Any,
    seq_len: int,
    step: Callable[[str], None],
    more_specs: Sequence[DeviceSpec] = (),
) -> dict[str, Any]:
    """Latency on `spec` (and on each of `more_specs`) and memory of the ONNX files, at (options.batch, seq_len).

    `latency` is `spec`'s entry, `latencies` every device's in order.
    """
    vocab = min(space.vocab_size, int(model.config.vocab_size))
    lats = []
    for s in (spec, *more_specs):
        step(f"latency on {s.name}")
        lats.append(measure_latency(
            folder, s, space, arch, options.batch, seq_len, vocab, options.timing_kwargs, options.measure_latency,
            getattr(options, "rescale_latency", False), getattr(options, "latency_factors", {}).get(s.name),
        ))
    step("memory")
    mem = measure_memory(folder, space, arch, options.batch, seq_len, vocab, options.measure_memory)
    return {"latency": lats[0], "latencies": lats, "memory": mem}


_RSS_SCRIPT = r"""
import json, sys
import numpy as np
import onnxruntime as ort


def hwm_kib():
    # VmHWM = this process's peak RSS (what ru_maxrss reports, minus the parent's peak that a fork carries over)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise OSError("no VmHWM in /proc/self/status")


path, b, t, vocab = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = np.random.default_rng(0)
feed_all = {"input_ids": rng.integers(1, vocab, (b, t), dtype=np.int64), "attention_mask": np.ones((b, t), np.int64),
            "token_type_ids": np.zeros((b, t), np.int64)}
# reset the peak mark to the current RSS (Linux >= 4.0) so import-time transients do not hide the growth
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
base = hwm_kib()
so = ort.SessionOptions()
so.intra_op_num_threads = 1
so.inter_op_num_threads = 1
so.log_severity_level = 3
sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
loaded = hwm_kib()
sess.run(None, {i.name: feed_all[i.name] for i in sess.get_inputs()})
peak = hwm_kib()
print(json.dumps({"baseline_kib": base, "loaded_kib": loaded, "peak_kib": peak}))
"""


@dataclass(frozen=True)
class MeasuredMemory:
    """Peak RSS growth (MiB) of a fresh process that loads an ONNX model in ORT and runs one inference.

    `session_mb`: growth after creating the session (weights + runtime state); `peak_mb`: after one run.
    Both are relative to the RSS after importing onnxruntime and building the inputs.
    """

    session_mb: float
    peak_mb: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def measure_onnx_memory(
    onnx_path: str | Path, batch: int, seq_len: int, vocab_size: int, timeout_s: float = 300
) -> MeasuredMemory:
    """Run `_RSS_SCRIPT` in a fresh subprocess (1 ORT thread) and read its peak RSS (KiB).

    The peak is `VmHWM` from /proc/self/status, reset to the current RSS after importing onnxruntime
    (`/proc/self/clear_refs`). It is what `ru_maxrss` measures, except that `ru_maxrss` of a child
    starts at the *parent's* peak (Linux carries it over the fork), which hides a small model's growth.
    """
    if sys.platform != "linux":
        raise ExportError("measured memory (ru_maxrss in KiB) is only supported on Linux")
    env = dict(os.environ, OMP_NUM_THREADS="1")  # inherits the telemetry switches (nasbert_deploy.telemetry)
    cmd = [sys.executable, "-c", _RSS_SCRIPT, str(onnx_path), str(batch), str(seq_len), str(vocab_size)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ExportError(f"memory measurement of {onnx_path} failed: {tail}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return MeasuredMemory(
        session_mb=(data["loaded_kib"] - data["baseline_kib"]) / 1024,
        peak_mb=(data["peak_kib"] - data["baseline_kib"]) / 1024,
    )
