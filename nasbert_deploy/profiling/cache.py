"""Profiling exports cached on disk across runs and interruptions, made on all cores before timing starts.

    cache = ExportCache.at(settings.cache_dir)        # $NASBERT_DEPLOY_CACHE, else ~/.cache/nasbert-deploy/exports
    files = prepare_exports(items, spec, space, cache, run_cache)   # item key -> the file `runtime.load` opens

A cached export is a folder `<root>/<runtime>-<target>-<precision>/<key>/` holding what the runtime plug-in
writes (`model.onnx`, and `model.int8.onnx` or the OpenVINO IR) and `meta.json`. `key` hashes the item
(its kind, sizes, op, arch), the space's hash, the device's runtime / target / precision, the versions of
the converters (torch, onnx, onnxscript, onnxruntime, openvino, nncf) and the source of the code that
builds and converts the modules, so any change there misses the cache instead of serving a stale graph.
A folder is written under a temporary name in `<root>/tmp` and renamed into place (atomic: a folder is
complete or absent; two processes racing for one key keep the first).

Operations (and the reference model) are cached in the shared root, whole validation models in a run
folder (`run_cache`, removed by the profiler once the table is written: they are many and large, and a new
seed never reuses them). Whole models are assembled from their parts' cached graphs (`assemble`), and
exported directly where that is not possible.

Exports run in `workers` processes (default: one per CPU of the machine, whatever the parent's affinity:
timing stays on the cores the profiler was started on, exports use all). The torch runtime has nothing
to export (its plug-in has no `from_onnx`); the profiler builds those modules in-process.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nasbert_deploy.devices import DeviceSpec
from nasbert_deploy.profiling.items import Item
from nasbert_deploy.space import SearchSpace

CACHE_ENV = "NASBERT_DEPLOY_CACHE"
CACHE_FORMAT = 1
CONVERTERS = ("torch", "onnx", "onnxscript", "onnxruntime", "openvino", "nncf")
# the code that decides what an export contains: a change to any of it must miss the cache
_CODE = ("model/ops.py", "model/modeling.py", "profiling/items.py", "profiling/assemble.py", "profiling/cache.py",
         "runtimes/convert.py", "runtimes/onnxruntime_rt.py", "runtimes/openvino_rt.py")
_KDLSQ_CODE = ("lowbit/lsq.py", "lowbit/embedding.py", "lowbit/qdq.py", "lowbit/item.py", "lowbit/attention.py",
               "lowbit/grid.py")  # kdlsq devices' exports too
META = "meta.json"

Progress = Callable[[str, int, int], None]


def default_cache_dir() -> Path:
    """`$NASBERT_DEPLOY_CACHE` if set, else `~/.cache/nasbert-deploy/exports` (read when called, not at import)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "nasbert-deploy" / "exports"


@functools.lru_cache(maxsize=1)
def _fingerprint(kdlsq: bool = False) -> dict[str, Any]:
    import importlib.metadata as md

    versions = {}
    for dist in CONVERTERS:
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    pkg = Path(__file__).resolve().parent.parent
    files = _CODE + (_KDLSQ_CODE if kdlsq else ())
    code = hashlib.sha256(b"".join((pkg / f).read_bytes() for f in files if (pkg / f).is_file())).hexdigest()[:16]
    return {"format": CACHE_FORMAT, "versions": versions, "code": code}


@dataclass(frozen=True)
class ExportCache:
    """A folder of cached exports (see the module docstring)."""

    root: Path

    @classmethod
    def at(cls, path: str | Path | None = None) -> ExportCache:
        return cls(Path(path).expanduser() if path else default_cache_dir())

    def folder(self, item: Item, spec: DeviceSpec, space: SearchSpace) -> Path:
        ident = {"item": item.to_dict(), "space_hash": space.space_hash(), "runtime": spec.runtime, "target": spec.target,
                 "precision": spec.precision, **_fingerprint(bool(spec.kdlsq_bits))}
        if spec.kdlsq_bits:  # only then: the keys of every other device stay what they were
            ident["quantizer"] = spec.quantizer
        key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]
        kind = f"-{spec.quantizer}" if spec.kdlsq_bits else ""
        return self.root / f"{spec.runtime}-{spec.target}-{spec.precision}{kind}" / key

    def lookup(self, item: Item, spec: DeviceSpec, space: SearchSpace) -> Path | None:
        """The cached artefact (the file `runtime.load` opens) of `item`, or None."""
        return _complete(self.folder(item, spec, space))

    def onnx(self, item: Item, spec: DeviceSpec, space: SearchSpace) -> Path | None:
        """The cached fp32 ONNX graph of `item` (what whole models are assembled from), or None."""
        p = self.folder(item, spec, space) / "model.onnx"
        return p if p.is_file() and self.lookup(item, spec, space) else None


