"""Learned step size quantization (LSQ, Esser et al. 2020) as fake quantization of every `nn.Linear`.

A quantizer maps x to  x_hat = s * (clamp(round(x / s), lo - z, hi - z))  (equivalently
(q - z) * s with q = clamp(round(x / s) + z, lo, hi), what ONNX `QuantizeLinear`/`DequantizeLinear` compute):

- weights: symmetric, signed, one step size per output channel, z = 0, levels [-Qn, Qp]:
  8 bit [-127, 127] (the narrow range int8 kernels of ONNX Runtime and OpenVINO expect), 4 bit [-8, 7]
  (ORT `MatMulNBits`' uint4 with zero point 8), 2 bit [-2, 1]; 8 bit with `reduce_range` [-63, 63]
  (`grid.REDUCED_QP`: ONNX Runtime's u8 x s8 kernels on x86 CPUs without VNNI add two u8 x s8 products in a
  saturating int16, exact only while 2 * 255 * |w| <= 32767, so |w| <= 64; the grid stays symmetric like [-127, 127]);
- activations (the input of every Linear): asymmetric uint8 [0, 255], one step size per tensor and an
  integer zero point fixed at initialisation (ONNX Runtime's x86 integer kernels are u8 activations x s8 weights);
  with `signed_activations` ("auto": the tensors whose calibration range is two-sided; "on": all) the grid is
  centred instead, zero point 128: the values of signed int8 [-128, 127] with zero point 0, which the OpenVINO
  export uses (`runtimes.signed`; its FullyConnected layers then run on s8 inputs) while the ONNX file keeps uint8.

Rounding is straight-through (the gradient of round is 1; outside the clamp range it is 0). The step size
gets the LSQ gradient (d x_hat / d s = round(x/s) - x/s inside the range, the clamp bound outside), scaled by
g = 1 / sqrt(N * Qp) with N the number of elements one step size covers (a weight row; an activation tensor).
Weights are not initialised as LSQ prescribes (s0 = 2 * mean|v| / sqrt(Qp) per row): that rule clips every weight
beyond 22 mean|v| (8 bit), and the projections of NAS-BERT students (embedding, block boundaries, head) have rows
whose largest weight is 115-140x their mean: on the task-distilled student of docs/quality.md (debian-sections,
8-bit weights only, no training) it gave 0.675 accuracy and 0.61 probability loyalty to fp32, against 0.835 and
0.994 when each row's step size is the one among max|v| * f / Qp (f from 0.30 to 1.00; 1 = nothing clipped) with
the least squared quantization error (`mse_weight_steps`, what `initialize` does). Activations are not initialised
by LSQ's rule either: it clips BERT's outlier features (8-bit MiniLM on debian-sections, 32 valid rows: logit KL to
fp32 0.71 and 75% label agreement with it, against 0.010 and 100% when s0 = range / 255 of the first calibration
batch, 0 included, with the zero point where 0 falls), and a few hundred steps of distillation do not recover from
it; so activation step sizes start from the batch's range. Both are then learned with the LSQ gradient.

Step sizes are learned relative to their initial value: s = s_hat * s0 with s_hat a parameter initialised to 1,
so one Adam learning rate suits step sizes whose magnitudes differ by 100x (weights vs activations); the LSQ
gradient scale is applied to s as in the paper.

With SmoothQuant (`lowbit.smooth`) an activation quantizer holds a per-channel s and quantizes x * (1 / s), and its
readers quantize W * s; without it (the default) nothing changes.

Linears that read the same tensor (attention's query, key and value) share one activation quantizer (`input_groups`,
found by tracing a forward pass): the tensor is quantized once, as the integer kernels do, and the shared step size
is trained jointly: its gradient is the sum over the readers, each scaled by g = 1 / sqrt(N * Qp) with N the
elements of the one tensor it covers (LSQ's rule, unchanged: the step size still covers N elements).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nasbert_deploy.lowbit.grid import REDUCED_QP, SIGNED_ACTIVATIONS


@dataclass(frozen=True)
class QuantSpec:
    """Integer levels [lo, hi] and whether step sizes are per output channel (weights) or per tensor."""

    bits: int
    lo: int
    hi: int
    per_channel: bool
    symmetric: bool

    @property
    def qp(self) -> int:
        """LSQ's Qp: the number of positive levels (half the range for asymmetric activations)."""
        return self.hi if self.symmetric else (self.hi - self.lo) // 2


