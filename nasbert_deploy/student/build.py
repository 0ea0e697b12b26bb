"""The student a distillation trains: a standalone `NasBertModel` plus its training-only block projections.

`build_student` makes it from an architecture (weights inherited from a supernet, `Supernet.extract`, or random)
or from an exported NAS-BERT folder; `student.extraction` makes one from the teacher itself (ETD).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nasbert_deploy.errors import CheckpointError
from nasbert_deploy.model.modeling import NasBertModel
from nasbert_deploy.student import INITS


@dataclass
class Student:
    """A student model plus its training-only block projections (one `Linear(h_i, T)` per inner boundary)."""

    model: NasBertModel
    projections: nn.ModuleList
    init: str
    extraction: dict[str, Any] = field(default_factory=dict)  # what came from which teacher unit (ETD starts)

    def parameters(self) -> list[nn.Parameter]:
        return list(self.model.parameters()) + list(self.projections.parameters())

    def state(self) -> dict[str, torch.Tensor]:
        s = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        s.update({f"proj.{k}": v for k, v in self.projections.state_dict().items()})
        return s

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("model.")})
        self.projections.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("proj.")})


def make_student(model: NasBertModel, supernet: Any = None, init: str = "supernet") -> Student:
    """Wrap `model`; projections copy the supernet's `out_maps` when a supernet is given."""
    arch = model.config.arch_obj
    T = model.config.search_space.output_dim
    projections = nn.ModuleList(nn.Linear(b.hidden, T) for b in arch.blocks[:-1])
    if supernet is not None:
        with torch.no_grad():
            for i, b in enumerate(arch.blocks[:-1]):
                projections[i].load_state_dict(supernet.out_maps[i][f"h{b.hidden}"].state_dict())
    return Student(model, projections, init)


def build_student(
    arch: str | None = None,
    from_export: str | Path | None = None,
    supernet_dir: str | Path | None = None,
    init: str = "supernet",
    space: Any = None,
) -> Student:
    """The student to distil: `arch` initialised from a supernet (`init='supernet'`; the shipped default
    supernet when `supernet_dir` is None) or randomly (`init='random'`, in `space`), or an exported
    NAS-BERT HF folder (`from_export`), or a BERT-family encoder folder there (e.g. `truncate`'s
    truncated teacher), converted exactly into NAS-BERT form (`init` 'encoder')."""
    from nasbert_deploy.model.modeling import NasBertConfig
    from nasbert_deploy.space import SearchSpace
    from nasbert_deploy.supernet.network import Supernet, read_meta

    if (arch is None) == (from_export is None):
        raise CheckpointError("give exactly one of an architecture (--arch) or an exported model folder (--from-export)")
    if from_export is not None:
        from transformers import AutoModel

        from nasbert_deploy.teacher import read_model_config

        p = Path(from_export)
        if read_model_config(p, "--from-export", CheckpointError)["model_type"] != "nasbert":
            return _from_encoder(p)
        try:
            model = AutoModel.from_pretrained(str(p), local_files_only=True)
        except Exception as exc:  # a damaged folder: transformers raises many kinds; the user needs one line
            raise CheckpointError(f"cannot load the exported model in {p}: {type(exc).__name__}: {exc}") from exc
        if not isinstance(model, NasBertModel):
            raise CheckpointError(f"{p} holds a {type(model).__name__}, not a NAS-BERT encoder (model_type 'nasbert')")
        return make_student(model, None, "export")
    if init == "random":
        if space is None:
            raise CheckpointError("random initialisation needs a search space")
        space.parse(str(arch))  # ArchError before any weights are made
        torch.manual_seed(0)
        return make_student(NasBertModel(NasBertConfig.from_arch(str(arch), space)), None, "random")
    if init != "supernet":
        raise CheckpointError(f"unknown initialisation {init!r}; valid: {', '.join(INITS)}")
    try:
        from nasbert_deploy.supernet.default import resolve_supernet_dir
    except ImportError:
        raise CheckpointError("no default supernet is installed; pass --supernet DIR or --init random") from None
    folder = resolve_supernet_dir(supernet_dir)
    SearchSpace.from_dict(read_meta(folder)["space"]).parse(str(arch))  # ArchError before the weights are read
    net, _ = Supernet.load(folder)
    return make_student(net.extract(str(arch)), net, "supernet")


def _from_encoder(folder: Path) -> Student:
    """A BERT-family encoder (the truncated-teacher baseline, any local HF encoder) as a NAS-BERT student: the same
    function (`convert_teacher`), so it distils, exports and is timed like every other student."""
    from nasbert_deploy.errors import TeacherError
    from nasbert_deploy.model.etd import convert_teacher_folder

    try:
        model = convert_teacher_folder(folder)
    except TeacherError as exc:
        raise CheckpointError(f"--from-export {folder}: {exc}; pass a folder made by `export`, `distill` or `truncate`") from None
    return make_student(model, None, "encoder")
