"""Per-block candidate tables: what supernet training learned, what the search reads.

NAS-BERT (section 3.3) scores a whole network by the **sum of its block losses**: each block's
candidates are evaluated on held-out data against the teacher's block output, and the search then
combines one candidate per block. A `CandidateTable` holds, for each block index, the candidates
kept by training with their validation loss and parameter count (the block's layer operations
only: `sum(space.op_params(op, hidden))`, no maps, boundaries or embeddings).

JSON form (`save`/`load`, version 1)::

    {"schema": "nasbert-deploy/candidates", "version": 1,
     "space": {...}, "space_hash": "...", "metadata": {"teacher": ..., "corpus": ..., ...},
     "blocks": [[{"arch": "128:mha,ffn,id,id,id,id", "loss": 0.123, "params": 12345}, ...], ...]}

Pure Python (no torch, no numpy), so loading a table stays light.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nasbert_deploy.errors import ArchError, SpaceError, TableError
from nasbert_deploy.space import BlockArch, SearchSpace

SCHEMA = "nasbert-deploy/candidates"
VERSION = 1


def parse_block(space: SearchSpace, text: str, index: int = 1) -> BlockArch:
    """Parse and validate one block string, e.g. `'128:mha,ffn,sep3,id,id,id'` (`index` is 1-based, for messages)."""
    return space.parse_block(text, index)


def block_params(space: SearchSpace, block: BlockArch) -> int:
    """Parameters of one block's layer operations (what `Candidate.params` holds)."""
    return sum(space.op_params(op, block.hidden) for op in block.ops)


@dataclass(frozen=True)
class Candidate:
    """One block architecture with its validation loss (block-wise distillation MSE) and parameter count."""

    block: BlockArch
    loss: float
    params: int

    def to_dict(self) -> dict[str, Any]:
        return {"arch": str(self.block), "loss": self.loss, "params": self.params}


@dataclass
class CandidateTable:
    """Candidates per block index: `blocks[i]` lists block i's candidates (any order)."""

    space: SearchSpace
    blocks: list[list[Candidate]]
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_losses(
        cls, space: SearchSpace, losses: list[dict[BlockArch, float]], metadata: dict[str, Any] | None = None
    ) -> CandidateTable:
        """Build a table from one {block: loss} dict per block index; params are computed from the space."""
        blocks = [
            [Candidate(b, float(loss), block_params(space, b)) for b, loss in per_block.items()] for per_block in losses
        ]
        return cls(space, blocks, dict(metadata or {}))

    def validate(self, source: str = "candidate table") -> None:
        """Raise `TableError` if the table does not describe `space` (block count, archs, params, losses)."""
        sp = self.space
        if len(self.blocks) != sp.num_blocks:
            raise TableError(f"{source}: has {len(self.blocks)} block list(s); space {sp.name!r} has {sp.num_blocks}")
        for i, cands in enumerate(self.blocks, 1):
            if not cands:
                raise TableError(f"{source}: block {i} has no candidates; every block needs at least one")
            seen: set[BlockArch] = set()
            for c in cands:
                try:
                    sp.validate_block(c.block, i)
                except ArchError as exc:
                    raise TableError(f"{source}: {exc}") from None
                if c.block in seen:
                    raise TableError(f"{source}: block {i} lists {c.block} twice; each candidate once")
                seen.add(c.block)
                if not math.isfinite(c.loss) or c.loss < 0:
                    raise TableError(f"{source}: block {i} candidate {c.block} has loss {c.loss}; need a finite number >= 0")
                expected = block_params(sp, c.block)
                if c.params != expected:
                    raise TableError(
                        f"{source}: block {i} candidate {c.block} says {c.params} params; the space gives {expected}"
                    )

    # ---------------------------------------------------------------- (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "version": VERSION,
            "space": self.space.to_dict(),
            "space_hash": self.space.space_hash(),
            "metadata": self.metadata,
            "blocks": [[c.to_dict() for c in cands] for cands in self.blocks],
        }

    @classmethod
    def from_dict(cls, data: Any, space: SearchSpace | None = None, source: str = "candidate table") -> CandidateTable:
        """Rebuild a table; with `space`, also require the table to be for that space (by `space_hash`)."""
        if not isinstance(data, dict):
            raise TableError(f"{source}: expected a JSON object, got {type(data).__name__}")
        if data.get("schema") != SCHEMA:
            raise TableError(f"{source}: schema is {data.get('schema')!r}; expected {SCHEMA!r}")
        if data.get("version") != VERSION:
            raise TableError(f"{source}: version {data.get('version')!r} is not supported; this build reads version {VERSION}")
        try:
            table_space = SearchSpace.from_dict(data["space"])
        except (KeyError, SpaceError) as exc:
            raise TableError(f"{source}: no valid 'space' ({exc})") from None
        if data.get("space_hash") != table_space.space_hash():
            raise TableError(
                f"{source}: space_hash {data.get('space_hash')!r} does not match its space ({table_space.space_hash()})"
            )
        if space is not None and space.space_hash() != table_space.space_hash():
            raise TableError(
                f"{source}: made for space {table_space.name!r} (hash {table_space.space_hash()}); "
                f"expected {space.name!r} (hash {space.space_hash()})"
            )
        raw_blocks = data.get("blocks")
        if not isinstance(raw_blocks, list):
            raise TableError(f"{source}: 'blocks' must be a list of lists of {{arch, loss, params}}")
        blocks: list[list[Candidate]] = []
        for i, raw in enumerate(raw_blocks, 1):
            if not isinstance(raw, list):
                raise TableError(f"{source}: block {i} must be a list of {{arch, loss, params}}")
            cands = []
            for entry in raw:
                try:
                    block = parse_block(table_space, entry["arch"], i)
                    loss, params = entry["loss"], entry["params"]
                except ArchError as exc:
                    raise TableError(f"{source}: {exc}") from None
                except (KeyError, TypeError, AttributeError):
                    raise TableError(f"{source}: block {i} entry {entry!r} needs 'arch' (str), 'loss' and 'params'") from None
                if isinstance(loss, bool) or not isinstance(loss, int | float) or abs(loss) > 1e300:
                    raise TableError(f"{source}: block {i} candidate {block} loss {loss!r} is not a number")
                if isinstance(params, bool) or not isinstance(params, int):
                    raise TableError(f"{source}: block {i} candidate {block} params {params!r} is not an integer")
                cands.append(Candidate(block, float(loss), params))
            blocks.append(cands)
        metadata = data.get("metadata", {})
        if not isinstance(metadata, dict):
            raise TableError(f"{source}: 'metadata' must be an object")
        table = cls.__new__(cls)
        table.space, table.blocks, table.metadata = table_space, blocks, dict(metadata)
        table.validate(source)
        return table

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the table as JSON, atomically."""
        from nasbert_deploy.fileio import write_json_atomic

        return write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str], space: SearchSpace | None = None) -> CandidateTable:
        """Read a table written by `save`; `TableError` if missing, malformed or (with `space`) for another space."""
        from nasbert_deploy.fileio import read_input_json

        p = Path(path)
        data = read_input_json(p, "candidate table", TableError, hint="make one with `nasbert-deploy supernet train`")
        return cls.from_dict(data, space, source=f"candidate table {p}")

    # ---------------------------------------------------------------- helpers
    def size(self) -> int:
        """Number of whole architectures the table spans (product of per-block counts)."""
        n = 1
        for cands in self.blocks:
            n *= len(cands)
        return n