def weight_spec(bits: int, reduce_range: bool = False) -> QuantSpec:
    """Signed symmetric per-channel weights: 8 bit narrow range [-127, 127] ([-63, 63] with `reduce_range`, for
    x86 CPUs without VNNI); fewer bits [-2^(b-1), 2^(b-1) - 1] (`reduce_range` is for 8 bit only)."""
    if reduce_range and bits != 8:
        raise ValueError(f"reduce_range applies to 8-bit weights only, not {bits}-bit")
    if bits == 8:
        return QuantSpec(8, -REDUCED_QP, REDUCED_QP, True, True) if reduce_range else QuantSpec(8, -127, 127, True, True)
    return QuantSpec(bits, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1, True, True)


def activation_spec(bits: int = 8) -> QuantSpec:
    """Unsigned asymmetric per-tensor activations [0, 2^b - 1]."""
    return QuantSpec(bits, 0, 2**bits - 1, False, False)


TWO_SIDED = 0.5  # "auto" centres a tensor whose smaller side of the range is at least this share of the larger


def _check_mode(mode: str) -> str:
    if mode not in SIGNED_ACTIVATIONS:
        raise ValueError(f"signed activations {mode!r}: valid: {', '.join(SIGNED_ACTIVATIONS)}")
    return mode


def centred(lo: float, hi: float, mode: str) -> bool:
    """Whether an activation with calibration range [lo <= 0, hi >= 0] gets the grid centred on zero under `mode`."""
    return _check_mode(mode) == "on" or (mode == "auto" and min(-lo, hi) >= TWO_SIDED * max(-lo, hi) > 0)


def signed_activation_spec(bits: int = 8) -> QuantSpec:
    """Signed symmetric per-tensor activations, narrow range [-(2^(b-1) - 1), 2^(b-1) - 1], zero point 0."""
    return QuantSpec(bits, -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1, False, True)


def _grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Forward: exactly x (bit for bit, so the exported scale equals the simulated one); backward: gradient x `scale`."""
    y = x * scale
    return x.detach() + (y - y.detach())


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    """Forward: round half to even (as ONNX QuantizeLinear); backward: identity."""
    return (x.round() - x).detach() + x


CLIP_FRACTIONS = tuple(round(1.0 - 0.02 * i, 2) for i in range(36))  # 1.00 (max|v|: nothing clipped) down to 0.30


def _row_sq_error(v: torch.Tensor, s: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Per row of `v`: the sum of squared errors of quantizing it with step size s[row] on `spec`'s levels."""
    return ((torch.clamp(torch.round(v / s[:, None]), spec.lo, spec.hi) * s[:, None] - v) ** 2).sum(1)