def _complete(folder: Path) -> Path | None:
    """The artefact of a cache folder if its `meta.json` and the artefact (and an IR's weights) are there."""
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    art = folder / str(meta.get("artefact", ""))
    ok = art.is_file() and (art.suffix != ".xml" or art.with_suffix(".bin").is_file())
    return art if ok else None


def cacheable(spec: DeviceSpec) -> bool:
    """Whether the runtime converts through ONNX (`from_onnx`): torch does not, its modules are built in-process."""
    from nasbert_deploy.runtimes.base import get_runtime

    return hasattr(get_runtime(spec.runtime), "from_onnx")


def _convert(job: dict[str, Any]) -> tuple[str, float, str]:
    """Make one cached export (runs in a worker process): returns (item key, seconds, how it was made)."""
    from nasbert_deploy.profiling.assemble import AssemblyError, assemble_model
    from nasbert_deploy.runtimes.base import get_runtime, random_calibration
    from nasbert_deploy.runtimes.convert import export_onnx

    t0 = time.perf_counter()
    item, space, spec, dest = job["item"], job["space"], job["spec"], Path(job["dest"])
    tmp_root = dest.parent.parent / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{dest.name}.", dir=tmp_root))
    try:
        onnx, how = work / "model.onnx", "exported"
        if job.get("parts"):
            try:
                assemble_model(space.parse(item.arch), job["parts"], onnx, space.output_dim)
                how = "assembled"
            except AssemblyError as exc:
                how = f"exported (not assembled: {exc})"
        example = item.example_inputs(space)
        if spec.kdlsq_bits:  # the integer graph `quantize` writes, from the item's module (`lowbit.item`)
            from nasbert_deploy.lowbit.grid import DEFAULT_ATTENTION_MODE, export_bits
            from nasbert_deploy.lowbit.item import kdlsq_onnx

            attention = export_bits(DEFAULT_ATTENTION_MODE, spec.runtime, spec.kdlsq_bits)  # as `quantize` exports it
            kdlsq_onnx(item.build(space), example, item.output_names[0], onnx, spec.kdlsq_bits, attention_bits=attention)
        elif how != "assembled":
            export_onnx(item.build(space), onnx, example, item.output_names)
        calib = random_calibration(example) if spec.precision == "int8" else None
        art = get_runtime(spec.runtime).from_onnx(onnx, spec, work, calib)
        if job.get("drop_onnx") and art.resolve() != onnx.resolve():
            onnx.unlink()  # whole models are never assembled from: keep only what is loaded
        meta = {"item": item.to_dict(), "device": {"runtime": spec.runtime, "target": spec.target, "precision": spec.precision,
                                                   "quantizer": spec.quantizer},
                "space_hash": space.space_hash(), "artefact": art.name, "how": how,
                "seconds": round(time.perf_counter() - t0, 2), **_fingerprint()}
        (work / META).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists() and not _complete(dest):  # e.g. its artefact deleted by hand: replace it
            shutil.rmtree(dest, ignore_errors=True)
        try:
            os.rename(work, dest)
        except OSError:
            if not (dest / META).is_file():  # not a race lost to another process: a real failure
                raise
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return item.key, time.perf_counter() - t0, how


def _init_worker() -> None:
    """Export workers: one torch thread each, and every CPU of the machine (the parent may be pinned for timing)."""
    import torch

    torch.set_num_threads(1)
    try:
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
    except (AttributeError, OSError):
        pass  # no affinity API, or a cpuset that does not allow it: the parent's cores then


MIN_JOBS_PER_WORKER = 4  # a spawned worker spends seconds importing torch and the converters: worth it past this


class _Workers:
    """Runs export jobs in a pool of spawned processes, made once (at the first stage with at least
    `MIN_JOBS_PER_WORKER` jobs per worker) and kept for every later stage; in-process before that."""

    def __init__(self, workers: int, progress: Progress | None, total: int) -> None:
        self.workers, self.progress, self.total, self.done = workers, progress, total, 0
        self.pool: Any = None

    def __enter__(self) -> _Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)

    def _tick(self) -> None:
        self.done += 1
        if self.progress:
            self.progress("export", self.done, self.total)

    def run(self, jobs: list[dict[str, Any]]) -> list[str]:
        """Run `jobs`; returns how each was made."""
        import multiprocessing as mp
        import warnings
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from concurrent.futures.process import BrokenProcessPool

        hows: list[str] = []
        if self.workers > 1 and len(jobs) > 1 and (self.pool is not None or len(jobs) >= MIN_JOBS_PER_WORKER * self.workers):
            finished: set[str] = set()
            try:
                if self.pool is None:
                    self.pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"), initializer=_init_worker)
                for fut in as_completed([self.pool.submit(_convert, j) for j in jobs]):
                    key, _, how = fut.result()
                    finished.add(key)
                    hows.append(how)
                    self._tick()
                return hows
            except BrokenProcessPool as exc:  # e.g. a script without `if __name__ == "__main__":` (workers re-run it)
                warnings.warn(f"parallel export failed ({exc}); exporting in this process instead", RuntimeWarning,
                              stacklevel=3)
                self.workers, self.pool = 1, None
                jobs = [j for j in jobs if j["item"].key not in finished]
        for job in jobs:
            hows.append(_convert(job)[2])
            self._tick()
        return hows


