"""Near-identity square Linears quantized as  x + (W - I) x  (the residual form).

A BERT encoder converted to NAS-BERT's form (`model.etd.convert_teacher`, before `identity_projections` existed)
holds its embedding projection, block boundaries and token head as 384 x 384 Linears that started as identities and
drifted in fine-tuning (off-diagonal rms 0.002, diagonal 0.99-1.01). On the 8-bit grid of such a row the step size is
set by the diagonal (about 1/127), so the learned off-diagonal entries round to 0 or one step, and the input's
rounding error passes through unchanged: both land on the residual stream, every feature at once
(docs/quantization.md: the committed wordnet teacher's probability loyalty 0.95 against 0.995 without them).

Written as  y = x + D x + b  with D = W - I, nothing changes in float (up to rounding), but only D is quantized: its
step size is set by D's own largest entry (about 100x finer) and the input's rounding error reaches y only through
D. The export keeps the Linear (D, int8, as any other) and adds a float Add of x, which ONNX Runtime and OpenVINO
run beside the integer MatMul. A saved folder holds the merged weight I + D (a plain model again); its
`quantization.json` lists the Linears in this form, so `load_quantized` splits them again (D is recovered
exactly: I + D rounds D by at most 6e-8, far under half a step of D's grid).
"""

from __future__ import annotations

import torch
from torch import nn

from nasbert_deploy.lowbit.grid import DEFAULT_RESIDUAL, RESIDUAL_MODES

__all__ = ["DEFAULT_RESIDUAL", "RESIDUAL_MODES", "ResidualLinear", "merge_residual", "near_identity", "split_residual"]

# a square Linear whose largest |W - I| is at most this share of its largest |W|: D's grid at least 4x finer than W's
NEAR_IDENTITY = 0.25


class ResidualLinear(nn.Module):
    """y = x + delta(x): a square Linear W = I + delta.weight written so that only the difference is quantized."""

    def __init__(self, features: int, bias: bool = True) -> None:
        super().__init__()
        self.delta = nn.Linear(features, features, bias)

    @property
    def in_features(self) -> int:
        return self.delta.in_features

    @property
    def out_features(self) -> int:
        return self.delta.out_features

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> ResidualLinear:
        r = cls(linear.in_features, linear.bias is not None).to(linear.weight.device)
        with torch.no_grad():
            r.delta.weight.copy_(linear.weight - torch.eye(linear.in_features, dtype=linear.weight.dtype,
                                                           device=linear.weight.device))
            if linear.bias is not None:
                r.delta.bias.copy_(linear.bias)
        return r

    def merged(self, weight: torch.Tensor | None = None) -> nn.Linear:
        """The plain Linear I + D (D: `weight`, e.g. the dequantized one, or delta's own)."""
        d = self.delta.weight if weight is None else weight
        lin = nn.Linear(self.in_features, self.out_features, self.delta.bias is not None).to(d.device)
        with torch.no_grad():
            lin.weight.copy_(d + torch.eye(self.in_features, dtype=d.dtype, device=d.device))
            if self.delta.bias is not None:
                lin.bias.copy_(self.delta.bias)
        return lin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.delta(x)


def near_identity(linear: nn.Module, threshold: float = NEAR_IDENTITY) -> bool:
    """Whether `linear` is a square `nn.Linear` with max |W - I| <= `threshold` * max |W|."""
    if type(linear) is not nn.Linear or linear.in_features != linear.out_features:
        return False
    w = linear.weight.detach()
    d = w - torch.eye(w.shape[0], dtype=w.dtype, device=w.device)
    return float(d.abs().max()) <= threshold * float(w.abs().max())


def split_residual(model: nn.Module, names: list[str] | None = None) -> list[str]:
    """Replace the near-identity square Linears of `model` in place by `ResidualLinear`s (or exactly the Linears
    `names`, as a saved folder lists them); returns their qualified names, in module order. Call it before
    `lsq.quantize_linears`, which then quantizes each `delta`."""
    done = []
    for name, module in list(model.named_modules()):
        if type(module) is not nn.Linear or (names is None and not near_identity(module)) or \
                (names is not None and name not in names):
            continue
        if module.in_features != module.out_features:
            raise ValueError(f"{name} is not square ({module.out_features} x {module.in_features}); "
                             "only a square Linear has the residual form")
        model.set_submodule(name, ResidualLinear.from_linear(module))
        done.append(name)
    missing = sorted(set(names or ()) - set(done))
    if missing:
        raise ValueError(f"no Linear named {', '.join(missing[:4])} to write in the residual form")
    return done


def merge_residual(model: nn.Module) -> list[str]:
    """Replace every `ResidualLinear` of `model` in place by the plain Linear I + D of its current `delta` (a float
    Linear: call it on `lowbit.qdq.float_copy`'s output for the dequantized weights); returns their names."""
    done = []
    for name, module in list(model.named_modules()):
        if isinstance(module, ResidualLinear):
            if type(module.delta) is not nn.Linear:
                raise ValueError(f"{name}.delta is still quantized; merge the float copy of the model")
            model.set_submodule(name, module.merged())
            done.append(name)
    return done
