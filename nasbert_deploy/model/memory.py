"""Memory estimate of a standalone model: weight bytes + peak activation bytes, in MiB.

    memory_mb(arch) = (weight_bytes(arch, precision) + peak_activation_bytes(arch, batch, seq_len)) / 2**20

**Weights** are additive over the parts of the model (embeddings, each layer, boundaries, head):

- `fp32`: 4 bytes per parameter; `fp16`: 2 bytes per parameter.
- `int8`: what dynamic/static INT8 quantization of the matrix multiplications keeps: 1 byte per
  element of every `Linear` weight matrix (MHA q/k/v/out, FFN fc1/fc2, SepConv pointwise,
  embedding projection, boundaries, head) and 4 bytes for everything else (biases, LayerNorms,
  depthwise conv kernels, the embedding tables, which are gathers, not matmuls). Per-tensor scales
  and zero points (a few bytes per matrix) are ignored. (KDLSQ 8-bit, `quantize --bits 8`, also stores the word
  table in int8: this is an upper bound for it.)
- `int4`: KDLSQ 4-bit weights (`quantize --bits 4`, the only int4 path): half a byte per element of every Linear
  weight matrix and of the word-embedding table, 4 bytes per output channel (its scale) or table row, 4 bytes
  for everything else.

**Activations** are a *maximum*, not a sum: inference frees a layer's temporaries before the next
layer runs, so the peak is the largest set of tensors alive at one time in any single part
(activations are fp32, 4 bytes, for `fp32` and `int8`; 2 bytes for `fp16`):

- MHA (hidden h, H heads): input x, q, k, v (4·b·t·h) plus scores and softmax probabilities
  (2·b·H·t·t).
- FFN (inner r·h): input x plus the fc1 output and its GELU (b·t·h + 2·b·t·r·h).
- SepConv: input x plus two (b, t, h) temporaries (masked/depthwise/pointwise in turn): 3·b·t·h.
- Identity: its input, b·t·h.
- Embeddings: ids and mask (int64, 2·b·t·8) plus word, position+type sum and LayerNorm output
  (3·b·t·E) then the projection to h1 alongside its input (b·t·E + b·t·h1); the larger counts.
- Boundary h_i -> h_{i+1}: b·t·(h_i + h_{i+1}); head: b·t·(h_N + output_dim).

It is an estimate of the tensors the graph needs, not of an allocator's arena or the runtime's own
footprint; `export` compares it with measured RSS growth.
"""

from __future__ import annotations

from dataclasses import dataclass

from nasbert_deploy.errors import ArchError
from nasbert_deploy.space import Arch, BlockArch, Op, SearchSpace

PRECISIONS = ("fp32", "fp16", "int8", "int4")
LOW_BIT = ("int8", "int4")
MIB = 2**20


