"""Device latency tables: per-operation latencies (ms) and an affine whole-model correction.

A table holds, for each profiled (batch, seq_len) point, the latency of every distinct operation
measured in isolation, keyed by a canonical signature:

    mha@h256  ffn@h128  sep5@h384         a layer operation at a hidden size
    boundary@h128>h256                    the Linear map between two blocks
    embedding@h192                        Embeddings + Linear(embed_dim, h1)
    head@h512                             Linear(h_N, output_dim)
    overhead                              one call of a trivial model (the per-call cost every isolated op paid)

A part's raw cost is its entry minus `overhead` (each isolated op paid the call overhead once; the whole
model pays it once, which the offset absorbs). Per point a correction fitted on whole models
(`latency_fit`) is the maximum of one or two planes,

    plane_i = scale_i * sum(parts_ms) + ms_per_mparam_i * sum(parts_mparams) + offset_ms_i,

the second term the cost of streaming the parts' weights from memory, which an op timed alone with its
weights cache-hot never pays, the second plane the step once the weights outgrow the cache. Each plane
is applied per part (`scale * part_ms + ms_per_mparam * part_mparams`) with `offset_ms` once in
`fixed_ms`, so that for every plane `sum(block_ms) + fixed_ms` is that plane's prediction exactly and
the search stays exact (a latency budget is one additive constraint per plane). A part's weights
(`part_mparams`, millions of parameters) come from the space: an operation's parameters, a boundary's /
head's Linear, the embedding's LayerNorm and projection (the token tables are gathered a few rows per
call, not streamed).
Sequence lengths between profiled ones are interpolated linearly (entries and planes: the interpolation
of two maxima is the maximum of every interpolated pair of planes); batch
sizes must be profiled ones. A missing entry is a `TableError` naming the key, never a partial sum.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nasbert_deploy.errors import SpaceError, TableError
from nasbert_deploy.fileio import write_json_atomic
from nasbert_deploy.profiling.fit import Plane
from nasbert_deploy.space import Arch, BlockArch, Op, SearchSpace

# 2: corrections gained ms_per_mparam (per-weight term); 3: a correction is a max of planes; 4: `measurement` (round
# statistic, drift normalisation), `reference` (the reference model's figure per point), noise ceilings in validation
SCHEMA_VERSION = 4
READABLE_SCHEMAS = (2, 3, 4)  # a schema-2 correction is one plane: read and upgraded; 2 and 3 read as raw lowest medians
OVERHEAD_KEY = "overhead"
MANIFEST_KEYS = (
    "schema_version", "space_hash", "space", "device", "runtime_versions", "cpu_model", "gpu_model",
    "created", "profiling_wall_s", "settings", "source",
)
# search-space fields that change an operation's shape (a table serves any space that agrees on these)
_SHAPE_FIELDS = ("head_dim", "ffn_ratio", "embed_dim", "output_dim", "vocab_size", "max_positions", "type_vocab_size")


def op_key(op: Op, hidden: int) -> str:
    return f"{op.name}@h{hidden}"


def boundary_key(h_in: int, h_out: int) -> str:
    return f"boundary@h{h_in}>h{h_out}"


def embedding_key(h1: int) -> str:
    return f"embedding@h{h1}"


def head_key(h_last: int) -> str:
    return f"head@h{h_last}"


def point_key(batch: int, seq_len: int) -> str:
    return f"b{batch}s{seq_len}"


def parse_point_key(pk: str) -> tuple[int, int]:
    """(batch, seq_len) of a `point_key`."""
    b, s = pk[1:].split("s")
    return int(b), int(s)


def table_keys(space: SearchSpace) -> list[str]:
    """Every entry a complete table for `space` holds (61 for the standard space, with `overhead`)."""
    hs = space.hidden_sizes
    keys = [op_key(op, h) for h in hs for op in space.layer_ops]
    keys += [boundary_key(a, b) for a in hs for b in hs]
    keys += [embedding_key(h) for h in hs] + [head_key(h) for h in hs]
    return keys + [OVERHEAD_KEY]


@dataclass(frozen=True)
class Prediction:
    """Predicted latency of one architecture at one (batch, seq_len), in ms, with its breakdown.

    `total_ms == sum(blocks_ms) + fixed_ms` exactly, `fixed_ms = embedding + boundaries + head + offset`.
    """

    total_ms: float
    blocks_ms: list[float]
    embedding_ms: float
    boundaries_ms: float
    head_ms: float
    offset_ms: float
    fixed_ms: float
    batch: int
    seq_len: int


@dataclass
class LatencyTable:
    """Per-operation latencies for one device and one search space (see the module docstring)."""

    space: SearchSpace
    device: dict[str, Any]
    entries: dict[str, dict[str, dict[str, float]]]
    corrections: dict[str, dict[str, Any]] = field(default_factory=dict)  # point -> {"planes": [...], "split_mparams"}
    validation: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)
    # how entries were made from rounds: {"statistic", "normalised", "chosen_by", "candidates"} (schema 4)
    measurement: dict[str, Any] = field(default_factory=dict)
    # the reference model: {"key", "arch", "points": {point: {"median_ms", "timings", "spread_pct"}}} (schema 4)
    reference: dict[str, Any] = field(default_factory=dict)
    host_factor: float = 1.0  # predictions x this (`rescaled`: the host's state now over the table's); not saved

    # ------------------------------------------------------------------ shape of the table
    @property
    def points(self) -> list[tuple[int, int]]:
        # searches ask thousands of times: parse the keys again only when the entries changed shape (every point
        # has an overhead entry, so its count moves with the points; O(1) to check)
        fingerprint = (id(self.entries), len(self.entries), len(self.entries.get(OVERHEAD_KEY, ())))
        cached = self.__dict__.get("_points")
        if cached is None or cached[0] != fingerprint:
            out = {parse_point_key(pk) for per_point in self.entries.values() for pk in per_point}
            cached = (fingerprint, sorted(out))
            self.__dict__["_points"] = cached
        return list(cached[1])

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        return tuple(sorted({b for b, _ in self.points}))

    @property
    def seq_lens(self) -> tuple[int, ...]:
        return tuple(sorted({s for _, s in self.points}))

    def check_space(self, space: SearchSpace) -> None:
        """Raise `SpaceError` unless every operation of `space` has the shapes this table was profiled for."""
        mine = self.space
        diffs = [f"{f} {getattr(space, f)} vs {getattr(mine, f)}" for f in _SHAPE_FIELDS if getattr(space, f) != getattr(mine, f)]
        if not set(space.hidden_sizes) <= set(mine.hidden_sizes):
            diffs.append(f"hidden sizes {list(space.hidden_sizes)} not within {list(mine.hidden_sizes)}")
        if not set(space.conv_kernels) <= set(mine.conv_kernels):
            diffs.append(f"conv kernels {list(space.conv_kernels)} not within {list(mine.conv_kernels)}")
        if diffs:
            from nasbert_deploy.space import SPACES

            advice = (f"profile it with `nasbert-deploy profile --space {space.name}`" if space.name in SPACES else
                      "it is no named space (e.g. a converted teacher), so its latency is measured, not predicted")
            raise SpaceError(f"latency table was profiled for space {mine.name!r} (hash {mine.space_hash()}), which does not "
                             f"cover space {space.name!r}: {'; '.join(diffs)}; {advice}")

    # ------------------------------------------------------------------ lookups
    def _weights(self, batch: int, seq_len: int) -> list[tuple[str, float]]:
        """[(point key, weight)] interpolating linearly in seq_len between the two nearest profiled lengths."""
        if batch not in self.batch_sizes:
            raise TableError(f"batch {batch} was not profiled; profiled batch sizes: {list(self.batch_sizes)}")
        seqs = self.seq_lens
        if seq_len in seqs:
            return [(point_key(batch, seq_len), 1.0)]
        if not seqs or seq_len < seqs[0] or seq_len > seqs[-1]:
            raise TableError(f"seq_len {seq_len} is outside the profiled range {seqs[0]}..{seqs[-1]} (profiled: {list(seqs)})")
        hi = next(s for s in seqs if s > seq_len)
        lo = max(s for s in seqs if s < seq_len)
        w = (seq_len - lo) / (hi - lo)
        return [(point_key(batch, lo), 1.0 - w), (point_key(batch, hi), w)]

    def entry_ms(self, key: str, batch: int, seq_len: int) -> float:
        """Raw median latency (ms) of one entry, interpolated in seq_len."""
        per_point = self.entries.get(key)
        if per_point is None:
            raise TableError(f"latency table has no entry {key!r} (device {self.device.get('name')!r}); re-profile the device")
        total = 0.0
        for pk, w in self._weights(batch, seq_len):
            if pk not in per_point:
                raise TableError(f"latency table has no entry {key!r} at {pk}; re-profile the device")
            total += w * per_point[pk]["median_ms"]
        return total

    def part_ms(self, key: str, batch: int, seq_len: int) -> float:
        """Uncorrected cost of one part: its entry minus the per-call overhead (never below 0)."""
        return max(self.entry_ms(key, batch, seq_len) - self.entry_ms(OVERHEAD_KEY, batch, seq_len), 0.0)

    def planes(self, batch: int, seq_len: int) -> list[Plane]:
        """The correction's planes (scale, ms_per_mparam, offset_ms) at this point, interpolated in seq_len
        (every pair of the two points' planes); [(1, 0, 0)] where no whole-model validation was fitted. Every
        coefficient is multiplied by `host_factor` (1 unless `rescaled`), so rescaled predictions stay additive."""
        per_point = []
        for pk, w in self._weights(batch, seq_len):
            corr = self.corrections.get(pk)
            stored = corr["planes"] if corr else [{"scale": 1.0, "offset_ms": 0.0}]
            planes = [(p["scale"], p.get("ms_per_mparam", 0.0), p["offset_ms"]) for p in stored]
            f = w * self.host_factor
            per_point.append([(f * a, f * m, f * c) for a, m, c in planes])
        out: list[Plane] = []
        for combo in itertools.product(*per_point):
            out.append((sum(p[0] for p in combo), sum(p[1] for p in combo), sum(p[2] for p in combo)))
        return out

    def n_planes(self, batch: int, seq_len: int) -> int:
        """How many planes the latency at this point is the maximum of (the search adds one column each)."""
        return len(self.planes(batch, seq_len))

    # weights of each part, in millions of parameters (the per-weight term's regressor)
    def block_mparams(self, block: BlockArch) -> float:
        return sum(self.space.op_params(op, block.hidden) for op in block.ops if not op.is_identity) / 1e6

    def fixed_mparams(self, hiddens: tuple[int, ...]) -> tuple[float, float, float]:
        """(embedding LayerNorm + projection, boundaries, head) weights in millions of parameters."""
        sp, e = self.space, self.space.embed_dim
        emb = (2 * e + e * hiddens[0] + hiddens[0]) / 1e6
        bnd = sum(sp.boundary_params(a, b) for a, b in zip(hiddens, hiddens[1:])) / 1e6
        return emb, bnd, sp.head_params(hiddens[-1]) / 1e6

    def weight_mparams(self, arch: Arch) -> float:
        """Sum of the parts' weights (millions of parameters)."""
        return sum(self.block_mparams(b) for b in arch.blocks) + sum(self.fixed_mparams(arch.hiddens))

    def raw_block_ms(self, block: BlockArch, batch: int, seq_len: int) -> float:
        return sum(self.part_ms(op_key(op, block.hidden), batch, seq_len) for op in block.ops if not op.is_identity)

    def raw_fixed_parts(self, hiddens: tuple[int, ...], batch: int, seq_len: int) -> tuple[float, float, float]:
        """Uncorrected (embedding, boundaries, head) in ms."""
        emb = self.part_ms(embedding_key(hiddens[0]), batch, seq_len)
        bnd = sum(self.part_ms(boundary_key(a, b), batch, seq_len) for a, b in zip(hiddens, hiddens[1:]))
        return emb, bnd, self.part_ms(head_key(hiddens[-1]), batch, seq_len)

    def raw_sum_ms(self, arch: Arch, batch: int, seq_len: int) -> float:
        """Uncorrected sum of parts in ms (the first regressor of the correction)."""
        blocks = sum(self.raw_block_ms(b, batch, seq_len) for b in arch.blocks)
        return blocks + sum(self.raw_fixed_parts(arch.hiddens, batch, seq_len))

    # ------------------------------------------------------------------ the search's interface
    def block_ms(self, block: BlockArch, batch: int, seq_len: int, plane: int = 0) -> float:
        """Latency (ms) of one block's layers under one plane: scale * its parts + ms_per_mparam * their weights."""
        a, m, _ = self.planes(batch, seq_len)[plane]
        return a * self.raw_block_ms(block, batch, seq_len) + m * self.block_mparams(block)

    def _fixed(self, hiddens: tuple[int, ...], batch: int, seq_len: int, plane: int) -> tuple[float, float, float, float]:
        a, m, c = self.planes(batch, seq_len)[plane]
        hiddens = tuple(hiddens)
        raw = self.raw_fixed_parts(hiddens, batch, seq_len)
        emb, bnd, head = (a * r + m * w for r, w in zip(raw, self.fixed_mparams(hiddens)))
        return emb, bnd, head, c

    def fixed_ms(self, hiddens: tuple[int, ...], batch: int, seq_len: int, plane: int = 0) -> float:
        """Latency (ms) of embedding(h1) + boundaries + head under one plane, plus its offset."""
        emb, bnd, head, off = self._fixed(hiddens, batch, seq_len, plane)
        return emb + bnd + head + off

    def predict(self, arch: Arch, batch: int, seq_len: int) -> Prediction:
        """Predicted whole-model latency (the largest plane) with that plane's per-block breakdown;
        total == sum(blocks_ms) + fixed_ms."""
        best: Prediction | None = None
        for i in range(self.n_planes(batch, seq_len)):
            blocks = [self.block_ms(b, batch, seq_len, i) for b in arch.blocks]
            emb, bnd, head, off = self._fixed(arch.hiddens, batch, seq_len, i)
            fixed = emb + bnd + head + off
            p = Prediction(sum(blocks) + fixed, blocks, emb, bnd, head, off, fixed, batch, seq_len)
            if best is None or p.total_ms > best.total_ms:
                best = p
        assert best is not None
        return best

    def spread_near(self, arch: Arch, batch: int, seq_len: int, within: float = 0.2) -> tuple[int, float] | None:
        """How reproducible models of this size were when the table was made: (how many of its whole models,
        fitting and held-out, at the nearest profiled seq_len have weights within +-`within` of `arch`'s, the
        largest round-to-round spread among them in %); None if the table stores no spreads or none is near."""
        s = min((s for b, s in self.points if b == batch), key=lambda x: abs(x - seq_len), default=None)
        v = self.validation.get(point_key(batch, s)) if s is not None else None
        if not v:
            return None
        w = self.weight_mparams(arch)
        near = [sp for vv in (v, v.get("holdout") or {}) for a, sp in zip(vv.get("archs", []), vv.get("round_spread_pct", []))
                if abs(self.weight_mparams(self.space.parse(a)) / w - 1) <= within]
        return (len(near), max(near)) if near else None

    # ------------------------------------------------------------------ measurement, drift, noise
    @property
    def statistic(self) -> str:
        """How rounds were combined into entries (`timing.round_statistic`); 'min' for schema <= 3 tables."""
        return str(self.measurement.get("statistic", "min"))

    @property
    def normalised(self) -> bool:
        """Whether entries and whole models are drift-normalised to the reference model (schema 4)."""
        return bool(self.measurement.get("normalised", False))

    def reference_ms(self, batch: int, seq_len: int) -> float:
        """The reference model's typical median (ms) when the table was made, interpolated in seq_len."""
        pts = (self.reference or {}).get("points", {})
        if not pts:
            raise TableError("this table has no reference model (schema < 4 or profiled without one); profile again")
        total = 0.0
        for pk, w in self._weights(batch, seq_len):
            if pk not in pts:
                raise TableError(f"the table's reference model was not timed at {pk}")
            total += w * pts[pk]["median_ms"]
        return total

    def rescaled(self, factor: float) -> LatencyTable:
        """A copy whose predictions are `factor` times these (e.g. `host.host_factor`: the host's state now)."""
        from dataclasses import replace

        return replace(self, host_factor=self.host_factor * factor)

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        manifest = dict(self.manifest)
        manifest.update(schema_version=SCHEMA_VERSION, space_hash=self.space.space_hash(), space=self.space.to_dict(),
                        device=self.device)
        return {
            "schema_version": SCHEMA_VERSION,
            "manifest": manifest,
            "batch_sizes": list(self.batch_sizes),
            "seq_lens": list(self.seq_lens),
            "entries": self.entries,
            "corrections": self.corrections,
            "validation": self.validation,
            "measurement": self.measurement,
            "reference": self.reference,
        }

    def save(self, path: str | Path) -> Path:
        """Write the table atomically as versioned JSON."""
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "latency table") -> LatencyTable:
        if not isinstance(data, dict) or "manifest" not in data or "entries" not in data:
            raise TableError(f"{where} is not a latency table (needs 'manifest' and 'entries')")
        version = data.get("schema_version")
        if version not in READABLE_SCHEMAS:
            readable = ", ".join(map(str, READABLE_SCHEMAS))
            raise TableError(f"{where} has schema version {version!r}; this build reads versions {readable}; re-profile")
        m = data["manifest"]
        space = SearchSpace.from_dict(m.get("space", {}))
        if m.get("space_hash") != space.space_hash():
            found = m.get("space_hash")
            raise SpaceError(f"{where}: manifest space hash {found!r} does not match its space {space.space_hash()!r}")
        corrections = data.get("corrections", {})
        if version == 2:  # one plane per point
            corrections = {pk: {"planes": [c], "split_mparams": None} for pk, c in corrections.items()}
        return cls(space, dict(m.get("device", {})), data["entries"], corrections, data.get("validation", {}), m,
                   dict(data.get("measurement") or {}), dict(data.get("reference") or {}))

    @classmethod
    def load(cls, path: str | Path, space: SearchSpace | None = None) -> LatencyTable:
        """Read a table; with `space`, also check that the table covers that space's operations."""
        from nasbert_deploy.fileio import read_input_json
        from nasbert_deploy.profiling.table_schema import check_table_data

        p = Path(path)
        data = read_input_json(p, "latency table", TableError, hint="give a table made by `nasbert-deploy profile`")
        check_table_data(data, str(p))
        table = cls.from_dict(data, where=str(p))
        if space is not None:
            table.check_space(space)
        return table


def local_table_path(device_name: str) -> Path:
    """Where `profile` writes this machine's table by default: `./profiles/local/NAME.json`, apart from the
    reference tables shipped in `profiles/` (in a source checkout `./profiles` *is* the shipped folder)."""
    return Path("profiles") / "local" / f"{device_name}.json"


def find_table(device_name: str) -> Path:
    """This machine's table (`./profiles/local/NAME.json`), else `./profiles/NAME.json`, else the shipped
    reference table; TableError if none."""
    from nasbert_deploy.resources import shipped_dir

    for local in (local_table_path(device_name), Path("profiles") / f"{device_name}.json"):
        if local.is_file():
            return local
    shipped = shipped_dir("profiles") / f"{device_name}.json"
    if shipped.is_file():
        return shipped
    raise TableError(
        f"no latency table for device {device_name!r} (looked in ./profiles/local, ./profiles and {shipped.parent}); "
        f"make one with `nasbert-deploy profile --device {device_name}` or pass --table FILE"
    )
