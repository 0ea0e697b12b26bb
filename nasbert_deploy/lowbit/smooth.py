"""SmoothQuant (Xiao et al. 2023) before KDLSQ: move the activations' outlier channels into the weights.

An 8-bit activation grid is one step size per tensor, so a few channels with large values (BERT has them; in a
post-LN encoder they sit in the LayerNorm outputs that feed attention and the FFN, and in the GELU output that feeds
the FFN's second Linear) set the step and leave the others a handful of levels. For a quantized input X (..., K)
read by Linears W_r (N_r, K), SmoothQuant divides channel k by

    s_k = max|X_k| ** alpha / max_r max_n |W_r[n, k]| ** (1 - alpha)

and multiplies the readers' weight columns by it: (X / s) (W s)^T = X W^T exactly in float, and the quantizers
see a flatter X / s (alpha -> 1 moves all of the range into the weights, which have one step size per output
row). As NNCF does, s is clipped from below at its 10% quantile (channels that are nearly zero in X would otherwise
get s ~ 0 and a large X / s), and the readers of one tensor (query, key, value) share one s, from the largest of
their weight columns.

Here s is a per-channel buffer of the input's activation quantizer (`LsqQuantizer.set_smoothing`, shared by the
readers like the step size) and the readers keep W as their parameter: `QuantLinear` quantizes W * s, and its
`quantized_weight` is fq(W * s) / s, the weight-quantized Linear in its own input space, so the saved weights still
load as a plain model. The export puts a Mul by 1 / s before the input's QuantizeLinear (`lowbit.qdq`); post-LN
BERT has nowhere to fold most of them (the LayerNorm output is also the residual, GELU is not linear). The one
exception is the attention's output Linear: its input, softmax(QKᵀ)·V, is linear in each channel of V, so
`fold_into_value` divides the value Linear's output rows (and bias) by that s and multiplies the output Linear's
columns by it (an exact reparametrisation of the float model; per-output-channel weight grids follow the rows), and
the output Linear's input needs no Mul: 6 fewer float passes of the 25 in MiniLM-L6 on ONNX Runtime. s is computed
once, from the float model on calibration batches, before the step sizes are initialised; training then learns the
step sizes and weights as without it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from nasbert_deploy.lowbit.lsq import QuantLinear, quant_linears
from nasbert_deploy.model.ops import MultiHeadAttention

QUANTILE = 0.1  # s is clipped from below at this quantile of its channels (NNCF's rule)


@torch.no_grad()
def input_absmax(model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Qualified name -> per input channel the largest |x| that `nn.Linear` read over `model(**batch)` for every batch
    (float model, before `quantize_linears`; every position, padding included, as the quantizer sees them)."""
    if any(isinstance(m, QuantLinear) for m in model.modules()):
        raise ValueError("input_absmax reads the float model; call it before quantize_linears")
    found: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Any:
        def pre(_: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(0).float()
            found[name] = x if name not in found else torch.maximum(found[name], x)

        return pre

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    was_training = model.training
    try:
        model.eval()
        for batch in batches:
            model(**batch)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    if not found:
        raise ValueError("no Linear read anything: the calibration batches are empty or the model has no nn.Linear")
    return found


def smoothing_scales(act_absmax: torch.Tensor, weight_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant's s (K,) from the input's per-channel max |x| and the readers' per-column max |w|, clipped from
    below at its `QUANTILE` quantile."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha}")
    eps = torch.finfo(torch.float32).eps
    s = act_absmax.float().clamp(min=eps) ** alpha / weight_absmax.float().clamp(min=eps) ** (1.0 - alpha)
    return s.clamp(min=float(torch.quantile(s, QUANTILE)))


def value_out_pairs(model: nn.Module) -> list[tuple[nn.Module, nn.Module, str]]:
    """(value Linear, output Linear, the output Linear's qualified name) of every attention of `model` whose output
    Linear reads softmax(QKᵀ)·V: NAS-BERT's `MultiHeadAttention` (value, out) and Hugging Face BERT-style attention
    (self.value, output.dense; pruned heads included)."""
    pairs = []
    for name, m in model.named_modules():
        pre = f"{name}." if name else ""
        if isinstance(m, MultiHeadAttention):
            pairs.append((m.value, m.out, f"{pre}out"))
        elif (type(m).__name__.endswith("Attention") and hasattr(getattr(m, "self", None), "value")
              and hasattr(getattr(m, "output", None), "dense")):
            pairs.append((m.self.value, m.output.dense, f"{pre}output.dense"))
    return pairs


@torch.no_grad()
def fold_into_value(model: nn.Module, act_absmax: Mapping[str, torch.Tensor], alpha: float) -> list[str]:
    """SmoothQuant's s of each attention's output-Linear input moved into the value Linear (rows and bias / s) and the
    output Linear (columns * s), both QuantLinears with their weight step sizes re-initialised; returns the output
    Linears' names (their inputs are smoothed without a Mul). An attention whose output Linear was never called, or
    whose value / output are not QuantLinears, is left to `smooth_inputs`."""
    folded = []
    for v, o, name in value_out_pairs(model):
        x = act_absmax.get(name)
        if x is None or not isinstance(v, QuantLinear) or not isinstance(o, QuantLinear) or o.a_quant is None:
            continue
        s = smoothing_scales(x, o.weight.detach().abs().amax(0), alpha)
        v.weight.div_(s[:, None])
        if v.bias is not None:
            v.bias.div_(s)
        o.weight.mul_(s[None, :])
        for q in (v, o):
            q.w_quant.initialize(q.scaled_weight())
        folded.append(name)
    return folded


def outlier_ratio(act_absmax: torch.Tensor) -> float:
    """How far an input's largest channel stands out: max over channels of max |x_k| / their median."""
    x = act_absmax.float()
    return float(x.max() / x.median().clamp(min=torch.finfo(torch.float32).eps))


@torch.no_grad()
def smooth_inputs(model: nn.Module, act_absmax: Mapping[str, torch.Tensor], alpha: float,
                  skip: Iterable[str] = (), min_ratio: float = 0.0) -> list[str]:
    """Give every distinct activation quantizer of `model`'s QuantLinears its s and re-initialise its readers' weight
    step sizes on W * s; returns the first reader's name of each smoothed quantizer (what `add_smoothing` needs to
    rebuild the buffers before loading a state dict). A Linear absent from `act_absmax` (never called) or named in
    `skip` (folded by `fold_into_value`) is left as is, and so is an input whose `outlier_ratio` is under `min_ratio`
    (its Mul would cost a float pass on the runtime for a grid that is already nearly flat)."""
    skipped = set(skip)
    readers: dict[int, list[tuple[str, QuantLinear]]] = {}
    for name, q in quant_linears(model):
        if q.a_quant is not None and name not in skipped:
            readers.setdefault(id(q.a_quant), []).append((name, q))
    smoothed = []
    for group in readers.values():
        first_name, first = group[0]
        x = act_absmax.get(first_name)
        if x is None or first.a_quant is None or outlier_ratio(x) < min_ratio:
            continue
        w = torch.stack([q.weight.detach().abs().amax(0) for _, q in group]).amax(0)
        first.a_quant.set_smoothing(smoothing_scales(x, w, alpha))
        for _, q in group:
            q.w_quant.initialize(q.scaled_weight())
        smoothed.append(first_name)
    return smoothed


def smooth_model(model: nn.Module, act_absmax: Mapping[str, torch.Tensor], alpha: float,
                 min_ratio: float = 0.0) -> tuple[list[str], list[str]]:
    """SmoothQuant on a model after `quantize_linears`, as `quantize --smooth` applies it: the attention outputs'
    divisors folded into the value Linears (free on the runtime, whatever their ratio), every other distinct quantized
    input whose `outlier_ratio` reaches `min_ratio` given its s; (smoothed, folded)."""
    folded = fold_into_value(model, act_absmax, alpha)
    return smooth_inputs(model, act_absmax, alpha, skip=folded, min_ratio=min_ratio), folded


def add_smoothing(model: nn.Module, names: Iterable[str]) -> None:
    """Placeholder s (ones) on the activation quantizer of each named QuantLinear, so that a state dict saved after
    `smooth_inputs` loads (the saved s replaces them)."""
    for name in names:
        q = model.get_submodule(name)
        if not isinstance(q, QuantLinear) or q.a_quant is None:
            raise ValueError(f"{name} is not a QuantLinear with a quantized input")
        q.a_quant.set_smoothing(torch.ones(q.in_features))