def export_workers(requested: int) -> int:
    """`requested` worker processes, or (0) one per CPU of the machine."""
    return requested if requested > 0 else (os.cpu_count() or 1)


def prepare_exports(
    stages: Sequence[Sequence[Item]],
    spec: DeviceSpec,
    space: SearchSpace,
    cache: ExportCache,
    run_cache: ExportCache | None = None,
    workers: int = 0,
    progress: Progress | None = None,
    clock: Callable[[int, float], None] | None = None,
) -> tuple[dict[str, Path], dict[str, int]]:
    """Make every missing export of `stages` (lists of items, one stage after the other, in parallel within one;
    list a model's parts in an earlier stage than the model). Whole validation models go to `run_cache`,
    assembled from their parts; parts no stage lists are exported first (stage -1). `clock(stage, seconds)`
    gets each stage's wall time. Returns (item key -> the artefact `runtime.load` opens, how many of the
    missing exports were 'exported' / 'assembled')."""
    from nasbert_deploy.profiling.assemble import part_keys
    from nasbert_deploy.profiling.items import op_items

    n = export_workers(workers)
    where = {it.key: (run_cache or cache) if it.kind == "model" else cache for st in stages for it in st}
    ops = {it.key: it for it in op_items(space)}
    models = [it for st in stages for it in st if it.is_model]
    needed = part_keys([space.parse(it.arch) for it in models])
    listed = {it.key for st in stages for it in st}
    stages = [[ops[k] for k in sorted(needed - listed)], *stages]
    where.update({k: cache for k in needed - listed})
    missing = [[it for it in st if where[it.key].lookup(it, spec, space) is None] for st in stages]
    total, counts = sum(map(len, missing)), {}
    if progress:
        progress("export", 0, total)
    with _Workers(n, progress, total) as pool:
        for i, todo in enumerate(missing, -1):
            if not todo:
                continue
            t0 = time.perf_counter()
            jobs = []
            for it in todo:
                job: dict[str, Any] = {"item": it, "space": space, "spec": spec,
                                       "dest": str(where[it.key].folder(it, spec, space))}
                if it.is_model and not spec.kdlsq_bits:  # kdlsq parts hold integer graphs: export whole models
                    parts = {k: cache.onnx(ops[k], spec, space) for k in part_keys([space.parse(it.arch)])}
                    job["parts"] = {k: str(p) for k, p in parts.items() if p is not None}
                    job["drop_onnx"] = True
                jobs.append(job)
            for how in pool.run(jobs):
                head = how.split(" ")[0]
                counts[head] = counts.get(head, 0) + 1
            if clock:
                clock(i, time.perf_counter() - t0)
    files = {}
    for st in stages[1:]:
        for it in st:
            art = where[it.key].lookup(it, spec, space)
            if art is None:
                from nasbert_deploy.errors import ExportError

                raise ExportError(f"export of {it.key!r} left nothing in the cache {where[it.key].root}")
            files[it.key] = art
    return files, counts


def compile_items(
    stages: Sequence[Sequence[Item]],
    spec: DeviceSpec,
    space: SearchSpace,
    cache: ExportCache,
    run_cache: ExportCache | None = None,
    workers: int = 0,
    progress: Progress | None = None,
    clock: Callable[[int, float], None] | None = None,
) -> tuple[dict[str, Any], dict[str, int]]:
    """Every item of `stages` ready to time on `spec` (item key -> `Compiled`): exported through the cache
    (`prepare_exports`) and loaded, or, for the torch runtime, built in-process. Also how many exports were
    made ('exported' / 'assembled'; nothing for torch or a warm cache)."""
    from nasbert_deploy.runtimes.base import get_runtime

    rt = get_runtime(spec.runtime)
    if not cacheable(spec):
        out = {}
        for i, st in enumerate(stages):
            t0 = time.perf_counter()
            for it in st:
                out[it.key] = rt.compile(it.build(space), it.example_inputs(space), it.output_names, spec, None)
            if clock:
                clock(i, time.perf_counter() - t0)
        return out, {}
    files, counts = prepare_exports(stages, spec, space, cache, run_cache, workers, progress, clock)
    out = {}
    for i, st in enumerate(stages):  # opening a session / compiling for the device is part of each stage's cost
        t0 = time.perf_counter()
        for it in st:
            out[it.key] = rt.load(files[it.key], spec)
        if clock:
            clock(i, time.perf_counter() - t0)
    return out, counts
