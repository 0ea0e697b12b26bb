"""The 8-bit weight grid: full range [-127, 127], or reduced to [-63, 63] for x86 CPUs without VNNI.

ONNX Runtime's u8 x s8 integer kernels (MLAS `MatMulIntegerToFloat`, `QGemm`) on x86 CPUs without VNNI
(SSE4.1, AVX2, AVX-512 without VNNI) multiply with `vpmaddubsw`, which adds two u8 x s8 products into a
*saturating* int16: exact only while 2 * 255 * |w| <= 32767, i.e. |w| <= 64. With VNNI (`vpdpbusd`, int32
accumulation) or AMX there is no such limit. ORT's own quantizer offers `reduce_range` (7-bit weights, [-64, 64])
for this, and its `session.x64quantprecision` option (microsoft/onnxruntime#12088) treats weights outside
[-64, 63] as at risk. KDLSQ's reduced grid is [-63, 63]: inside both bounds, and symmetric like the full
narrow range [-127, 127] (Qn = Qp, so LSQ's initialisation and gradient scale use Qp = 63).

Light on purpose (no torch): the command line resolves `--reduce-range auto` and `--signed-activations auto` with it
before any work, and `--attention-bits` (`export_bits`: which runtime's file gets 8-bit attention).
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

from nasbert_deploy.errors import ExportError

REDUCED_QP = 63  # the reduced 8-bit weight grid [-63, 63]
REDUCE_RANGE_MODES: tuple[str, ...] = ("auto", "on", "off")
SIGNED_ACTIVATIONS: tuple[str, ...] = ("auto", "on", "off")  # which activation grids are centred (`lsq.centred`)
DEFAULT_SIGNED_ACTIVATIONS = "auto"
RESIDUAL_MODES: tuple[str, ...] = ("auto", "off")  # `quantize --residual-projections` (`lowbit.residual`)
DEFAULT_RESIDUAL = "auto"
ATTENTION_MODES: tuple[str, ...] = ("auto", "8", "float")  # `quantize --attention-bits` (`lowbit.attention`)
DEFAULT_ATTENTION_MODE = "auto"  # the command's default; the kdlsq latency tables are profiled with it
# OpenVINO runs centred (s8) inputs faster than u8 ones only with AMX: docs/quantization.md, 2026-12-06 / 2026-12-07
CENTRED_FLAGS: tuple[str, ...] = ("amx_int8",)
# /proc/cpuinfo flags of int8 dot products that accumulate in int32 (no int16 saturation)
INT32_DOT_FLAGS: tuple[str, ...] = ("avx512_vnni", "avx_vnni", "amx_int8")
X86_MACHINES = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})
HOST = "host"  # `flags` default: read this machine's (None means the flags could not be read)


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str] | None:
    """The CPU feature flags of this machine (Linux `/proc/cpuinfo`, read once), or None where unreadable."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return None


def saturates_int16(flags: frozenset[str] | None | str = HOST, machine: str | None = None) -> bool:
    """Whether ORT's u8 x s8 kernels accumulate pairs in a saturating int16 here: an x86 CPU without VNNI/AMX
    (`flags` `HOST` and `machine` None: this machine's; an x86 CPU whose flags are None, unreadable, counts as
    saturating)."""
    machine = (platform.machine() if machine is None else machine).lower()
    if machine not in X86_MACHINES:
        return False
    flags = cpu_flags() if flags == HOST else flags
    return not isinstance(flags, frozenset) or not any(f in flags for f in INT32_DOT_FLAGS)


def resolve_reduce_range(mode: str, bits: int, flags: frozenset[str] | None | str = HOST,
                         machine: str | None = None) -> tuple[bool, str]:
    """`--reduce-range auto|on|off` for `bits`-bit weights -> (reduce, why); `ExportError` for `on` with fewer
    than 8 bits (4-bit weights [-8, 7] cannot saturate) or an unknown mode."""
    if mode not in REDUCE_RANGE_MODES:
        raise ExportError(f"--reduce-range {mode!r}: valid: {', '.join(REDUCE_RANGE_MODES)}")
    if bits != 8:
        if mode == "on":
            raise ExportError(f"--reduce-range on applies to 8-bit weights only (--bits {bits} cannot saturate int16)")
        return False, f"off ({bits}-bit weights)"
    if mode != "auto":
        return mode == "on", mode
    if saturates_int16(flags, machine):
        return True, "on (auto: this CPU has no VNNI/AMX, ORT's u8 x s8 kernels saturate int16 beyond |w| 64)"
    return False, "off (auto: this CPU accumulates int8 products in int32)"


def resolve_signed_activations(mode: str, flags: frozenset[str] | None | str = HOST) -> tuple[str, str]:
    """`--signed-activations auto|on|off` on this CPU -> (the `lsq.centred` mode to train with, why). `auto` centres
    the two-sided inputs where the CPU has AMX-INT8 (OpenVINO's s8 path there ran the student 0.88x NNCF) and keeps
    asymmetric grids elsewhere (without AMX the s8 path measured 5-7% slower than u8 on an AVX-512 VNNI Xeon);
    `ExportError` for an unknown mode."""
    if mode not in SIGNED_ACTIVATIONS:
        raise ExportError(f"--signed-activations {mode!r}: valid: {', '.join(SIGNED_ACTIVATIONS)}")
    if mode != "auto":
        return mode, mode
    flags = cpu_flags() if flags == HOST else flags
    if isinstance(flags, frozenset) and any(f in flags for f in CENTRED_FLAGS):
        return "auto", "two-sided inputs centred (auto: this CPU has AMX-INT8, OpenVINO runs s8 inputs faster)"
    return "off", "asymmetric (auto: no AMX-INT8 here, OpenVINO runs u8 inputs faster than s8)"


def trained_bits(mode: str) -> int:
    """The bits attention is trained at under `--attention-bits mode` (0: float)."""
    if mode not in ATTENTION_MODES:
        raise ValueError(f"attention bits {mode!r}: valid: {', '.join(ATTENTION_MODES)}")
    return 0 if mode == "float" else 8


def export_bits(mode: str, runtime: str, weight_bits: int = 8) -> int:
    """The bits of attention in `runtime`'s export ("onnxruntime" | "openvino") under `--attention-bits mode`.

    "auto" quantizes in each runtime what its own INT8 path quantizes: OpenVINO gets Q·Kᵀ in 8 bits, as NNCF's IR
    has it (OpenVINO then runs the fused attention in int8), ONNX Runtime's file keeps attention float, as its dynamic
    INT8 does. On the 256-wide NAS student (Intel Xeon without AMX, 2026-12-07) 8-bit attention took OpenVINO from
    1.056x to 0.991x NNCF's latency and ONNX Runtime from 1.022x to 1.063x dynamic INT8's; the float attention of the
    ONNX file computes the trained model without attention's rounding (same accuracy and loyalty there). Below 8-bit
    weights "auto" keeps attention float everywhere (not measured with it)."""
    bits = trained_bits(mode)
    if mode == "auto" and (runtime != "openvino" or weight_bits != 8):
        return 0
    return bits
