"""Where the task search's students start (`search-task --init`; issue #16: "proxy distillation starts from
inherited weights, supernet or ETD"):

- `supernet` (the default): every architecture is a path of the trained supernet (`Supernet.extract`);
- `etd-impt` / `etd-rand`: every architecture is extracted from a pre-trained encoder (Extract Then Distill,
  `model.etd.extract_student`; issue #15), keeping the encoder's most important (or random) heads, FFN neurons and
  hidden dimensions, teacher layers mapped to student ops as `model.etd.default_layer_map` says. Importance is
  scored once per search on a seeded sample of the task's training texts (`IMPORTANCE_ROWS`) and kept in
  `out/search/importance.safetensors` under a key of the encoder, the method, the sample and the seed, so a resumed
  search reuses it.

Both starts offer what the proxy evaluation and the final distillation use -- `.space` and
`.extract(arch, **config) -> NasBertModel`, as `Supernet` does -- and `record(arch)`: where an architecture's weights
came from (for ETD with the layer mapping, `model.etd.describe_map`).

`request.prepare` refuses an ETD space with any architecture the encoder cannot provide (`check_encoder`: head size,
widths, FFN sizes, depth), so the controllers only ever propose extractable architectures.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nasbert_deploy.errors import TeacherError
from nasbert_deploy.fileio import atomic_path
from nasbert_deploy.model.importance import Importance
from nasbert_deploy.space import Arch, SearchSpace

Note = Callable[[str], None]
IMPORTANCE_ROWS = 512  # task texts the ETD-Impt importance is scored on (as `distill --init etd-impt` samples)
IMPORTANCE_FILE = "importance.safetensors"
ETD_HINT = "use --init supernet, or a --space with the encoder's geometry (e.g. minilm-wide for MiniLM-L6)"


def encoder_skeleton(path: Path) -> Any:
    """The encoder at `path` built from its config on the meta device (no weights read, no memory): enough for
    `model.importance.teacher_shape` and the extractability checks. `TeacherError` when it cannot be built."""
    import torch
    from transformers import AutoConfig, AutoModel

    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
        with torch.device("meta"):
            return AutoModel.from_config(config)
    except Exception as exc:  # a foreign or damaged config: transformers raises many kinds; the user needs one line
        raise TeacherError(f"cannot build an encoder from --encoder {path}: {type(exc).__name__}") from None


def check_encoder(space: SearchSpace, path: Path) -> None:
    """`TeacherError` unless every architecture of `space` can be extracted from the encoder at `path` (its head
    size divides the space's, its width, heads, FFN and layers cover the widest block; `check_space_extractable`)."""
    from nasbert_deploy.supernet.etd_init import check_space_extractable

    check_space_extractable(space, encoder_skeleton(path), hint=ETD_HINT)


def check_same_vocabulary(encoder_path: Path, tokenizer: Any, teacher_model: Path) -> None:
    """The students read the teacher classifier's token ids, so the encoder they are extracted from must share its
    vocabulary; `TeacherError` otherwise."""
    from transformers import AutoTokenizer

    try:
        mine = AutoTokenizer.from_pretrained(str(encoder_path), local_files_only=True)
    except Exception as exc:  # a folder without a tokenizer: transformers raises many kinds
        raise TeacherError(f"cannot load a tokenizer from --encoder {encoder_path}: {type(exc).__name__}") from None
    if mine.get_vocab() != tokenizer.get_vocab():
        raise TeacherError(f"--encoder {encoder_path} and --teacher-model {teacher_model} have different vocabularies; "
                           "extract from the encoder the teacher was fine-tuned from")


@dataclass
class SupernetStart:
    """Students as paths of a trained supernet (`net`, loaded from `folder`)."""

    net: Any
    folder: Path
    init: str = "supernet"

    @property
    def space(self) -> SearchSpace:
        return self.net.space  # type: ignore[no-any-return]

    def extract(self, arch: Arch | str, **config_kwargs: Any) -> Any:
        return self.net.extract(arch, **config_kwargs)

    def record(self, arch: str | None = None) -> dict[str, Any]:
        return {"init": self.init, "supernet": str(self.folder)}


@dataclass(eq=False)
class ExtractedStart:
    """Students extracted from the pre-trained `encoder` (a `teacher.Teacher`) with `importance` (ETD)."""

    space: SearchSpace
    encoder: Any
    importance: Importance
    init: str
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)

    def extract(self, arch: Arch | str, **config_kwargs: Any) -> Any:
        """A standalone `NasBertModel` of `arch` (config extras such as labels in `config_kwargs`) holding the
        encoder's weights; the extraction report is kept for `record`."""
        from nasbert_deploy.model.etd import extract_student
        from nasbert_deploy.model.modeling import NasBertConfig, NasBertModel

        a = self.space.parse(arch) if isinstance(arch, str) else self.space.validate(arch)
        model, report = extract_student(a, self.space, self.encoder.model, self.importance)
        self.reports[str(a)] = report
        if not config_kwargs:
            return model
        out = NasBertModel(NasBertConfig.from_arch(a, self.space, **config_kwargs)).eval()
        out.load_state_dict(model.state_dict())
        return out

    def report(self, arch: str) -> dict[str, Any]:
        """What `arch` took from which encoder layer (`model.etd.extract_student`'s report)."""
        if arch not in self.reports:
            self.extract(arch)
        return self.reports[arch]

    def record(self, arch: str | None = None) -> dict[str, Any]:
        """The start, with the layer mapping of `arch` when given."""
        from nasbert_deploy.model.etd import describe_map

        out: dict[str, Any] = {"init": self.init, "space": self.space.name, "space_hash": self.space.space_hash(),
                               "encoder": str(self.encoder.path), "importance": self.importance.method,
                               "importance_texts": self.importance.texts}
        if arch is not None:
            out["layer_map"] = describe_map(self.report(arch))
        return out


