"""Text corpus -> tokens -> cached teacher hidden states at block boundaries.

Block-wise distillation needs, for every paragraph, the teacher's hidden state at each student
block boundary: `[embedding output, end of block 1, ..., end of block N]`, each (t, T). Running the
teacher once and caching these states (fp16) makes every later epoch teacher-free.

Cache layout (`cache_dir/<key>/`), resumable shard by shard, every file written atomically:

    cache.json                 key, teacher, corpus, paragraphs, seq_len, blocks, shards
    shard-00000.safetensors    input_ids (n, t) int64, attention_mask (n, t) int64,
                               state0 .. stateN (n, t, T) float16

The key hashes the teacher folder's config and weights file sizes, the paragraphs themselves, the
sequence length and the number of blocks, so a changed input never reuses a stale cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nasbert_deploy.errors import CorpusError, SpaceError
from nasbert_deploy.fileio import atomic_path, read_input_lines, write_json_atomic
from nasbert_deploy.supernet.network import Supernet
from nasbert_deploy.teacher import Teacher, block_targets

CACHE_VERSION = 1


def read_paragraphs(path: str | os.PathLike[str], limit: int | None = None, min_words: int = 1) -> list[str]:
    """Non-empty lines of a UTF-8 text file (one paragraph per line), the first `limit` of them (`CorpusError`
    when the file is missing, unreadable, not UTF-8 or has no paragraph)."""
    paras = read_input_lines(path, "corpus", CorpusError, min_words)
    return paras[:limit] if limit else paras


@dataclass
class TeacherCache:
    """Tokenized paragraphs and the teacher's block-boundary states.

    `input_ids`, `attention_mask`: (n, t) int64; `states[k]`: (n, t, T) float16, k = 0 (embedding
    output) .. num_blocks (end of the last block).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    states: list[torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_blocks(self) -> int:
        return len(self.states) - 1

    @property
    def hidden_size(self) -> int:
        return int(self.states[0].shape[-1])

    def subset(self, index: torch.Tensor | slice) -> TeacherCache:
        return TeacherCache(self.input_ids[index], self.attention_mask[index], [s[index] for s in self.states], self.meta)

    def split(self, val_size: int) -> tuple[TeacherCache, TeacherCache]:
        """(train, validation): the last `val_size` paragraphs are held out."""
        if not 0 < val_size < len(self):
            raise CorpusError(
                f"validation size {val_size} must be between 1 and {len(self) - 1} (cache has {len(self)} paragraphs)"
            )
        return self.subset(slice(0, len(self) - val_size)), self.subset(slice(len(self) - val_size, len(self)))


def _teacher_fingerprint(teacher: Teacher) -> str:
    h = hashlib.sha256(json.dumps(teacher.model.config.to_dict(), sort_keys=True, default=str).encode())
    for f in sorted(Path(teacher.path).glob("*")):
        if f.is_file() and f.suffix in (".safetensors", ".bin", ".json", ".txt"):
            h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()


def cache_key(teacher: Teacher, paragraphs: list[str], seq_len: int, num_blocks: int) -> str:
    h = hashlib.sha256()
    h.update(f"v{CACHE_VERSION}|{_teacher_fingerprint(teacher)}|{seq_len}|{num_blocks}|".encode())
    for p in paragraphs:
        h.update(p.encode("utf-8") + b"\n")
    return h.hexdigest()[:16]


def tokenize(tokenizer: Any, paragraphs: list[str], seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), each (n, seq_len) int64, truncated and padded to `seq_len`."""
    enc = tokenizer(paragraphs, max_length=seq_len, truncation=True, padding="max_length", return_tensors="pt")
    return enc["input_ids"].long(), enc["attention_mask"].long()


def build_teacher_cache(
    teacher: Teacher,
    paragraphs: list[str],
    seq_len: int,
    num_blocks: int,
    cache_dir: str | os.PathLike[str],
    batch_size: int = 32,
    shard_size: int = 512,
    on_progress: Callable[[int, int], None] | None = None,
) -> TeacherCache:
    """Run the teacher over `paragraphs` once and cache the block-boundary states (fp16).

    Resumable: finished shards are reused. `on_progress(done, total)` counts paragraphs.
    """
    key = cache_key(teacher, paragraphs, seq_len, num_blocks)
    root = Path(cache_dir) / key
    root.mkdir(parents=True, exist_ok=True)
    n = len(paragraphs)
    n_shards = (n + shard_size - 1) // shard_size
    from safetensors.torch import save_file

    done = 0
    for s in range(n_shards):
        lo, hi = s * shard_size, min(n, (s + 1) * shard_size)
        path = root / f"shard-{s:05d}.safetensors"
        if not path.is_file():
            ids, mask = tokenize(teacher.tokenizer, paragraphs[lo:hi], seq_len)
            per_state: list[list[torch.Tensor]] = [[] for _ in range(num_blocks + 1)]
            for b in range(0, hi - lo, batch_size):
                states = block_targets(teacher, ids[b : b + batch_size], mask[b : b + batch_size], num_blocks)
                for k, st in enumerate(states):
                    per_state[k].append(st.to(torch.float16))
                if on_progress:
                    on_progress(done + min(b + batch_size, hi - lo), n)
            tensors = {"input_ids": ids, "attention_mask": mask}
            tensors.update({f"state{k}": torch.cat(v).contiguous() for k, v in enumerate(per_state)})
            with atomic_path(path) as tmp:
                save_file(tensors, str(tmp))
        done = hi
        if on_progress:
            on_progress(done, n)
    meta = {
        "version": CACHE_VERSION,
        "key": key,
        "teacher": str(teacher.path),
        "paragraphs": n,
        "seq_len": seq_len,
        "num_blocks": num_blocks,
        "shards": n_shards,
        "hidden_size": teacher.hidden_size,
    }
    write_json_atomic(root / "cache.json", meta)
    return load_teacher_cache(root)


def load_teacher_cache(root: str | os.PathLike[str]) -> TeacherCache:
    """Load a cache folder written by `build_teacher_cache` (all shards, in order)."""
    from safetensors.torch import load_file

    root = Path(root)
    try:
        meta = json.loads((root / "cache.json").read_text())
        shards = [load_file(str(root / f"shard-{s:05d}.safetensors")) for s in range(int(meta["shards"]))]
    except (OSError, json.JSONDecodeError, KeyError) as exc:
        raise CorpusError(f"teacher-state cache {root} is incomplete or malformed ({exc}); delete it to rebuild") from None
    k = int(meta["num_blocks"])
    return TeacherCache(
        torch.cat([s["input_ids"] for s in shards]),
        torch.cat([s["attention_mask"] for s in shards]),
        [torch.cat([s[f"state{j}"] for s in shards]) for j in range(k + 1)],
        meta,
    )


@torch.no_grad()
def init_embeddings_from_teacher(net: Supernet, teacher_model: Any) -> None:
    """The factorized embedding from the teacher's (`model.etd.teacher_embeddings`: a copy, or a truncated-SVD
    projection with `embed_adapter` undoing it; see docs/supernet.md)."""
    from nasbert_deploy.model.etd import load_embeddings, teacher_embeddings

    sp = net.space
    w = teacher_model.get_input_embeddings().weight
    if tuple(w.shape) != (sp.vocab_size, sp.output_dim):
        raise SpaceError(
            f"teacher embedding is {tuple(w.shape)} (vocab, hidden); space {sp.name!r} needs "
            f"({sp.vocab_size}, {sp.output_dim}): choose a space that matches the teacher"
        )
    init = teacher_embeddings(teacher_model, sp.embed_dim)
    load_embeddings(net.embeddings, init)
    if net.embed_adapter is not None:
        net.embed_adapter.weight.copy_(init.adapter_weight)
        net.embed_adapter.bias.copy_(init.adapter_bias)