@torch.no_grad()
def mse_weight_steps(v: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Per row of `v` (rows, k): the step size max|v_row| * f / Qp, f in `CLIP_FRACTIONS`, with the least
    sum of squared quantization errors over the row (ties keep the larger f: less clipping)."""
    amax = v.abs().amax(1).clamp(min=1e-8)
    best = amax / spec.qp  # f = 1: nothing clipped
    best_err = _row_sq_error(v, best, spec)
    for f in CLIP_FRACTIONS[1:]:
        s = amax * f / spec.qp
        err = _row_sq_error(v, s, spec)
        better = err < best_err
        best_err, best = torch.where(better, err, best_err), torch.where(better, s, best)
    return best


class LsqQuantizer(nn.Module):
    """Fake quantizer with a learned step size; `channels` step sizes along dim 0 (weights) or one (activations)."""

    def __init__(self, spec: QuantSpec, channels: int = 1, signed_activations: str = "off") -> None:
        super().__init__()
        self.spec = spec
        self.signed_activations = _check_mode(signed_activations)  # applied when an asymmetric activation is initialised
        n = channels if spec.per_channel else 1
        self.step = nn.Parameter(torch.ones(n))  # s_hat: s = step * unit
        self.register_buffer("unit", torch.ones(n))  # s0, the LSQ initial step size
        self.register_buffer("zero_point", torch.zeros(n))  # integer-valued; 0 for symmetric specs
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("smooth", None)  # SmoothQuant's per-channel s: quantizes x / s (`set_smoothing`)

    def set_smoothing(self, s: torch.Tensor) -> None:
        """Quantize x * (1 / s) from now on (`lowbit.smooth`; the readers' weight columns are multiplied by s); a buffer,
        so it is saved and loaded with the step sizes. The activation step size is initialised again on the next call."""
        self.smooth = s.detach().float().clone().to(self.step.device)
        self.initialized.fill_(False)

    def smoothed(self, x: torch.Tensor) -> torch.Tensor:
        """x * (1 / s) per channel (last dimension), as the export's Mul computes it; x itself without smoothing."""
        return x if self.smooth is None else x * (1.0 / self.smooth)

    def scale(self) -> torch.Tensor:
        """The step sizes s (channels,) or (1,), float32, as exported."""
        return (self.step * self.unit).detach()

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Step sizes from `x`: a weight (out, in), least-error clipping per row (`mse_weight_steps`); or a calibration
        activation (..., features), its range."""
        spec = self.spec
        if spec.per_channel:
            s0 = mse_weight_steps(x.reshape(x.shape[0], -1).float(), spec)
            z = torch.zeros_like(s0)
        elif spec.symmetric:  # a signed activation on a symmetric grid (attention's query and key): its largest |x|
            s0 = torch.tensor([max(float(x.detach().abs().max()), 1e-8) / spec.hi])
            z = torch.zeros(1)
        else:  # activations: the calibration batch's range (0 included), see the module docstring
            v = x.reshape(-1).float()
            lo, hi = min(float(v.min()), 0.0), max(float(v.max()), 0.0)
            if centred(lo, hi, self.signed_activations):  # zero point mid-grid: signed [-128, 127] at 8 bits
                half = (spec.hi - spec.lo + 1) // 2
                s0 = torch.tensor([max(-lo / half, hi / (half - 1), 1e-8)])
                z = torch.tensor([float(spec.lo + half)])
            else:
                s0 = torch.tensor([max(hi - lo, 1e-8) / (spec.hi - spec.lo)])
                z = torch.clamp(torch.round(spec.lo - lo / s0), spec.lo, spec.hi)
        self.unit.copy_(s0.clamp(min=1e-8))
        self.step.fill_(1.0)
        self.zero_point.copy_(z)
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.smoothed(x)
        if not bool(self.initialized):
            self.initialize(x)
        spec = self.spec
        n = x[0].numel() if spec.per_channel else x.numel()
        s = _grad_scale(self.step * self.unit, 1.0 / math.sqrt(n * spec.qp))
        shape = (-1,) + (1,) * (x.dim() - 1) if spec.per_channel else (1,)
        s, z = s.reshape(shape), self.zero_point.reshape(shape)
        v = torch.clamp(x / s, spec.lo - z, spec.hi - z)
        return _round_ste(v) * s

    def integers(self, x: torch.Tensor) -> torch.Tensor:
        """q = clamp(round(x / s) + z, lo, hi) as int64 (what QuantizeLinear stores); weights only (per channel)."""
        shape = (-1,) + (1,) * (x.dim() - 1) if self.spec.per_channel else (1,)
        s, z = self.scale().reshape(shape), self.zero_point.reshape(shape)
        return torch.clamp(torch.round(x.detach() / s) + z, self.spec.lo, self.spec.hi).long()

    def extra_repr(self) -> str:
        return f"bits={self.spec.bits}, levels=[{self.spec.lo}, {self.spec.hi}], per_channel={self.spec.per_channel}"


class QuantLinear(nn.Linear):
    """`nn.Linear` computing  fq_a(x) @ fq_w(W).T + b  (the bias stays float, as in the integer kernels)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, weight_bits: int, act_bits: int | None,
                 reduce_range: bool = False, signed_activations: str = "off") -> None:
        super().__init__(in_features, out_features, bias)
        self.w_quant = LsqQuantizer(weight_spec(weight_bits, reduce_range), out_features)
        self.a_quant = LsqQuantizer(activation_spec(act_bits), signed_activations=signed_activations) if act_bits else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, weight_bits: int, act_bits: int | None, reduce_range: bool = False,
                    signed_activations: str = "off") -> QuantLinear:
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, weight_bits, act_bits, reduce_range,
                signed_activations)
        q.to(linear.weight.device)
        with torch.no_grad():
            q.weight.copy_(linear.weight)
            if linear.bias is not None:
                q.bias.copy_(linear.bias)
        q.w_quant.initialize(q.weight)
        return q

    def smoothing(self) -> torch.Tensor | None:
        """SmoothQuant's s of this Linear's input (its activation quantizer's, shared with the tensor's other
        readers), or None."""
        return None if self.a_quant is None else self.a_quant.smooth

    def scaled_weight(self) -> torch.Tensor:
        """W * s (columns scaled by the input's smoothing s): the matrix the integer kernel holds; W without smoothing."""
        s = self.smoothing()
        return self.weight if s is None else self.weight * s

    def weight_integers(self) -> torch.Tensor:
        """The integer weights the export stores (of `scaled_weight`), int64 (out, in)."""
        return self.w_quant.integers(self.scaled_weight())

    def quantized_weight(self) -> torch.Tensor:
        """The fake-quantized weight in the Linear's own input space: fq(W * s) / s (fq(W) without smoothing), so that
        a plain Linear holding it computes the weight-quantized model on float inputs."""
        s = self.smoothing()
        return self.w_quant(self.weight) if s is None else self.w_quant(self.weight * s) / s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.a_quant is None:
            return nn.functional.linear(x, self.quantized_weight(), self.bias)
        # fq_a(x / s) @ fq_w(W * s)^T + b  (s = 1 without smoothing)
        return nn.functional.linear(self.a_quant(x), self.w_quant(self.scaled_weight()), self.bias)


