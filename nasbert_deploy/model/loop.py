"""The training-loop pieces every trainer shares (supernet parts, student distillation, fine-tuning).

- `lr_factor` / `warmup_decay`: the learning-rate schedule, linear warm-up then linear decay to 0
  (or constant after the warm-up when there is no total);
- `save_checkpoint` / `load_checkpoint`: a resumable checkpoint folder, replaced atomically (temp
  folder, then rename): `weights.safetensors`, `optimizer.pt` (`torch.save`, read back with
  `torch.load(weights_only=True)`) and `state.json`, whose key must equal the resuming run's settings
  (`load_checkpoint_on_every_rank`: each rank of a torchrun run reads the one rank 0 wrote);
- `run_steps`: the step loop that resumes, checkpoints every N steps and on Ctrl-C (then re-raises)
  and reports progress through callbacks.
"""

from __future__ import annotations

import functools
import hashlib
import json
import pickle
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nasbert_deploy.errors import CheckpointError
from nasbert_deploy.fileio import atomic_dir, write_json_atomic
from nasbert_deploy.model.distributed import barrier, gather_objects

ProgressFn = Callable[[int, int, dict[str, float]], None]
"""progress(steps done, total steps, values of the last step)"""
NoteFn = Callable[[str], None]

WEIGHTS, OPTIMIZER, STATE = "weights.safetensors", "optimizer.pt", "state.json"


# ---------------------------------------------------------------- schedule
def lr_factor(step: int, warmup: int, total: int | None = None) -> float:
    """LR multiplier for 0-based `step`: (step+1)/warmup during the warm-up, then a linear decay that
    reaches 0 at `total` (no decay when `total` is None). `warmup` is at least 1."""
    warm = max(1, warmup)
    if step < warm:
        return (step + 1) / warm
    if total is None:
        return 1.0
    return max(0.0, (total - step) / max(1, total - warm))


def warmup_decay(optimizer: torch.optim.Optimizer, warmup_fraction: float, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """`lr_factor` as a scheduler: `warmup_fraction` of `total` steps of warm-up (at least one), then decay."""
    warm = max(1, int(warmup_fraction * total))
    # a plain function (not a callable object): the scheduler's state then holds no schedule, so a
    # resumed run with another total recomputes it
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, warm, total))


# ---------------------------------------------------------------- checkpoints
@dataclass
class Checkpoint:
    tensors: dict[str, torch.Tensor]
    saved: Any  # what was passed as `saved` to `save_checkpoint` (optimizer state etc.)
    state: dict[str, Any]  # the JSON state, key included


@functools.lru_cache(maxsize=4)
def epoch_order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    """The order of `n` training rows in `epoch`: a shuffle that depends only on (seed, epoch), so a resumed
    run and every data-parallel rank see the same one."""
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return tuple(order)


def checkpoint_dir(out_dir: str | Path) -> Path:
    """Where a run writing `out_dir` keeps its resumable checkpoint: the sibling `<out_dir>.ckpt`."""
    out = Path(out_dir)
    return out.with_name(out.name + ".ckpt")


def latest_dir(ckpt: Path) -> Path:
    """`ckpt`, or the backup `atomic_dir` leaves there if a kill fell between its two renames."""
    backup = ckpt.with_name(f".{ckpt.name}.old")
    return ckpt if (ckpt / STATE).is_file() or not (backup / STATE).is_file() else backup


def save_checkpoint(
    ckpt: Path, key: dict[str, Any], tensors: dict[str, torch.Tensor], saved: Any, state: dict[str, Any], field: str = "key"
) -> None:
    """Write tensors (safetensors), `saved` (torch.save: optimizer, scheduler, RNG state) and the JSON
    state `{field: key, **state}`, all or nothing."""
    from safetensors.torch import save_file

    with atomic_dir(ckpt) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / WEIGHTS))
        torch.save(saved, tmp / OPTIMIZER)
        write_json_atomic(tmp / STATE, {field: key, **state})


