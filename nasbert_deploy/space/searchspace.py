"""`SearchSpace`: sizes, enumeration and sampling of a NAS-BERT space; the named spaces and `get_space`."""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from nasbert_deploy.errors import ArchError, SpaceError
from nasbert_deploy.space.arch import IDENTITY, Arch, BlockArch, Op


@dataclass(frozen=True)
class SearchSpace:
    """A NAS-BERT-style space. The same class describes the standard space and tiny test spaces.

    `output_dim` is the teacher's hidden size (the standalone model's head maps to it);
    `embed_dim` is the factorized token-embedding width.
    """

    name: str = "standard"
    num_blocks: int = 4
    layers_per_block: int = 6
    hidden_sizes: tuple[int, ...] = (128, 192, 256, 384, 512)
    conv_kernels: tuple[int, ...] = (3, 5, 7)
    head_dim: int = 64
    ffn_ratio: int = 4
    embed_dim: int = 128
    output_dim: int = 384
    vocab_size: int = 30522
    max_positions: int = 512
    type_vocab_size: int = 2
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.num_blocks < 1 or self.layers_per_block < 1:
            raise SpaceError("a space needs at least one block and one layer per block")
        for h in self.hidden_sizes:
            if h % self.head_dim:
                raise SpaceError(f"hidden size {h} is not a multiple of head_dim {self.head_dim}")
        if any(k % 2 == 0 for k in self.conv_kernels):
            raise SpaceError(f"conv kernels must be odd, got {self.conv_kernels}")

    # ---------------------------------------------------------------- operations
    @property
    def layer_ops(self) -> tuple[Op, ...]:
        """The non-identity candidates of one layer (identity is always allowed at a block's end)."""
        return (Op("mha"), Op("ffn"), *(Op("sep", k) for k in self.conv_kernels))

    @property
    def all_ops(self) -> tuple[Op, ...]:
        return (*self.layer_ops, IDENTITY)

    def heads(self, hidden: int) -> int:
        return hidden // self.head_dim

    # ---------------------------------------------------------------- enumeration
    def block_count(self) -> int:
        """Distinct architectures of one block: sum over depth d>=1 of |ops|^d, times |hiddens|."""
        n = len(self.layer_ops)
        return len(self.hidden_sizes) * sum(n**d for d in range(1, self.layers_per_block + 1))

    def size(self) -> int:
        """Number of architectures in the whole space."""
        return self.block_count() ** self.num_blocks

    def enumerate_block(self, hidden: int) -> Iterator[BlockArch]:
        """All block architectures at one hidden size (identities only at the end)."""
        L = self.layers_per_block
        for depth in range(1, L + 1):
            for ops in itertools.product(self.layer_ops, repeat=depth):
                yield BlockArch(hidden, tuple(ops) + (IDENTITY,) * (L - depth))

    def enumerate_blocks(self) -> Iterator[BlockArch]:
        for h in self.hidden_sizes:
            yield from self.enumerate_block(h)

    def enumerate(self) -> Iterator[Arch]:
        """All architectures. Only sensible for tiny spaces."""
        per_block = list(self.enumerate_blocks())
        for combo in itertools.product(per_block, repeat=self.num_blocks):
            yield Arch(tuple(combo))

    def random_block(self, rng: random.Random, hidden: int | None = None, depth: int | None = None) -> BlockArch:
        h = rng.choice(self.hidden_sizes) if hidden is None else hidden
        d = rng.randint(1, self.layers_per_block) if depth is None else depth
        ops = tuple(rng.choice(self.layer_ops) for _ in range(d))
        return BlockArch(h, ops + (IDENTITY,) * (self.layers_per_block - d))

    def random_arch(self, rng: random.Random) -> Arch:
        return Arch(tuple(self.random_block(rng) for _ in range(self.num_blocks)))

    def largest_arch(self, op: str = "mha,ffn") -> Arch:
        """Widest, deepest arch alternating the given ops (default: BERT-like mha/ffn pairs)."""
        cycle = [Op.parse(o) for o in op.split(",")]
        ops = tuple(cycle[i % len(cycle)] for i in range(self.layers_per_block))
        return Arch(tuple(BlockArch(max(self.hidden_sizes), ops) for _ in range(self.num_blocks)))

    # ---------------------------------------------------------------- parse / validate
    def parse(self, text: str) -> Arch:
        """Parse and validate an arch string; raise `ArchError` saying what is wrong."""
        parts = [p for p in text.strip().split("|")]
        for i, part in enumerate(parts[: self.num_blocks], 1):  # 'foo', '999:mha', '128:bogus': said before the count
            self._read_block(part, i)
        if len(parts) != self.num_blocks:
            raise ArchError(
                f"arch has {len(parts)} block(s); space {self.name!r} has {self.num_blocks} "
                f"(format: HIDDEN:op,op,...|HIDDEN:op,...)"
            )
        arch = Arch(tuple(self.parse_block(part, i) for i, part in enumerate(parts, 1)))
        self.validate(arch)
        return arch

    def parse_block(self, text: str, index: int = 1) -> BlockArch:
        """Parse and validate one block string, e.g. '128:mha,ffn,id' (`index` is 1-based, for messages)."""
        block = self._read_block(text, index)
        self.validate_block(block, index)
        return block

    def _read_block(self, text: str, index: int) -> BlockArch:
        """One block string read: 'HIDDEN:' present, a hidden size of this space, known operations (not yet the
        layer count or where identities stand)."""
        if ":" not in text:
            raise ArchError(f"block {index}: {text.strip()!r} lacks 'HIDDEN:' (e.g. '256:mha,ffn,...')")
        h_text, ops_text = text.split(":", 1)
        try:
            hidden = int(h_text)
        except ValueError:
            raise ArchError(f"block {index}: hidden size {h_text.strip()!r} is not an integer") from None
        ops = []
        for o in ops_text.split(","):
            try:
                ops.append(Op.parse(o))
            except ArchError:
                valid = ", ".join(op.name for op in self.all_ops)
                raise ArchError(f"block {index}: {o.strip()!r} is not an operation; valid: {valid}") from None
        if hidden not in self.hidden_sizes:
            raise ArchError(f"block {index}: hidden {hidden} not in {list(self.hidden_sizes)}")
        return BlockArch(hidden, tuple(ops))

    def validate(self, arch: Arch) -> Arch:
        if len(arch.blocks) != self.num_blocks:
            raise ArchError(f"arch has {len(arch.blocks)} blocks; space {self.name!r} has {self.num_blocks}")
        for i, b in enumerate(arch.blocks, 1):
            self.validate_block(b, i)
        return arch

    def validate_block(self, b: BlockArch, i: int = 1) -> None:
        if b.hidden not in self.hidden_sizes:
            raise ArchError(f"block {i}: hidden {b.hidden} not in {list(self.hidden_sizes)}")
        if len(b.ops) != self.layers_per_block:
            raise ArchError(f"block {i} has {len(b.ops)} layers; space {self.name!r} has {self.layers_per_block}")
        allowed = set(self.all_ops)
        for op in b.ops:
            if op not in allowed:
                valid = ", ".join(o.name for o in self.all_ops)
                raise ArchError(f"block {i}: {op.name!r} is not in this space; valid: {valid}")
        seen_id = False
        for j, op in enumerate(b.ops, 1):
            if op.is_identity:
                seen_id = True
            elif seen_id:
                raise ArchError(f"block {i}: layer {j} ({op.name}) follows an identity; identities only at a block's end")
        if b.depth == 0:
            raise ArchError(f"block {i} is all identity; a block needs at least one operation")

    # ---------------------------------------------------------------- sizes
    def op_params(self, op: Op, hidden: int) -> int:
        """Parameters of one layer operation (weights, biases and its LayerNorm)."""
        h = hidden
        ln = 2 * h
        if op.kind == "mha":
            return 4 * (h * h + h) + ln
        if op.kind == "ffn":
            inner = self.ffn_ratio * h
            return h * inner + inner + inner * h + h + ln
        if op.kind == "sep":
            return h * op.kernel + h + h * h + h + ln
        return 0

    def embedding_params(self, first_hidden: int) -> int:
        """Token/position/type embeddings, their LayerNorm, and the map to the first block."""
        e = self.embed_dim
        tables = (self.vocab_size + self.max_positions + self.type_vocab_size) * e
        return tables + 2 * e + e * first_hidden + first_hidden

    def boundary_params(self, h_in: int, h_out: int) -> int:
        return h_in * h_out + h_out

    def head_params(self, last_hidden: int) -> int:
        return last_hidden * self.output_dim + self.output_dim

    def params(self, arch: Arch, embeddings: bool = True) -> int:
        """Total parameters of the standalone model (equal to `NasBertModel`'s count)."""
        hs = arch.hiddens
        n = sum(self.op_params(op, b.hidden) for b in arch.blocks for op in b.ops)
        n += sum(self.boundary_params(a, b) for a, b in zip(hs, hs[1:]))
        n += self.head_params(hs[-1])
        if embeddings:
            n += self.embedding_params(hs[0])
        else:
            n += self.embed_dim * hs[0] + hs[0]
        return n

    def op_flops(self, op: Op, hidden: int, seq_len: int) -> int:
        """Forward FLOPs (2 x multiply-adds) of one layer for one sequence of `seq_len` tokens."""
        h, t = hidden, seq_len
        if op.kind == "mha":
            macs = t * 4 * h * h + 2 * t * t * h
        elif op.kind == "ffn":
            macs = t * 2 * self.ffn_ratio * h * h
        elif op.kind == "sep":
            macs = t * (h * op.kernel + h * h)
        else:
            macs = 0
        return 2 * macs

    def flops(self, arch: Arch, seq_len: int = 128) -> int:
        hs = arch.hiddens
        f = sum(self.op_flops(op, b.hidden, seq_len) for b in arch.blocks for op in b.ops)
        f += 2 * seq_len * (self.embed_dim * hs[0] + sum(a * b for a, b in zip(hs, hs[1:])) + hs[-1] * self.output_dim)
        return f

    # ---------------------------------------------------------------- identity
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden_sizes"] = list(self.hidden_sizes)
        d["conv_kernels"] = list(self.conv_kernels)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchSpace:
        """A space from `to_dict`'s output; `SpaceError` for a missing, unknown or ill-typed field."""
        if not isinstance(data, dict):
            raise SpaceError(f"malformed search-space description: expected an object, got {type(data).__name__}")
        d = dict(data)
        try:
            d["hidden_sizes"] = tuple(d["hidden_sizes"])
            d["conv_kernels"] = tuple(d["conv_kernels"])
        except (KeyError, TypeError) as exc:
            raise SpaceError(f"malformed search-space description: missing or ill-typed {exc}") from None
        int_fields = {f.name for f in fields(cls) if f.type in ("int", "tuple[int, ...]")}
        for key, value in d.items():
            ints = value if key in ("hidden_sizes", "conv_kernels") else (value,)
            if key in int_fields and not all(type(v) is int and 1 <= v <= 10**7 for v in ints):
                raise SpaceError(f"malformed search-space description: {key} must be integers in 1..10^7, got {value!r}")
        if not d["hidden_sizes"] or not isinstance(d.get("name", ""), str) or not isinstance(d.get("extra", {}), dict):
            raise SpaceError("malformed search-space description: needs hidden sizes, a string name and an object 'extra'")
        try:
            return cls(**d)
        except TypeError as exc:
            raise SpaceError(f"malformed search-space description: {exc}") from None

    def space_hash(self) -> str:
        """Stable hash of everything that changes op shapes (not the name or `extra`)."""
        d = self.to_dict()
        d.pop("name")
        d.pop("extra")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


