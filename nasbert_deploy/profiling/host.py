"""How far latency figures can be trusted on the machine at hand, and re-timing the reference to rescale.

`check_host` times the fixed reference model (`items.reference_item`) in several rounds before profiling
and reports their spread (slowest over fastest round median), their IQR, the load average, the CPUs the
process may run on and the hypervisor's steal time meanwhile; `HostCheck.too_noisy` when the spread is
above the threshold (10%: the reference alone then varies more than the figures are meant to be good
for), with advice. `profile_device` stores it in the table's manifest and warns (`NoisyHostWarning`).

`host_factor` re-times the reference now and divides by the reference figure stored in a table: a table's
predictions times that factor are for the host's current state (`LatencyTable.rescaled`).
"""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nasbert_deploy.devices import DeviceSpec
from nasbert_deploy.errors import TableError
from nasbert_deploy.profiling.items import make_inputs, reference_item
from nasbert_deploy.profiling.table import LatencyTable

NOISY_HOST_PCT = 10.0


def _cpu_times() -> list[int] | None:
    stat = Path("/proc/stat")
    if not stat.is_file():
        return None
    fields = stat.read_text().splitlines()[0].split()
    return [int(x) for x in fields[1:]] if fields and fields[0] == "cpu" else None


@dataclass(frozen=True)
class HostCheck:
    """The reference model's rounds before profiling (ms) and the state of the host meanwhile."""

    rounds_ms: tuple[float, ...]
    spread_pct: float  # slowest over fastest round, minus 1
    iqr_pct: float  # interquartile range of the rounds over their median
    cpus: int
    affinity: tuple[int, ...] | None  # the CPUs this process may run on
    load_avg: tuple[float, float, float] | None
    steal_pct: float | None  # CPU time the hypervisor gave to others meanwhile, percent of all
    threshold_pct: float = NOISY_HOST_PCT

    @property
    def too_noisy(self) -> bool:
        return self.spread_pct > self.threshold_pct

    def advice(self) -> str:
        """One paragraph: how noisy, and what to do about it."""
        head = (f"the reference model varied by {self.spread_pct:.0f}% between {len(self.rounds_ms)} rounds "
                f"(IQR {self.iqr_pct:.1f}%)")
        if not self.too_noisy:
            return f"host check: {head}; quiet enough for +-10% figures"
        todo = []
        if self.affinity is None or len(self.affinity) > 1:
            todo.append("pin the timing to one core (`taskset -c N`, or ProfileSettings.pin_cpu)")
        if self.load_avg is not None and self.load_avg[0] > 0.5 * self.cpus:
            todo.append(f"stop other load (load average {self.load_avg[0]:.1f} on {self.cpus} CPUs)")
        if self.steal_pct is not None and self.steal_pct > 1.0:
            todo.append(f"use a dedicated host (the hypervisor took {self.steal_pct:.0f}% of the CPU)")
        todo.append("take more rounds (model_rounds, a larger adaptive budget)")
        return (f"host too noisy for +-10% latency figures: {head}, more than {self.threshold_pct:.0f}%. "
                f"To do: {'; '.join(todo)}. The table's noise ceiling says how far its figures can be trusted.")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "too_noisy": self.too_noisy, "advice": self.advice()}


def check_host(fn: Callable[[], Any], rounds: int = 10, threshold_pct: float = NOISY_HOST_PCT, sync: Any = None,
               **measure_kwargs: Any) -> HostCheck:
    """Time the blocking call `fn` (the compiled reference model) in `rounds` rounds of `timing.measure`."""
    from nasbert_deploy.runtimes.timing import measure

    before = _cpu_times()
    meds = [measure(fn, sync=sync, **measure_kwargs).median_ms for _ in range(max(2, rounds))]
    after = _cpu_times()
    steal = None
    if before and after and len(before) > 7:
        total = sum(after) - sum(before)
        steal = 100.0 * (after[7] - before[7]) / total if total > 0 else 0.0
    q = statistics.quantiles(meds, n=4) if len(meds) >= 2 else [meds[0]] * 3
    try:
        aff: tuple[int, ...] | None = tuple(sorted(os.sched_getaffinity(0)))
    except AttributeError:
        aff = None
    try:
        load: tuple[float, float, float] | None = os.getloadavg()
    except OSError:
        load = None
    return HostCheck(tuple(meds), 100.0 * (max(meds) / min(meds) - 1.0), 100.0 * (q[2] - q[0]) / statistics.median(meds),
                     os.cpu_count() or 1, aff, load, steal, threshold_pct)