def _check(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ArchError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")


def _act_bytes(precision: str) -> int:
    return 2 if precision == "fp16" else 4


def _linear_bytes(d_in: int, d_out: int, precision: str) -> int:
    """One Linear(d_in, d_out): weight matrix + bias."""
    if precision == "int8":
        return d_in * d_out + 4 * d_out
    if precision == "int4":
        return (d_in * d_out + 1) // 2 + 8 * d_out  # packed weights + per-channel scale + bias
    return (d_in * d_out + d_out) * (2 if precision == "fp16" else 4)


def op_weight_bytes(space: SearchSpace, op: Op, hidden: int, precision: str = "fp32") -> int:
    """Weight bytes of one layer operation at `hidden` (see the module docstring for int8)."""
    _check(precision)
    if precision not in LOW_BIT:
        return space.op_params(op, hidden) * (2 if precision == "fp16" else 4)
    h = hidden
    ln = 4 * 2 * h
    if op.kind == "mha":
        return 4 * _linear_bytes(h, h, precision) + ln
    if op.kind == "ffn":
        inner = space.ffn_ratio * h
        return _linear_bytes(h, inner, precision) + _linear_bytes(inner, h, precision) + ln
    if op.kind == "sep":
        return 4 * (h * op.kernel + h) + _linear_bytes(h, h, precision) + ln
    return 0


def op_activation_bytes(space: SearchSpace, op: Op, hidden: int, batch: int, seq_len: int, precision: str = "fp32") -> int:
    """Peak bytes alive inside one layer operation for a (batch, seq_len) input (module docstring)."""
    _check(precision)
    b, t, h = batch, seq_len, hidden
    if op.kind == "mha":
        n = 4 * b * t * h + 2 * b * space.heads(h) * t * t
    elif op.kind == "ffn":
        n = b * t * h + 2 * b * t * space.ffn_ratio * h
    elif op.kind == "sep":
        n = 3 * b * t * h
    else:
        n = b * t * h
    return n * _act_bytes(precision)


def block_weight_bytes(space: SearchSpace, block: BlockArch, precision: str = "fp32") -> int:
    return sum(op_weight_bytes(space, op, block.hidden, precision) for op in block.ops)


def block_activation_bytes(space: SearchSpace, block: BlockArch, batch: int, seq_len: int, precision: str = "fp32") -> int:
    """Peak activation bytes of one block: the maximum over its layers."""
    return max(op_activation_bytes(space, op, block.hidden, batch, seq_len, precision) for op in block.ops)


def fixed_weight_bytes(space: SearchSpace, hiddens: tuple[int, ...], precision: str = "fp32") -> int:
    """Weight bytes outside the blocks: embeddings (+ projection to h1), boundaries, head."""
    _check(precision)
    e = space.embed_dim
    tables = (space.vocab_size + space.max_positions + space.type_vocab_size) * e + 2 * e
    if precision == "fp16":
        n = 2 * tables
    elif precision == "int4":  # the word table at 4 bits with a scale per row; the rest float
        n = (space.vocab_size * e + 1) // 2 + 4 * space.vocab_size + 4 * (tables - space.vocab_size * e)
    else:
        n = 4 * tables
    n += _linear_bytes(e, hiddens[0], precision)
    n += sum(_linear_bytes(a, c, precision) for a, c in zip(hiddens, hiddens[1:]))
    n += _linear_bytes(hiddens[-1], space.output_dim, precision)
    return n


def fixed_activation_bytes(
    space: SearchSpace, hiddens: tuple[int, ...], batch: int, seq_len: int, precision: str = "fp32"
) -> int:
    """Peak activation bytes outside the blocks: max of embeddings, boundaries and head."""
    _check(precision)
    bt, a = batch * seq_len, _act_bytes(precision)
    e = space.embed_dim
    embed = 2 * bt * 8 + max(3 * bt * e, bt * (e + hiddens[0])) * a
    parts = [embed, bt * (hiddens[-1] + space.output_dim) * a]
    parts += [bt * (x + y) * a for x, y in zip(hiddens, hiddens[1:])]
    return max(parts)


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated memory of one model at (batch, seq_len); sizes in MiB (2**20 bytes)."""

    weights_mb: float
    activations_mb: float

    @property
    def total_mb(self) -> float:
        return self.weights_mb + self.activations_mb


def weight_bytes(space: SearchSpace, arch: Arch, precision: str = "fp32") -> int:
    return fixed_weight_bytes(space, arch.hiddens, precision) + sum(block_weight_bytes(space, b, precision) for b in arch.blocks)


def peak_activation_bytes(space: SearchSpace, arch: Arch, batch: int, seq_len: int, precision: str = "fp32") -> int:
    fixed = fixed_activation_bytes(space, arch.hiddens, batch, seq_len, precision)
    return max(fixed, *(block_activation_bytes(space, b, batch, seq_len, precision) for b in arch.blocks))


def estimate_memory(
    space: SearchSpace, arch: Arch, batch: int = 1, seq_len: int = 128, precision: str = "fp32"
) -> MemoryEstimate:
    """Weights + peak activations of `arch` at (batch, seq_len) and `precision`, in MiB."""
    return MemoryEstimate(
        weight_bytes(space, arch, precision) / MIB,
        peak_activation_bytes(space, arch, batch, seq_len, precision) / MIB,
    )
