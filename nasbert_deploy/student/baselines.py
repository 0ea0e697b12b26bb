"""The models a user would pick instead of a searched student, and measuring any encoder side by side.

- `truncate_encoder`: the teacher's first k layers (embeddings and layers copied), a baseline that
  costs nothing to build;
- `uniform_arch`: a hand-designed uniform student in a search space (BERT-small-like: the same
  hidden size in every block, MHA/FFN pairs);
- `measure_encoders`: batch-1 latency of several encoder folders on one device spec, compiled through
  the runtime plug-ins (the same ONNX / OpenVINO / INT8 path as export and profiling) and timed in
  interleaved rounds with the one measurement function, so ratios between them hold on a noisy host.
"""

from __future__ import annotations

import os
import statistics
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nasbert_deploy.devices import DeviceSpec
from nasbert_deploy.errors import TeacherError
from nasbert_deploy.space import Arch, BlockArch, Op, SearchSpace

PathLike = str | os.PathLike[str]


def truncate_encoder(src: PathLike, layers: int, out: PathLike) -> Path:
    """Write the first `layers` transformer layers of the HF encoder at `src` (with its tokenizer) to `out`."""
    from transformers import AutoModel, AutoTokenizer

    from nasbert_deploy.fileio import atomic_dir

    try:
        model = AutoModel.from_pretrained(str(src), local_files_only=True)
    except Exception as exc:  # no or damaged weights, a config transformers does not know: one line
        raise TeacherError(f"cannot load the encoder in {src}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
    encoder = getattr(model, "encoder", None)
    stack = getattr(encoder, "layer", None)
    if stack is None:
        raise TeacherError(f"{src} is not a BERT-family encoder (no encoder.layer stack to truncate)")
    if not 1 <= layers <= len(stack):
        raise TeacherError(f"cannot keep {layers} layers of {src}: it has {len(stack)}; valid: 1..{len(stack)}")
    encoder.layer = stack[:layers]
    model.config.num_hidden_layers = layers
    with atomic_dir(Path(out)) as tmp:
        model.save_pretrained(str(tmp))
        AutoTokenizer.from_pretrained(str(src), local_files_only=True).save_pretrained(str(tmp))
    return Path(out)


def uniform_arch(space: SearchSpace, hidden: int, pairs: int) -> Arch:
    """`pairs` MHA+FFN layer pairs at one hidden size, spread over the blocks as evenly as slots allow."""
    slots = space.layers_per_block
    ops_needed = 2 * pairs
    if hidden not in space.hidden_sizes or not space.num_blocks <= ops_needed <= space.num_blocks * slots:
        raise ValueError(f"{pairs} pairs at hidden {hidden} do not fit space {space.name!r}")
    nb = space.num_blocks
    per_block = [ops_needed // nb + (1 if i < ops_needed % nb else 0) for i in range(nb)]
    blocks, k = [], 0
    for n in per_block:
        ops = [Op("mha") if (k + j) % 2 == 0 else Op("ffn") for j in range(n)]
        k += n
        blocks.append(BlockArch(hidden, tuple(ops + [Op("id")] * (slots - n))))
    return Arch(tuple(blocks))


class LastHidden:
    """Wrap an HF encoder so that `module(input_ids, attention_mask)` returns the last hidden state (b, t, h)."""

    @staticmethod
    def build(folder: PathLike) -> Any:
        import torch
        from transformers import AutoModel

        from nasbert_deploy.model import modeling  # noqa: F401  (registers the nasbert model type)

        class _Wrapped(torch.nn.Module):
            def __init__(self, inner: Any) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, input_ids: Any, attention_mask: Any) -> Any:
                return self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

        return _Wrapped(AutoModel.from_pretrained(str(folder), local_files_only=True).eval())


def measure_encoders(
    folders: Mapping[str, PathLike],
    spec: DeviceSpec,
    seq_len: int = 128,
    batch: int = 1,
    rounds: int = 5,
    min_time_s: float = 0.3,
    vocab: int = 30522,
    clock: str = "wall",
) -> dict[str, dict[str, float]]:
    """Per encoder: median over `rounds` interleaved rounds of the per-round median latency (ms), the lowest
    round, and the median per-round ratio to the first encoder (its speed-up is 1 / ratio).

    `clock="cpu"` times this process's CPU time (`runtimes.timing.CLOCKS`): on a host shared with other
    CPU-bound jobs it leaves out the time they take from the core (1-thread runtimes only)."""
    import numpy as np
    import torch

    from nasbert_deploy.runtimes.base import get_runtime, require_available
    from nasbert_deploy.runtimes.convert import EXAMPLE_BATCH, EXAMPLE_SEQ
    from nasbert_deploy.runtimes.timing import CLOCKS, measure

    require_available(spec)
    rt = get_runtime(spec.runtime)
    ids = np.random.default_rng(0).integers(1, vocab, size=(batch, seq_len), dtype=np.int64)
    inputs = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    example = {"input_ids": torch.randint(1, vocab, (EXAMPLE_BATCH, EXAMPLE_SEQ)),
               "attention_mask": torch.ones(EXAMPLE_BATCH, EXAMPLE_SEQ, dtype=torch.int64)}
    calls = {}
    with tempfile.TemporaryDirectory(prefix="nasbert-encoders-") as work:
        for i, (name, folder) in enumerate(folders.items()):
            module = LastHidden.build(folder)
            compiled = rt.compile(module, example, ["last_hidden_state"], spec, Path(work) / str(i))
            calls[name] = (compiled.bind(inputs), compiled.sync)
        per: dict[str, list[float]] = {k: [] for k in calls}
        for _ in range(rounds):
            for name, (fn, sync) in calls.items():
                per[name].append(measure(fn, sync=sync, min_time_s=min_time_s, clock=CLOCKS[clock]).median_ms)
    base = next(iter(per))
    return {
        k: {
            "median_ms": statistics.median(v),
            "lowest_ms": min(v),
            "ratio_to_first": statistics.median(a / b for a, b in zip(v, per[base])),
        }
        for k, v in per.items()
    }
