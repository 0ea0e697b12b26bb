"""KD-aware quantization-aware training (KDLSQ-BERT): a fake-quantized student learns weights and step
sizes from its full-precision self (or another fine-tuned classifier with the same labels).

    loss = ce_weight * CE(student, gold) + kd_weight * tau^2 * KL(teacher / tau || student / tau)
           + hidden_weight * mean_l MSE(h_l(student), h_l(teacher))      (real tokens only)

Rows with label id -1 (a transfer set: unlabelled in-domain text) take the distillation terms only; the
cross-entropy is the mean over a batch's labelled rows (0 when it has none).

The hidden-state term is used when both models return hidden states of the same shapes (HF BERT does;
NAS-BERT students return none, so they learn from logits and labels only). Attention maps are not
distilled (ONNX Runtime and OpenVINO keep attention scores in float here, so only Linear inputs are
quantized). Dropout is off while training: hidden states are matched to the teacher's exactly.
Runs resume from `<out>.ckpt/` (written every `checkpoint_every` steps and on Ctrl-C).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nasbert_deploy.lowbit.attention import DEFAULT_BITS as DEFAULT_ATTENTION_BITS
from nasbert_deploy.lowbit.grid import DEFAULT_SIGNED_ACTIVATIONS
from nasbert_deploy.lowbit.lsq import step_parameters
from nasbert_deploy.lowbit.residual import DEFAULT_RESIDUAL
from nasbert_deploy.model.loop import (
    NoteFn,
    ProgressFn,
    checkpoint_dir,
    epoch_order,
    load_checkpoint,
    optimizer_state,
    restore_optimizer_state,
    run_steps,
    save_checkpoint,
    warmup_decay,
)
from nasbert_deploy.model.losses import kd_loss, masked_mse
from nasbert_deploy.student.tasks import TaskData, iter_batches


@dataclass(frozen=True)
class QuantizeConfig:
    """Bit widths and training settings; `act_bits` 8 throughout (the kernels' activations)."""

    bits: int = 8
    act_bits: int = 8
    reduce_range: bool = False  # 8-bit weights on [-63, 63]: no int16 saturation on x86 without VNNI (`grid`)
    embedding_bits: int | None = None  # the word-embedding table, per row (`embedding`): None as the weights, 0 float
    attention_bits: int = DEFAULT_ATTENTION_BITS  # Q·Kᵀ of NAS-BERT attention (`lowbit.attention`): 8, 0 float
    onnx_attention: bool = True  # the ONNX Runtime file keeps attention's quantizers (False: float there, `export_bits`)
    smooth: float = 0.0  # SmoothQuant's alpha in (0, 1) for every quantized input (`lowbit.smooth`); 0: off
    smooth_min_ratio: float = 0.0  # smooth only inputs whose max/median channel range reaches it (`smooth.outlier_ratio`)
    signed_activations: str = DEFAULT_SIGNED_ACTIVATIONS  # which input grids are centred on zero (`lsq.centred`)
    residual_projections: str = DEFAULT_RESIDUAL  # near-identity square Linears as x + (W - I) x (`lowbit.residual`)
    steps: int = 300
    batch_size: int = 16
    max_len: int = 128
    lr: float = 2e-5
    step_lr: float = 2e-3  # Adam lr of the relative step sizes s_hat (s = s_hat * s0)
    warmup_fraction: float = 0.1
    temperature: float = 1.0
    ce_weight: float = 1.0
    kd_weight: float = 1.0
    hidden_weight: float = 1.0
    checkpoint_every: int = 100
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not d["smooth"]:  # runs without smoothing keep the settings (and checkpoint keys) of before it existed
            del d["smooth"]
        if not d["smooth_min_ratio"]:  # every input smoothed, as before the ratio existed
            del d["smooth_min_ratio"]
        if d["signed_activations"] == "off":  # as were all runs before centred grids existed
            del d["signed_activations"]
        del d["onnx_attention"]  # the export's choice, not the training's: the report's "attention" records it
        if d["residual_projections"] == DEFAULT_RESIDUAL:  # the key lists the Linears it split (`quantize.run`)
            del d["residual_projections"]
        return d


def _hidden_loss(s_out: Any, t_out: Any, mask: torch.Tensor) -> torch.Tensor | None:
    hs, ht = getattr(s_out, "hidden_states", None), getattr(t_out, "hidden_states", None)
    if not hs or not ht or len(hs) != len(ht) or any(a.shape != b.shape for a, b in zip(hs, ht)):
        return None
    return torch.stack([masked_mse(a, b, mask) for a, b in zip(hs, ht)]).mean()


def labelled_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the rows with a gold label (y >= 0); 0 (with a graph) when the batch has none."""
    keep = y >= 0
    if not bool(keep.any()):
        return logits.sum() * 0.0
    return nn.functional.cross_entropy(logits[keep], y[keep])


def train_quantized(
    student: nn.Module,
    teacher: nn.Module,
    tokenizer: Any,
    train: TaskData,
    label_ids: list[int],
    out_dir: str | Path,
    cfg: QuantizeConfig,
    run_key: dict[str, Any] | None = None,
    progress: ProgressFn | None = None,
    note: NoteFn | None = None,
) -> dict[str, Any]:
    """Train the fake-quantized `student` in place for `cfg.steps` steps; returns the training summary.

    `label_ids` are the gold class ids of `train` in the student's label order (-1: a transfer row, distilled
    only); `teacher` (eval mode, not trained) must use the same order. The checkpoint lives beside `out_dir` and
    is left for the caller to remove once the output is written.
    """
    y = torch.tensor(label_ids)
    spe = max(1, -(-len(train) // cfg.batch_size))
    steps = step_parameters(student)
    step_ids = {id(p) for p in steps}
    weights = [p for p in student.parameters() if p.requires_grad and id(p) not in step_ids]
    torch.manual_seed(cfg.seed)
    opt = torch.optim.AdamW([{"params": weights, "lr": cfg.lr, "weight_decay": 0.0},
                             {"params": steps, "lr": cfg.step_lr, "weight_decay": 0.0}])
    sched = warmup_decay(opt, cfg.warmup_fraction, cfg.steps)
    ckpt = checkpoint_dir(Path(out_dir))
    key = {"kind": "quantize", "config": cfg.to_dict(), "rows": len(train), **(run_key or {})}
    start, elapsed, last, used_hidden = 0, 0.0, {}, None
    loaded = load_checkpoint(ckpt, key)
    if loaded is not None:
        student.load_state_dict(loaded.tensors)
        restore_optimizer_state(opt, sched, loaded.saved)
        start, elapsed, last = loaded.state["done"], loaded.state["elapsed_s"], loaded.state["last"]
        used_hidden = loaded.state["hidden"]
    teacher.eval()
    t0 = time.perf_counter() - elapsed

    def step_fn(step: int) -> dict[str, float]:
        nonlocal last, used_hidden
        epoch, pos = divmod(step, spe)
        rows = epoch_order(len(train), cfg.seed, epoch)[pos * cfg.batch_size : (pos + 1) * cfg.batch_size]
        idx, batch = next(iter_batches(tokenizer, train, cfg.batch_size, cfg.max_len, rows))
        with torch.no_grad():
            t_out = teacher(**batch, output_hidden_states=True)
        s_out = student(**batch, output_hidden_states=True)
        ce = labelled_ce(s_out.logits, y[idx])
        kd = kd_loss(s_out.logits, t_out.logits, cfg.temperature)
        loss = cfg.ce_weight * ce + cfg.kd_weight * kd
        values = {"loss": 0.0, "ce": float(ce.detach()), "kd": float(kd.detach())}
        hid = _hidden_loss(s_out, t_out, batch["attention_mask"]) if cfg.hidden_weight else None
        used_hidden = hid is not None
        if hid is not None:
            loss = loss + cfg.hidden_weight * hid
            values["hidden"] = float(hid.detach())
        values["loss"] = float(loss.detach())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(weights, 1.0)
        opt.step()
        sched.step()
        last = values
        return values

    def save(done: int) -> None:
        state = {"done": done, "elapsed_s": time.perf_counter() - t0, "last": last, "hidden": used_hidden}
        save_checkpoint(ckpt, key, {k: v.clone() for k, v in student.state_dict().items()},  # shared quantizers: no aliasing
                        optimizer_state(opt, sched), state)

    student.eval()  # dropout off: the student imitates the deterministic teacher (BERT has no batch norm to update)
    run_steps(start, cfg.steps, step_fn, save, checkpoint_every=cfg.checkpoint_every, progress=progress, note=note)
    if start < cfg.steps:  # the trained state, so that an export that fails its checks reruns without training
        save(cfg.steps)
    student.eval()
    return {"steps": cfg.steps, "train_s": round(time.perf_counter() - t0, 2), "last": last,
            "hidden_state_loss": bool(used_hidden), "resumed_from": start}
