"""Students distilled on a corpus before their task training (`search-task --corpus`): the student recipe of
docs/quality.md -- pre-training-stage distillation of the hidden states from the pre-trained teacher on unlabelled
text (`student.distill`), then task distillation from the fine-tuned teacher -- inside the task search.

`DistilledStart` wraps a start of `tasksearch.start` and offers what they offer (`.space`, `.extract`, `.record`):
the first `extract(arch)` distils `arch`, starting from the wrapped start's weights, `steps` steps on the corpus and
keeps the encoder in `folder/enc-<key>/` (`key`: the arch, the wrapped start, the corpus and the distillation
settings); later calls, and later runs, load it from there. An interrupted distillation resumes from its checkpoint
(`student.distill` says so). The final distillation starts from the pick's encoder; with `--rerank-distilled` the
rerank's proxies do too, so the rerank compares architectures after the step that decides their quality
(docs/task-search.md, "Where the proxy misleads"), and the pick's encoder is then reused by the final.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nasbert_deploy.fileio import exclusive_lock
from nasbert_deploy.space import Arch, SearchSpace

Note = Callable[[str], None]


@dataclass(frozen=True)
class CorpusDistillation:
    """The corpus stage of the recipe (`bench_task_distill.py`'s defaults): `steps` AdamW steps of `batch_size`
    paragraphs cut to `seq_len` tokens at `lr`, last hidden state regressed (`student.distill.DistillConfig`)."""

    corpus: Path
    steps: int = 1000
    batch_size: int = 32
    seq_len: int = 64
    lr: float = 3e-4

    def config(self, seed: int) -> Any:
        from nasbert_deploy.student.distill import DistillConfig

        return DistillConfig(steps=self.steps, batch_size=self.batch_size, seq_len=self.seq_len, lr=self.lr, seed=seed)

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def corpus_digest(texts: Sequence[str]) -> str:
    """What identifies a corpus in an encoder's key: its paragraphs, not its path."""
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]


@dataclass(eq=False)
class DistilledStart:
    """Students of `base` (a `tasksearch.start` start) distilled from `teacher` (a loaded `teacher.Teacher`) on
    `texts` with `settings`, kept in `folder`; `identity`: the start's and the corpus's part of every key."""

    base: Any
    teacher: Any
    texts: Sequence[str]
    settings: CorpusDistillation
    folder: Path
    identity: dict[str, Any]
    seed: int = 0
    note: Note = print
    progress: Any = None
    made: dict[str, Path] = field(default_factory=dict)

    @property
    def space(self) -> SearchSpace:
        return self.base.space  # type: ignore[no-any-return]

    def key(self) -> dict[str, Any]:
        """The distillation's part of a proxy cache's or a final checkpoint's key."""
        return {"distilled": {**self.settings.to_dict(), **self.identity, "seed": self.seed}}

    def encoder_dir(self, arch: str) -> Path:
        blob = json.dumps({"arch": arch, **self.key()}, sort_keys=True)
        return self.folder / f"enc-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"

    def ensure(self, arch: str) -> Path:
        """The folder of `arch`'s distilled encoder, distilled now unless it is there. Searches sharing a folder
        (`--distilled-dir`) take turns on each encoder: a second one waits for the first and reuses its result."""
        out = self.encoder_dir(arch)
        if (out / "config.json").is_file():
            return self._reused(arch, out)
        self.folder.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(out.with_name(f".{out.name}.lock"), lambda: self.note(
                f"corpus distillation of {arch}: another run is distilling it into {out}; waiting for it")):
            if (out / "config.json").is_file():  # the other run finished it while this one waited
                return self._reused(arch, out)
            return self._distil(arch, out)

    def _reused(self, arch: str, out: Path) -> Path:
        if arch not in self.made:
            self.note(f"corpus distillation of {arch}: reused from {out}")
            self.made[arch] = out
        return out

    def _distil(self, arch: str, out: Path) -> Path:
        from nasbert_deploy.student.build import make_student
        from nasbert_deploy.student.distill import distill

        s = self.settings
        self.note(f"corpus distillation of {arch}: {s.steps} steps of {s.batch_size} paragraphs ({s.seq_len} tokens) "
                  f"from {self.teacher.path} on {s.corpus} -> {out}")
        student = make_student(self.base.extract(arch), getattr(self.base, "net", None), getattr(self.base, "init", "supernet"))
        report = distill(student, self.teacher, self.texts, out, self.settings.config(self.seed), progress=self.progress,
                         note=self.note)
        self.note(f"corpus distillation of {arch}: done in {report['train_s']:.0f} s, last loss "
                  f"{report['train_loss_last']:.4f}")
        self.made[arch] = out
        return out

    def extract(self, arch: Arch | str, **config_kwargs: Any) -> Any:
        """`arch`'s distilled encoder (a `NasBertModel`; config extras such as labels in `config_kwargs`)."""
        import torch
        from safetensors.torch import load_file

        from nasbert_deploy.model.modeling import NasBertConfig, NasBertModel

        a = self.space.parse(arch) if isinstance(arch, str) else self.space.validate(arch)
        folder = self.ensure(str(a))
        model = NasBertModel(NasBertConfig.from_arch(a, self.space, **config_kwargs)).eval()
        state = load_file(str(folder / "model.safetensors"))
        with torch.no_grad():
            model.load_state_dict(state)
        return model

    def record(self, arch: str | None = None) -> dict[str, Any]:
        """The wrapped start's record plus the corpus stage (and `arch`'s encoder folder when given)."""
        out = {**self.base.record(arch), **self.key()}
        if arch is not None:
            out["distilled"] = {**out["distilled"], "encoder": str(self.encoder_dir(arch))}
        return out
