"""Supernet-training checkpoints: one folder per part (the embedding, each block), replaced atomically.

`OUT/checkpoint/<part>/`: `weights.safetensors` (fp32), `optimizer.pt` (AdamW state, read back with
`torch.load(weights_only=True)`), `state.json` (settings, step, shrinks, survivors, final losses, seed).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nasbert_deploy.errors import CheckpointError
from nasbert_deploy.model.loop import latest_dir, load_checkpoint, save_checkpoint
from nasbert_deploy.space import BlockArch, SearchSpace
from nasbert_deploy.supernet.candidates import parse_block
from nasbert_deploy.supernet.network import Supernet

CANDIDATES_NAME = "candidates.json"
CHECKPOINT_DIR = "checkpoint"


@dataclass
class Part:
    """One independently trained piece: 'embed' or 'block<i>'."""

    name: str
    block: int | None
    params: list[torch.nn.Parameter]
    prefixes: tuple[str, ...]
    optimizer: torch.optim.Optimizer
    step: int = 0
    shrinks: int = 0
    survivors: list[list[BlockArch]] | None = None
    final_losses: dict[BlockArch, float] | None = None
    last_loss: float = float("nan")
    done: bool = False
    elapsed_s: float = 0.0
    busy: bool = False  # mid-step: not saved (its last checkpoint stays the one to resume from)


def part_dir(out: Path, name: str) -> Path:
    return Path(out) / CHECKPOINT_DIR / name


def existing_part_dir(out: Path, name: str) -> Path:
    """The part's folder, or the backup `atomic_dir` leaves if a kill fell between its two renames."""
    return latest_dir(part_dir(out, name))


def save_part(net: Supernet, p: Part, out: Path, ident: dict[str, Any], seed: int) -> None:
    """Atomically write one part: weights (safetensors, fp32), AdamW state (torch.save), state.json."""
    state = {k: v for k, v in net.state_dict().items() if k.startswith(p.prefixes)}
    info = {
        "part": p.name,
        "step": p.step,
        "shrinks": p.shrinks,
        "done": p.done,
        "last_loss": p.last_loss,
        "elapsed_s": p.elapsed_s,
        "survivors": [[str(b) for b in bin_] for bin_ in p.survivors] if p.survivors is not None else None,
        "final_losses": [[str(b), v] for b, v in p.final_losses.items()] if p.final_losses is not None else None,
        # no RNG is carried between steps: batches and paths are drawn from generators seeded by
        # (seed, epoch) and (seed, block, step), so the seed and the step are the whole RNG state
        "rng": {"seed": seed, "batch": "randperm(seed*1000003+epoch)", "path": "Random('path-{seed}-{block}-{step}')"},
    }
    save_checkpoint(part_dir(out, p.name), ident, state, p.optimizer.state_dict(), info, field="run")


def load_part(net: Supernet, p: Part, out: Path, ident: dict[str, Any], space: SearchSpace) -> bool:
    """Restore a part from its checkpoint if there is one; `CheckpointError` if it is from other settings."""
    ckpt = load_checkpoint(part_dir(out, p.name), ident, field="run")
    if ckpt is None:
        return False
    d, st = existing_part_dir(out, p.name), ckpt.state
    missing, unexpected = net.load_state_dict(ckpt.tensors, strict=False)
    if unexpected or any(k.startswith(p.prefixes) for k in missing):
        raise CheckpointError(f"{d}: weights do not match part {p.name} of space {space.name!r}")
    try:
        p.optimizer.load_state_dict(ckpt.saved)
        p.step, p.shrinks, p.done, p.last_loss = int(st["step"]), int(st["shrinks"]), bool(st["done"]), float(st["last_loss"])
        p.elapsed_s = float(st.get("elapsed_s", 0.0))
        if st["survivors"] is not None:
            p.survivors = [[parse_block(space, a) for a in bin_] for bin_ in st["survivors"]]
        if st["final_losses"] is not None:
            p.final_losses = {parse_block(space, a): float(v) for a, v in st["final_losses"]}
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {d} is unreadable ({exc}); delete it to restart that part") from None
    return True


def part_finished(out: Path, name: str) -> bool:
    d = existing_part_dir(out, name)
    try:
        return bool(json.loads((d / "state.json").read_text())["done"])
    except (OSError, KeyError, ValueError):
        return False