def reference_probe(spec: DeviceSpec, table: LatencyTable, batch: int, seq_len: int,
                    cache_dir: str | Path | None = None) -> Callable[[], float]:
    """A call that times the table's reference model once now on `spec` at (batch, seq_len) and returns its
    median in ms, with the table's own reference measurement settings (exported through the cache, `cache_dir`
    or the default): interleave it with other timings to set them against the host's state (`host_factor`)."""
    from nasbert_deploy.profiling.cache import ExportCache, compile_items
    from nasbert_deploy.runtimes.timing import measure

    ref = table.reference
    if not ref:
        raise TableError("this table has no reference model (schema < 4, or profiled with reference_every 0); "
                         "profile again to rescale it")
    space = table.space
    item = reference_item(space)
    if item.arch != ref.get("arch"):
        raise TableError(f"the table's reference model {ref.get('arch')!r} is not this build's {item.arch!r}")
    compiled, _ = compile_items([[], [item]], spec, space, ExportCache.at(cache_dir))
    c = compiled[item.key]
    st = table.manifest.get("settings", {})
    kw = {"warmup": st.get("warmup", 5), "runs": st.get("runs", 20), "min_time_s": st.get("reference_min_time_s", 0.1)}
    fn = c.bind(make_inputs(item.inputs, batch, seq_len, space.vocab_size, seed=st.get("seed", 0)))
    return lambda: measure(fn, sync=c.sync, **kw).median_ms


def time_reference(spec: DeviceSpec, table: LatencyTable, batch: int, seq_len: int, rounds: int = 5,
                   cache_dir: str | Path | None = None) -> list[float]:
    """The table's reference model timed now in `rounds` rounds (medians in ms; see `reference_probe`)."""
    probe = reference_probe(spec, table, batch, seq_len, cache_dir)
    return [probe() for _ in range(rounds)]


def host_factor(spec: DeviceSpec, table: LatencyTable, batch: int, seq_len: int, rounds: int = 5,
                cache_dir: str | Path | None = None) -> float:
    """How much slower (> 1) or faster the host is now than when `table` was made: the reference model's median
    over `rounds` timings now, over the table's reference figure at (batch, seq_len)."""
    now = statistics.median(time_reference(spec, table, batch, seq_len, rounds, cache_dir))
    return now / table.reference_ms(batch, seq_len)


def environment() -> dict[str, Any]:
    """Runtime versions and the CPU / GPU model for a table's manifest."""
    import importlib.metadata as md

    versions = {}
    for dist in ("torch", "onnxruntime", "openvino", "nncf", "onnx", "nasbert-deploy"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return {"runtime_versions": versions, "cpu_model": cpu_model(), "gpu_model": gpu_model(), "python": platform.python_version()}


def cpu_model() -> str:
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.is_file() else []
    for line in lines:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def gpu_model() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def machine_mismatch(manifest: dict[str, Any], device_name: str = "DEVICE") -> str | None:
    """One line when a table's manifest was made on another machine (CPU model, logical CPUs, runtime versions)
    than this one, saying what to do; None when they agree (or the manifest does not say)."""
    import os

    diffs = []
    made_on, here = manifest.get("cpu_model"), cpu_model()
    if made_on and made_on != here:
        diffs.append(f"CPU {made_on!r} (here {here!r})")
    cpus = (manifest.get("host_check") or {}).get("logical_cpus") or manifest.get("logical_cpus")
    if isinstance(cpus, int) and cpus != os.cpu_count():
        diffs.append(f"{cpus} logical CPUs (here {os.cpu_count()})")
    now = environment()["runtime_versions"]
    for dist, version in (manifest.get("runtime_versions") or {}).items():
        if dist in ("onnxruntime", "openvino", "torch") and dist in now and now[dist] != version:
            diffs.append(f"{dist} {version} (here {now[dist]})")
    if not diffs:
        return None
    return (f"the latency table was made on another machine: {'; '.join(diffs)}; its figures may be off by 2x here: "
            f"run `nasbert-deploy profile --device {device_name}` on this machine, or check with --rescale")