def sample_texts(texts: Sequence[str], rows: int, seed: int) -> list[str]:
    """A seeded sample of at most `rows` non-empty texts, in a fixed order."""
    pool = [t for t in texts if t.strip()]
    return random.Random(seed).sample(pool, min(rows, len(pool)))


def importance_key(encoder_path: Path, method: str, texts: Sequence[str], seed: int) -> str:
    """What an importance cache must agree on: the encoder, the method, the exact sample and the seed."""
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()
    blob = json.dumps({"encoder": str(encoder_path), "method": method, "texts": digest, "seed": seed}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_importance(path: Path, key: str) -> Importance | None:
    """The importance saved at `path` for `key`; None when absent, of another key, or damaged (then recomputed)."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("key") != key:
                return None
            return Importance(f.get_tensor("heads"), f.get_tensor("neurons"), f.get_tensor("hidden"), meta["method"],
                              int(meta["texts"]))
    except Exception:  # a damaged cache is recomputed, not an error (as the teacher-logit caches)
        return None


def write_importance(path: Path, importance: Importance, key: str) -> None:
    from safetensors.torch import save_file

    tensors = {"heads": importance.heads.contiguous(), "neurons": importance.neurons.contiguous(),
               "hidden": importance.hidden.contiguous()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"key": key, "method": importance.method, "texts": str(importance.texts)})


def search_importance(encoder: Any, encoder_path: Path, texts: Sequence[str], init: str, seed: int, state_dir: Path,
                      note: Note) -> Importance:
    """The encoder's importance for `init` on a sample of `texts`: read from `state_dir` when this search already
    scored it, else scored now (once per search) and saved there."""
    from nasbert_deploy.model.importance import importance_scores

    method = init.removeprefix("etd-")
    sample = sample_texts(texts, IMPORTANCE_ROWS, seed) if method == "impt" else []
    key = importance_key(encoder_path, method, sample, seed)
    path = state_dir / IMPORTANCE_FILE
    cached = read_importance(path, key)
    if cached is not None:
        note(f"importance of the encoder's units ({init}): reused from {path}")
        return cached
    imp = importance_scores(encoder.model, encoder.tokenizer, sample, method, seed=seed)
    state_dir.mkdir(parents=True, exist_ok=True)
    write_importance(path, imp, key)
    where = f"scored on {len(sample)} task texts" if method == "impt" else "random (seeded)"
    note(f"importance of the encoder's units ({init}): {where}, saved to {path}")
    return imp


def load_start(init: str, supernet_dir: Path | None, space: SearchSpace, encoder_path: Path | None,
               texts: Sequence[str], seed: int, state_dir: Path, note: Note) -> SupernetStart | ExtractedStart:
    """The start of every student of a search (checked by `request.prepare`): the supernet at `supernet_dir`, or the
    encoder at `encoder_path` with its importance (ETD; `texts`: the task's training texts)."""
    if init == "supernet":
        from nasbert_deploy.supernet.network import Supernet

        assert supernet_dir is not None
        net, _ = Supernet.load(supernet_dir)
        net.eval()
        return SupernetStart(net, supernet_dir)
    from nasbert_deploy.teacher import load_teacher

    assert encoder_path is not None
    encoder = load_teacher(encoder_path)
    imp = search_importance(encoder, encoder_path, texts, init, seed, state_dir, note)
    return ExtractedStart(space, encoder, imp, init)
