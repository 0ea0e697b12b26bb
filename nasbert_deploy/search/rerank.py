"""Re-ranking the search's top T on held-out text (NAS-BERT section 3.3).

The table's loss is a sum of block losses, each measured with the teacher's own input to the
block; the whole extracted network feeds each block its predecessor's output instead, so errors
compound. Re-ranking evaluates the top T whole networks and orders them by the distillation loss
of the network as deployed: the MSE between the extracted model's `last_hidden_state` and the
teacher's last hidden state, over real (non-padding) tokens of a held-out text sample.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nasbert_deploy.errors import TeacherError
from nasbert_deploy.space import Arch

SAMPLE_TEXT = Path(__file__).resolve().parent.parent / "data" / "sample.txt"


@dataclass(frozen=True)
class Reranked:
    """One architecture with its table loss (sum of block losses) and its whole-network held-out MSE."""

    arch: Arch
    table_loss: float
    heldout_mse: float


def heldout_mse(
    archs: Sequence[Arch],
    supernet: Any,
    teacher: Any,
    paragraphs: Sequence[str],
    seq_len: int = 128,
    batch_size: int = 16,
) -> list[float]:
    """Per arch: MSE of `supernet.extract(arch)`'s last_hidden_state (b, t, T) vs the teacher's, real tokens only.

    `supernet` is a `Supernet`, `teacher` a `teacher.Teacher` whose hidden size is the space's
    `output_dim` and whose tokenizer fits the space's vocabulary. Teacher outputs are computed once.
    """
    import torch

    from nasbert_deploy.model.losses import masked_mse
    from nasbert_deploy.teacher import block_targets, check_compatible

    space = supernet.space
    if not paragraphs:
        raise TeacherError("no held-out text to re-rank on; pass a non-empty text file")
    if archs:
        check_compatible(supernet.space, teacher)  # before the teacher's forward passes
    t = min(seq_len, space.max_positions)
    enc = teacher.tokenizer(list(paragraphs), max_length=t, truncation=True, padding="longest", return_tensors="pt")
    ids, mask = enc["input_ids"].long(), enc["attention_mask"].long()  # (n, t) each
    batches = []
    for s in range(0, len(ids), batch_size):
        b_ids, b_mask = ids[s : s + batch_size], mask[s : s + batch_size]
        target = block_targets(teacher, b_ids, b_mask, space.num_blocks)[-1]  # (b, t, T) teacher's last hidden state
        batches.append((b_ids, b_mask, target))
    out = []
    with torch.no_grad():
        for arch in archs:
            model = supernet.extract(arch).eval()
            num = den = 0.0
            for b_ids, b_mask, target in batches:
                hidden = model(input_ids=b_ids, attention_mask=b_mask).last_hidden_state  # (b, t, T)
                weight = float(b_mask.sum()) * hidden.shape[-1]
                num += float(masked_mse(hidden, target, b_mask)) * weight
                den += weight
            out.append(num / den)
    return out


def rerank(
    archs: Sequence[Arch],
    table_losses: Sequence[float],
    supernet: Any,
    teacher: Any,
    paragraphs: Sequence[str],
    seq_len: int = 128,
    batch_size: int = 16,
) -> list[Reranked]:
    """The archs ordered by held-out whole-network MSE (least first; ties keep the table order)."""
    mses = heldout_mse(archs, supernet, teacher, paragraphs, seq_len, batch_size)
    ranked = [Reranked(a, float(loss), m) for a, loss, m in zip(archs, table_losses, mses)]
    return sorted(ranked, key=lambda r: r.heldout_mse)


def read_heldout(path: str | os.PathLike[str] | None = None, limit: int = 200) -> list[str]:
    """Held-out paragraphs, one per non-empty line: `path`, or the shipped sample (`data/sample.txt`)."""
    from nasbert_deploy.errors import CorpusError
    from nasbert_deploy.fileio import read_input_lines

    return read_input_lines(SAMPLE_TEXT if path is None else Path(path), "held-out text", CorpusError)[:limit]