STANDARD = SearchSpace()

TINY = SearchSpace(
    name="tiny",
    num_blocks=2,
    layers_per_block=2,
    hidden_sizes=(32, 64),
    conv_kernels=(3, 5),
    head_dim=16,
    embed_dim=16,
    output_dim=48,
    vocab_size=1000,
    max_positions=64,
)

# Fits the offline MiniLM-L6 teacher (6 layers x 384 -> 3 blocks of 2 teacher layers) and keeps the
# shipped default supernet's fp16 checkpoint under 50 MB (21.6M parameters, 43 MB).
MINILM = SearchSpace(
    name="minilm",
    num_blocks=3,
    layers_per_block=3,
    hidden_sizes=(128, 192, 256),
    conv_kernels=(3, 5, 7),
    head_dim=64,
    embed_dim=128,
    output_dim=384,
    vocab_size=30522,
    max_positions=512,
)

# The MiniLM-L6 teacher's own geometry (heads of 32, FFN 4x, 384-wide embeddings) up to its full width and
# depth (4 layers per block = the 2 teacher layers a block distils), so Extract-Then-Distill copies its
# weights unchanged (`model.etd`) and the space spans the teacher itself down to ~20x faster students.
MINILM_WIDE = SearchSpace(
    name="minilm-wide",
    num_blocks=3,
    layers_per_block=4,
    hidden_sizes=(128, 192, 256, 320, 384),
    conv_kernels=(3, 5, 7),
    head_dim=32,
    embed_dim=384,
    output_dim=384,
    vocab_size=30522,
    max_positions=512,
)

