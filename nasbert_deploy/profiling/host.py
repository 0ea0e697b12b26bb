"""How far latency figures can be trusted on the machine at hand, and re-timing the reference to rescale.

`check_host` times the fixed reference model (`items.reference_item`) in several rounds before profiling
and reports their spread (slowest over fastest round median), their IQR, the load average, the CPUs the
process may run on and the hypervisor's steal time meanwhile; `HostCheck.too_noisy` when the spread is
above the threshold (10%: the reference alone then varies more than the figures are meant to be good
for), with advice. `profile_device` stores it in the table's manifest and warns (`NoisyHostWarning`).

`host_factor` re-times the reference now and divides by the reference figure stored in a table: a table's
predictions times that factor are for the host's current state (`LatencyTable.rescaled`). `calibrate` needs
no stored figure: it times the space's reference model as a whole model and divides by the table's prediction
for it (`search` / `export --calibrate`).

`environment` is what a table's manifest records about the machine (CPU model, L3 size and kernel ISA,
logical CPUs, runtime versions); `machine_mismatch` compares a manifest with this machine in one line.
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
from nasbert_deploy.space import SearchSpace

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


def _probe(spec: DeviceSpec, space: SearchSpace, table: LatencyTable, batch: int, seq_len: int, kind: str,
           cache_dir: str | Path | None) -> Callable[[], float]:
    """A call timing `space`'s reference model once now on `spec` (median ms), exported through the cache, with
    the table's measurement settings for `kind` ('reference' or 'model': a whole model's min time)."""
    from nasbert_deploy.profiling.cache import ExportCache, compile_items
    from nasbert_deploy.profiling.settings import ProfileSettings
    from nasbert_deploy.runtimes.timing import measure

    item = reference_item(space)
    compiled, _ = compile_items([[], [item]], spec, space, ExportCache.at(cache_dir))
    c = compiled[item.key]
    st = {**ProfileSettings().to_dict(), **table.manifest.get("settings", {})}
    min_time = st["reference_min_time_s"] if kind == "reference" else st["model_min_time_s"]
    kw = {"warmup": st["model_warmup"], "runs": st["model_runs"], "min_time_s": min_time}
    fn = c.bind(make_inputs(item.inputs, batch, seq_len, space.vocab_size, seed=st["seed"]))
    return lambda: measure(fn, sync=c.sync, **kw).median_ms


def reference_probe(spec: DeviceSpec, table: LatencyTable, batch: int, seq_len: int,
                    cache_dir: str | Path | None = None) -> Callable[[], float]:
    """A call that times the table's reference model once now on `spec` at (batch, seq_len) and returns its
    median in ms, with the table's own reference measurement settings (exported through the cache, `cache_dir`
    or the default): interleave it with other timings to set them against the host's state (`host_factor`)."""
    ref = table.reference
    if not ref:
        raise TableError("this table has no reference model (schema < 4, or profiled with reference_every 0); "
                         "profile again to rescale it")
    item = reference_item(table.space)
    if item.arch != ref.get("arch"):
        raise TableError(f"the table's reference model {ref.get('arch')!r} is not this build's {item.arch!r}")
    return _probe(spec, table.space, table, batch, seq_len, "reference", cache_dir)


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