def load_checkpoint(ckpt: Path, key: dict[str, Any], field: str = "key") -> Checkpoint | None:
    """The checkpoint in `ckpt` (None if there is none); `CheckpointError` if it is damaged or its
    `field` differs from `key` (the message names the differing settings)."""
    from safetensors.torch import load_file

    d = latest_dir(ckpt)
    if not (d / STATE).is_file():
        return None
    try:
        state = json.loads((d / STATE).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{d} is a damaged checkpoint ({exc}); delete it to start over") from exc
    expected = json.loads(json.dumps(key))
    if not isinstance(state, dict) or state.get(field) != expected:
        found = state.get(field) if isinstance(state, dict) else None
        raise CheckpointError(
            f"{d} holds a checkpoint of a different run ({', '.join(_differences(found, expected))} differ); "
            "rerun with the same settings to resume, or delete that folder (or write elsewhere) to start over"
        )
    try:
        tensors = load_file(str(d / WEIGHTS))
        saved = torch.load(d / OPTIMIZER, weights_only=True, map_location="cpu")  # the optimizer moves it to its params
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as exc:
        raise CheckpointError(f"{d} is a damaged checkpoint ({exc}); delete it to start over") from exc
    return Checkpoint(tensors, saved, state)


def load_checkpoint_on_every_rank(ckpt: Path, key: dict[str, Any], field: str = "key") -> Checkpoint | None:
    """`load_checkpoint` on every rank of a torchrun run, after the others wait for rank 0 (which may still be
    writing the checkpoint of an interrupted run); `CheckpointError` on every rank unless they all read the same
    state (a rank on another machine without the shared folder rank 0 writes to). `load_checkpoint` alone
    without a process group."""
    barrier()
    loaded = load_checkpoint(ckpt, key, field)
    seen = None if loaded is None else hashlib.sha256(json.dumps(loaded.state, sort_keys=True).encode()).hexdigest()
    views = gather_objects(seen)
    if len(set(views)) > 1:
        lost = [r for r, v in enumerate(views) if v != views[0]]
        raise CheckpointError(f"ranks {lost} do not see the checkpoint rank 0 sees in {ckpt}; run every process "
                              "on a folder they share, or delete it to start over")
    return loaded


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted names of the settings that differ between two JSON values."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".") or "settings"]


def optimizer_state(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler) -> dict[str, Any]:
    """What `save_checkpoint` stores beside the weights: optimizer, scheduler and torch RNG state (CPU, and the
    current GPU's when training there: dropout on a GPU draws from it)."""
    saved = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        saved["cuda_rng"] = torch.cuda.get_rng_state()
    return saved


def restore_optimizer_state(
    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler, saved: dict[str, Any]
) -> None:
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng"])
    if "cuda_rng" in saved and torch.cuda.is_available():
        torch.cuda.set_rng_state(saved["cuda_rng"])


# ---------------------------------------------------------------- the step loop
def run_steps(
    start: int,
    total: int,
    step_fn: Callable[[int], dict[str, float]],
    save: Callable[[int], None],
    *,
    checkpoint_every: int = 0,
    after_step: Callable[[int], None] | None = None,
    progress: ProgressFn | None = None,
    note: NoteFn | None = None,
) -> int:
    """Run steps `start` .. `total - 1` and return the number of steps done.

    Per step: `step_fn(step)` trains 0-based `step` and returns the values to report, then
    `progress(done, total, values)` and `after_step(done)` (e.g. an epoch-end evaluation) with
    `done = step + 1`; `save(done)` writes a checkpoint every `checkpoint_every` steps (0: never)
    except after the last step (the caller writes its output then). On Ctrl-C (KeyboardInterrupt)
    `save(done)` is called with the steps finished so far and the interrupt re-raised.
    """
    if start > 0 and note is not None:
        note(f"resuming from step {start} of {total}")
    done = start
    try:
        while done < total:
            values = step_fn(done)
            done += 1
            if progress is not None:
                progress(done, total, values)
            if after_step is not None:
                after_step(done)
            if checkpoint_every and done % checkpoint_every == 0 and done < total:
                save(done)
    except KeyboardInterrupt:
        save(done)
        raise
    return done


# ---------------------------------------------------------------- epoch trainers (keep the best weights)
def rank_rows(step: int, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> tuple[list[int], int]:
    """(this rank's rows, the global batch's size) of 0-based `step` of an epoch trainer: a step takes the next
    world x `batch_size` rows of its epoch's `epoch_order` (the last batch of an epoch may be short) and rank r
    its slice r of them (empty when a short batch ends before it)."""
    per_step = batch_size * world
    epoch, pos = divmod(step, -(-n // per_step))
    first = pos * per_step
    n_global = min(per_step, n - first)
    order = epoch_order(n, seed, epoch)
    return list(order[first + rank * batch_size : first + min(n_global, (rank + 1) * batch_size)]), n_global


def kept_tensors(model: torch.nn.Module, best_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What an epoch trainer checkpoints: the current weights ('cur.*') and the best so far ('best.*')."""
    tensors = {f"cur.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"best.{k}": v for k, v in best_state.items()})
    return tensors


def restore_kept(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Load `kept_tensors`' current weights into `model`; return the best ones."""
    model.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("cur.")})
    return {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