# The same geometry cut into 4 blocks (MiniLM-L6's 6 layers as 2, 2, 1, 1: `teacher.split_layers`): deeper students and
# one more supervised boundary, so a distillation layer map (`layermap`) has 4 entries (7^3 x 6 maps) and the
# paper's heuristics (uniform 2,4,5,6; last 3,4,5,6; first 1,2,3,4) are three different maps.
MINILM_WIDE4 = replace(MINILM_WIDE, name="minilm-wide4", num_blocks=4)

SPACES: dict[str, SearchSpace] = {"standard": STANDARD, "tiny": TINY, "minilm": MINILM, "minilm-wide": MINILM_WIDE,
                                  "minilm-wide4": MINILM_WIDE4}


def get_space(name: str) -> SearchSpace:
    if name not in SPACES:
        raise SpaceError(f"unknown search space {name!r}; valid: {', '.join(SPACES)}")
    return SPACES[name]


def format_params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"


def parse_count(text: str) -> int:
    """Parse '10M', '500K', '1.5e6', '2G' into an integer count."""
    t = text.strip().upper()
    mult = {"K": 10**3, "M": 10**6, "G": 10**9, "B": 10**9}.get(t[-1:], 1)
    num = t[:-1] if mult != 1 else t
    try:
        count = int(float(num) * mult)
    except (ValueError, OverflowError):  # 'abc', 'nan'; 'inf', '1e999'
        raise ArchError(f"{text!r} is not a count; use e.g. 10M, 500K or 2500000") from None
    if count <= 0:
        raise ArchError(f"{text!r} is not a positive count; use e.g. 10M, 500K or 2500000")
    return count