@dataclass(frozen=True)
class Calibration:
    """One whole model timed on this machine now against the table's prediction for it (`calibrate`)."""

    device: str
    arch: str
    batch: int
    seq_len: int
    rounds_ms: tuple[float, ...]
    measured_ms: float  # the rounds combined by the table's round statistic, as its whole models were
    predicted_ms: float

    @property
    def factor(self) -> float:
        """Measured over predicted: the table's predictions times this are for this machine now."""
        return self.measured_ms / self.predicted_ms

    def line(self) -> str:
        return (f"calibrated {self.device}: reference model measured {self.measured_ms:.3f} ms here, table predicted "
                f"{self.predicted_ms:.3f} ms (batch {self.batch}, seq {self.seq_len}): predictions x {self.factor:.2f}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "factor": self.factor}


def calibrate(spec: DeviceSpec, table: LatencyTable, space: SearchSpace, batch: int, seq_len: int, rounds: int = 5,
              cache_dir: str | Path | None = None) -> Calibration:
    """Time `space`'s reference model (`items.reference_arch`: the table's own reference model when the table was made
    for `space`, a mid-sized BERT-like model of the space otherwise) now on `spec` in `rounds` whole-model rounds of
    `timing.measure` and set it against `table`'s prediction for it: `table.rescaled(cal.factor)` predicts for the
    machine's current state (the whole correction scales, so the search stays exact)."""
    from nasbert_deploy.profiling.items import reference_arch
    from nasbert_deploy.runtimes.timing import round_statistic

    arch = reference_arch(space)
    predicted = table.predict(arch, batch, seq_len).total_ms
    probe = _probe(spec, space, table, batch, seq_len, "model", cache_dir)
    meds = tuple(probe() for _ in range(max(1, rounds)))
    return Calibration(spec.name, str(arch), batch, seq_len, meds, round_statistic(meds, table.statistic), predicted)


def environment() -> dict[str, Any]:
    """Runtime versions, the CPU / GPU model, the CPU's kernel-relevant features and logical CPUs for a manifest."""
    import importlib.metadata as md

    versions = {}
    for dist in ("torch", "onnxruntime", "openvino", "nncf", "onnx", "nasbert-deploy"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return {"runtime_versions": versions, "cpu_model": cpu_model(), "gpu_model": gpu_model(), "python": platform.python_version(),
            "cpu_features": cpu_features(), "logical_cpus": os.cpu_count()}


def cpu_model() -> str:
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.is_file() else []
    for line in lines:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


# ISA features that change which kernels the runtimes pick (name in a manifest -> any of these /proc/cpuinfo flags)
KERNEL_ISA = {"avx2": ("avx2",), "avx512f": ("avx512f",), "avx512_bf16": ("avx512_bf16",),
              "avx512_vnni": ("avx512_vnni",), "amx": ("amx_tile", "amx_bf16", "amx_int8")}


def _lscpu(*args: str) -> str:
    import subprocess

    try:
        return subprocess.run(["lscpu", *args], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags (/proc/cpuinfo, else lscpu); None when neither says."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.is_file() else []
    for line in lines:
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    for line in _lscpu().splitlines():
        if line.startswith("Flags:"):
            return set(line.split(":", 1)[1].split())
    return None


def l3_cache_kb() -> int | None:
    """Size of one last-level (L3) cache instance in KiB, the one a core of this process shares (sysfs, else lscpu)."""
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            if (index / "level").read_text().strip() == "3":
                size = (index / "size").read_text().strip().upper()
                mult = {"K": 1, "M": 1024, "G": 1024 * 1024}.get(size[-1:], None)
                return int(size[:-1]) * mult if mult else int(size) // 1024
        except (OSError, ValueError):
            continue
    for line in _lscpu("-B", "-C=LEVEL,ONE-SIZE").splitlines()[1:]:
        parts = line.split()
        if len(parts) == 2 and parts[0] == "3" and parts[1].isdigit():
            return int(parts[1]) // 1024
    return None


def cpu_features() -> dict[str, Any]:
    """What besides the model name changes kernel speed: {"l3_cache_kb": int | None, "isa": the `KERNEL_ISA` names this
    CPU has (None if its flags cannot be read)}."""
    flags = cpu_flags()
    isa = None if flags is None else [name for name, fl in KERNEL_ISA.items() if flags & set(fl)]
    return {"l3_cache_kb": l3_cache_kb(), "isa": isa}


def gpu_model() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def _kib(kb: int) -> str:
    return f"{kb / 1024:g} MiB" if kb >= 1024 else f"{kb} KiB"


def _feature_diffs(made: Any, here: dict[str, Any]) -> list[str]:
    """The L3 size and kernel ISA of a manifest's `cpu_features` against this CPU's; fields it lacks are skipped."""
    if not isinstance(made, dict):
        return []
    diffs = []
    l3, l3_here = made.get("l3_cache_kb"), here.get("l3_cache_kb")
    if isinstance(l3, int) and isinstance(l3_here, int) and l3 != l3_here:
        diffs.append(f"L3 {_kib(l3)} per instance (here {_kib(l3_here)})")
    isa, isa_here = made.get("isa"), here.get("isa")
    if isinstance(isa, list) and isinstance(isa_here, list) and set(isa) != set(isa_here):
        there, mine = sorted(set(isa) - set(isa_here)), sorted(set(isa_here) - set(isa))
        parts = [f"{', '.join(xs)} {where}" for xs, where in ((there, "there, not here"), (mine, "here, not there")) if xs]
        diffs.append(f"ISA {' and '.join(parts)}")
    return diffs


def machine_mismatch(manifest: dict[str, Any], device_name: str = "DEVICE", check: str = "check with --rescale") -> str | None:
    """One line when a table's manifest was made on another machine than this one (CPU model, L3 cache size and
    kernel ISA (`cpu_features`), the GPU of a CUDA device's table, logical CPUs, runtime versions), saying what to
    do (`check`: the command's own way to re-time, e.g. 'pass --calibrate'); None when they agree. Fields the
    manifest lacks (older tables) are skipped."""
    diffs = []
    made_on, here = manifest.get("cpu_model"), cpu_model()
    if made_on and made_on != here:
        diffs.append(f"CPU {made_on!r} (here {here!r})")
    diffs += _feature_diffs(manifest.get("cpu_features"), cpu_features())
    device = manifest.get("device")
    made_gpu = manifest.get("gpu_model")
    if made_gpu and isinstance(device, dict) and device.get("target") == "cuda":  # a GPU table: the GPU decides
        gpu_here = gpu_model()
        if gpu_here != made_gpu:
            diffs.append(f"GPU {made_gpu!r} (here {repr(gpu_here) if gpu_here else 'no GPU'})")
    cpus = manifest.get("logical_cpus") or (manifest.get("host_check") or {}).get("cpus")
    if isinstance(cpus, int) and not isinstance(cpus, bool) and cpus != os.cpu_count():
        diffs.append(f"{cpus} logical CPUs (here {os.cpu_count()})")
    now = environment()["runtime_versions"]
    runtime = device.get("runtime") if isinstance(device, dict) else None  # its own runtime only, when known
    timed = (runtime,) if runtime in ("onnxruntime", "openvino", "torch") else ("onnxruntime", "openvino", "torch")
    for dist, version in (manifest.get("runtime_versions") or {}).items():
        if dist in timed and dist in now and now[dist] != version:
            diffs.append(f"{dist} {version} (here {now[dist]})")
    if not diffs:
        return None
    return (f"the latency table was made on another machine: {'; '.join(diffs)}; its figures may be off by 2x here: "
            f"run `nasbert-deploy profile --device {device_name}` on this machine, or {check}")
