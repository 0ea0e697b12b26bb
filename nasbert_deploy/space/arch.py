"""Operations, blocks and architectures of a NAS-BERT space, and their string form (see `nasbert_deploy.space`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nasbert_deploy.errors import ArchError

OP_KINDS = ("mha", "ffn", "sep", "id")


@dataclass(frozen=True, order=True)
class Op:
    """One layer's operation. `kernel` is set for separable convolutions only."""

    kind: str
    kernel: int = 0

    def __post_init__(self) -> None:
        if self.kind not in OP_KINDS:
            raise ArchError(f"unknown operation kind {self.kind!r}; valid: {', '.join(OP_KINDS)}")
        if (self.kind == "sep") != (self.kernel > 0):
            raise ArchError(f"operation {self.kind!r} with kernel {self.kernel} is malformed")

    @property
    def name(self) -> str:
        return f"sep{self.kernel}" if self.kind == "sep" else self.kind

    @property
    def is_identity(self) -> bool:
        return self.kind == "id"

    @classmethod
    def parse(cls, text: str) -> Op:
        t = text.strip().lower()
        if t.startswith("sep") and t[3:].isdigit():
            return cls("sep", int(t[3:]))
        if t in ("mha", "ffn", "id"):
            return cls(t)
        raise ArchError(f"{text!r} is not an operation")

    def __str__(self) -> str:
        return self.name


IDENTITY = Op("id")


@dataclass(frozen=True)
class BlockArch:
    """One block: its hidden size and one operation per layer."""

    hidden: int
    ops: tuple[Op, ...]

    @property
    def depth(self) -> int:
        """Number of non-identity layers."""
        return sum(not op.is_identity for op in self.ops)

    def __str__(self) -> str:
        return f"{self.hidden}:" + ",".join(op.name for op in self.ops)


@dataclass(frozen=True)
class Arch:
    """A full architecture: one `BlockArch` per block."""

    blocks: tuple[BlockArch, ...]

    def __str__(self) -> str:
        return "|".join(str(b) for b in self.blocks)

    @property
    def hiddens(self) -> tuple[int, ...]:
        return tuple(b.hidden for b in self.blocks)

    def to_dict(self) -> dict[str, Any]:
        return {"blocks": [{"hidden": b.hidden, "ops": [o.name for o in b.ops]} for b in self.blocks]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Arch:
        try:
            blocks = tuple(BlockArch(int(b["hidden"]), tuple(Op.parse(o) for o in b["ops"])) for b in data["blocks"])
        except (KeyError, TypeError) as exc:
            raise ArchError(f"arch dict must be {{'blocks': [{{'hidden': int, 'ops': [str]}}]}}: {exc}") from exc
        return cls(blocks)
