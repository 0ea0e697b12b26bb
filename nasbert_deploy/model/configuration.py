"""`NasBertConfig`: the transformers configuration of a standalone model (its arch string and search space).

Kept apart from `modeling` (torch) so that the export can assemble a self-contained
`configuration_nasbert.py` from `errors`, `space` and this module (see `model.remote_code`).
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

from nasbert_deploy.space import Arch, SearchSpace


class NasBertConfig(PretrainedConfig):
    model_type = "nasbert"

    def __init__(
        self,
        arch: str = "",
        space: dict[str, Any] | None = None,
        hidden_dropout_prob: float = 0.0,
        classifier_dropout: float = 0.1,
        identity_projections: bool = False,
        **kwargs: Any,
    ) -> None:
        self.arch = arch
        # square projections (embedding, block boundaries, head) are no-ops, not Linears: a teacher converted
        # exactly (`etd.convert_teacher`), whose projections are identities that fine-tuning must not move
        self.identity_projections = bool(identity_projections)
        self.space = space or SearchSpace().to_dict()
        self.hidden_dropout_prob = hidden_dropout_prob
        self.classifier_dropout = classifier_dropout
        sp = SearchSpace.from_dict(self.space)
        # attributes other libraries (optimum, pipelines) look for
        kwargs.setdefault("vocab_size", sp.vocab_size)
        kwargs.setdefault("max_position_embeddings", sp.max_positions)
        kwargs.setdefault("type_vocab_size", sp.type_vocab_size)
        kwargs.setdefault("hidden_size", sp.output_dim)
        super().__init__(**kwargs)

    @property
    def search_space(self) -> SearchSpace:
        return SearchSpace.from_dict(self.space)

    @property
    def arch_obj(self) -> Arch:
        return self.search_space.parse(self.arch)

    @classmethod
    def from_arch(cls, arch: Arch | str, space: SearchSpace, **kwargs: Any) -> NasBertConfig:
        a = space.parse(arch) if isinstance(arch, str) else space.validate(arch)
        return cls(arch=str(a), space=space.to_dict(), **kwargs)