def quantize_linears(
    model: nn.Module, weight_bits: int, act_bits: int | None = 8, example_inputs: Mapping[str, torch.Tensor] | None = None,
    reduce_range: bool = False, positional: bool = False, signed_activations: str = "off",
) -> list[str]:
    """Replace every `nn.Linear` of `model` in place by a `QuantLinear`; returns their qualified names, in order.

    Works at the `nn.Linear` level, so any classifier built from Linears (HF BERT, NAS-BERT students, pruned
    models) is covered; weight step sizes are initialised here, activation ones on the first forward call.
    With `example_inputs` (keyword arguments of one forward call), Linears that read the same tensor share one
    activation quantizer (`input_groups`, `share_input_quantizers`); without, every Linear has its own (as
    quantized checkpoints written before sharing existed). `reduce_range`: 8-bit weights on [-63, 63] (`weight_spec`).
    `positional`: `model` takes `example_inputs` as positional arguments, in order (any module, not a transformers one).
    `signed_activations`: which activation grids are centred on zero (`centred`; "off": none, as before it existed).
    """
    groups = input_groups(model, example_inputs, positional) if example_inputs is not None and act_bits else []
    names = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and not isinstance(child, QuantLinear):
                setattr(module, child_name, QuantLinear.from_linear(child, weight_bits, act_bits, reduce_range,
                                                                    signed_activations))
                names.append(f"{name}.{child_name}" if name else child_name)
    share_input_quantizers(model, groups)
    return names


@torch.no_grad()
def input_groups(model: nn.Module, example_inputs: Mapping[str, torch.Tensor], positional: bool = False) -> list[list[str]]:
    """Qualified names of the `nn.Linear`s that read one and the same tensor in a forward call of `model` on
    `example_inputs` (groups of two or more, in call order; e.g. [[...query, ...value, ...key], ...]).

    Traced before quantization (a QuantLinear's first call would initialise its activation step size)."""
    if any(isinstance(m, QuantLinear) for m in model.modules()):
        raise ValueError("input_groups traces the float model; call it before quantize_linears")
    seen: list[tuple[torch.Tensor, list[str]]] = []  # the tensors stay referenced, so identity is meaningful

    def hook(name: str) -> Any:
        def pre(_: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            for t, names in seen:
                if t is x:
                    names.append(name)
                    return
            seen.append((x, [name]))

        return pre

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    try:
        was_training = model.training
        model.eval()
        model(*example_inputs.values()) if positional else model(**example_inputs)
        model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    return [names for _, names in seen if len(names) > 1]


def share_input_quantizers(model: nn.Module, groups: Sequence[Sequence[str]]) -> None:
    """Make every QuantLinear of each group use the first one's activation quantizer (one module, one step size)."""
    for group in groups:
        first = model.get_submodule(group[0])
        assert isinstance(first, QuantLinear)
        for name in group[1:]:
            q = model.get_submodule(name)
            assert isinstance(q, QuantLinear)
            q.a_quant = first.a_quant


def shared_input_groups(model: nn.Module) -> list[list[str]]:
    """The groups of QuantLinears that share one activation quantizer (two or more), in module order."""
    by_quantizer: dict[int, list[str]] = {}
    for name, q in quant_linears(model):
        if q.a_quant is not None:
            by_quantizer.setdefault(id(q.a_quant), []).append(name)
    return [names for names in by_quantizer.values() if len(names) > 1]


def quant_linears(model: nn.Module) -> Iterator[tuple[str, QuantLinear]]:
    """(qualified name, module) of every `QuantLinear` in `model`."""
    for name, module in model.named_modules():
        if isinstance(module, QuantLinear):
            yield name, module


def weight_levels(model: nn.Module) -> tuple[int, int]:
    """The weight grid [lo, hi] of `model`'s QuantLinears (one grid per model; ValueError if they differ or none)."""
    grids = {(q.w_quant.spec.lo, q.w_quant.spec.hi) for _, q in quant_linears(model)}
    if len(grids) != 1:
        raise ValueError(f"expected one weight grid over the model's QuantLinears, found {sorted(grids)}")
    return grids.pop()


def step_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The learned step sizes (s_hat) of every quantizer in `model`."""
    return [m.step for m in model.modules() if isinstance(m, LsqQuantizer)]


@torch.no_grad()
def bake_weights(model: nn.Module) -> None:
    """Overwrite every fake-quantized weight (QuantLinear, quantized embedding table) by its fake-quantized value
    (idempotent: already on the grid)."""
    for m in model.modules():
        if isinstance(getattr(m, "w_quant", None), LsqQuantizer) and isinstance(getattr(m, "weight", None), nn.Parameter):
            m.weight.copy_(m.quantized_weight())
