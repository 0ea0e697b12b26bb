"""The weight-sharing supernet and `extract(arch)` to a standalone `NasBertModel`.

Weight sharing: **separate weights per (layer, hidden size, operation)**, as in NAS-BERT, rather
than slicing every width out of the largest matrix (HAT/OFA). Why: (1) block-wise distillation
already cuts the space into blocks that are trained independently, so the weights per block stay
small (about 8M parameters per layer for the standard space, ~195M in all, well within memory);
(2) sliced weights make narrow and wide candidates compete for the same leading rows, which is
known to distort the ranking between widths, and ranking is all the supernet is for; (3) every
candidate is then an ordinary module, so `extract` is a plain copy with no slicing logic.

Layout in the teacher's hidden size T (block-wise distillation, NAS-BERT 3.2.1):

    block n input (b, t, T) -> in_maps[n][h] (b, t, h) -> layers of block n at width h
      -> out_maps[n][h] (b, t, T)   compared with the teacher's block-n output

A whole path chains blocks through T. `extract` folds `out_map_n` and `in_map_{n+1}` into one
boundary Linear(h_n, h_{n+1}) (a product of two affine maps is affine), so the standalone model
computes exactly the supernet path's function with fewer operations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from nasbert_deploy.errors import CheckpointError
from nasbert_deploy.model.modeling import NasBertConfig, NasBertModel
from nasbert_deploy.model.ops import Embeddings, build_op
from nasbert_deploy.space import Arch, BlockArch, SearchSpace
from nasbert_deploy.supernet.files import MAX_FILE_BYTES, SUPERNET_FILES, listed_weight_files, missing_files

META_NAME, WEIGHTS_NAME = SUPERNET_FILES


def _key(hidden: int, op_name: str) -> str:
    return f"h{hidden}_{op_name}"


class Supernet(nn.Module):
    def __init__(self, space: SearchSpace, dropout: float = 0.0) -> None:
        super().__init__()
        self.space = space
        T = space.output_dim
        self.embeddings = Embeddings(space.vocab_size, space.max_positions, space.type_vocab_size, space.embed_dim)
        # the factorized embedding (width E) is mapped to the teacher's width T when they differ
        self.embed_adapter = nn.Linear(space.embed_dim, T) if space.embed_dim != T else None
        hs = space.hidden_sizes
        self.in_maps = nn.ModuleList(nn.ModuleDict({f"h{h}": nn.Linear(T, h) for h in hs}) for _ in range(space.num_blocks))
        self.out_maps = nn.ModuleList(nn.ModuleDict({f"h{h}": nn.Linear(h, T) for h in hs}) for _ in range(space.num_blocks))
        self.layers = nn.ModuleList(
            nn.ModuleList(
                nn.ModuleDict({_key(h, op.name): build_op(op, h, space, dropout) for h in hs for op in space.layer_ops})
                for _ in range(space.layers_per_block)
            )
            for _ in range(space.num_blocks)
        )

    # ---------------------------------------------------------------- forward
    def embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Student embedding in the teacher's width: (b, t) -> (b, t, T)."""
        x = self.embeddings(input_ids, token_type_ids)
        return self.embed_adapter(x) if self.embed_adapter is not None else x

    def block_params(self, index: int, block: BlockArch) -> list[nn.Parameter]:
        """The parameters one block path uses (maps included)."""
        mods: list[nn.Module] = [self.in_maps[index][f"h{block.hidden}"], self.out_maps[index][f"h{block.hidden}"]]
        mods += [self.layers[index][j][_key(block.hidden, op.name)] for j, op in enumerate(block.ops) if not op.is_identity]
        return [p for m in mods for p in m.parameters()]

    def forward_block(self, index: int, block: BlockArch, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """One block path: (b, t, T) teacher-width input -> (b, t, T) output to regress the teacher."""
        y = self.in_maps[index][f"h{block.hidden}"](x)
        for j, op in enumerate(block.ops):
            if not op.is_identity:
                y = self.layers[index][j][_key(block.hidden, op.name)](y, mask)
        return self.out_maps[index][f"h{block.hidden}"](y)

    def forward(self, arch: Arch, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The whole single path: (b, t) ids -> (b, t, T)."""
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        x = self.embed(input_ids)
        for i, block in enumerate(arch.blocks):
            x = self.forward_block(i, block, x, mask)
        return x

    # ---------------------------------------------------------------- extraction
    @torch.no_grad()
    def extract(self, arch: Arch | str, **config_kwargs: Any) -> NasBertModel:
        """Copy the path's weights into a standalone `NasBertModel` that computes the same function."""
        arch = self.space.parse(arch) if isinstance(arch, str) else self.space.validate(arch)
        model = NasBertModel(NasBertConfig.from_arch(arch, self.space, **config_kwargs)).eval()
        model.embeddings.load_state_dict(self.embeddings.state_dict())
        first_in = self.in_maps[0][f"h{arch.blocks[0].hidden}"]
        _copy_linear(model.embed_proj, _compose(first_in, self.embed_adapter))
        for i, block in enumerate(arch.blocks):
            for j, op in enumerate(block.ops):
                if not op.is_identity:
                    src = self.layers[i][j][_key(block.hidden, op.name)]
                    model.blocks[i].layers[j].load_state_dict(src.state_dict())
            if i + 1 < len(arch.blocks):
                out_i = self.out_maps[i][f"h{block.hidden}"]
                in_next = self.in_maps[i + 1][f"h{arch.blocks[i + 1].hidden}"]
                _copy_linear(model.boundaries[i], _compose(in_next, out_i))
        _copy_linear(model.head, _compose(self.out_maps[-1][f"h{arch.blocks[-1].hidden}"], None))
        return model

    # ---------------------------------------------------------------- checkpoints
    def save(
        self, directory: str | Path, metadata: dict[str, Any] | None = None, fp16: bool = False,
        max_file_bytes: int = MAX_FILE_BYTES,
    ) -> Path:
        """Write weights (safetensors; split into files of at most `max_file_bytes` when larger) and metadata
        (JSON) into `directory`. The description is written last and names the weight files, so a kill leaves
        the previous checkpoint readable; weight files it no longer names are removed after it."""
        from safetensors.torch import save_file

        from nasbert_deploy.fileio import atomic_path, write_json_atomic

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state = {k: (v.half() if fp16 and v.is_floating_point() else v).contiguous() for k, v in self.state_dict().items()}
        groups = _split(state, max_file_bytes)
        names = [WEIGHTS_NAME] if len(groups) == 1 else [f"supernet-{i:05d}-of-{len(groups):05d}.safetensors"
                                                         for i in range(1, len(groups) + 1)]  # fmt: skip
        for name, group in zip(names, groups):
            with atomic_path(d / name) as tmp:
                save_file(group, str(tmp))
        desc: dict[str, Any] = {"space": self.space.to_dict(), "metadata": metadata or {}}
        if len(names) > 1:
            desc["weight_files"] = names
        write_json_atomic(d / META_NAME, desc)
        for old in [d / WEIGHTS_NAME, *d.glob("supernet-*-of-*.safetensors")]:
            if old.name not in names and old.is_file():
                old.unlink()
        return d

    @classmethod
    def load(cls, directory: str | Path) -> tuple[Supernet, dict[str, Any]]:
        """Load a supernet written by `save`; returns (supernet, metadata)."""
        from safetensors.torch import load_file

        d = Path(directory)
        files = weight_files(d)
        meta = read_meta(d)
        space = SearchSpace.from_dict(meta["space"])
        raw: dict[str, torch.Tensor] = {}
        for f in files:
            try:
                raw.update(load_file(str(f)))
            except Exception as exc:  # safetensors raises its own error types for a damaged file
                raise CheckpointError(f"{f} is not a readable safetensors file ({exc}); train it again") from None
        net = cls(space)
        state = {k: v.float() for k, v in raw.items()}
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"{d} does not match its space: {len(missing)} missing and {len(unexpected)} unexpected tensors"
            )
        return net, meta.get("metadata", {})


def read_meta(directory: str | Path) -> dict[str, Any]:
    """The one loader of a supernet folder's description (`supernet.json`): an object with a `space` and a
    `metadata` object; `CheckpointError` for anything unreadable or malformed."""
    from nasbert_deploy.fileio import read_input_json

    path = Path(directory) / META_NAME
    meta = read_input_json(path, "supernet description", CheckpointError, hint="train a supernet with `supernet train`")
    if not isinstance(meta, dict) or not isinstance(meta.get("space"), dict) or not isinstance(meta.get("metadata", {}), dict):
        raise CheckpointError(f"{path} is malformed: needs a 'space' object and a 'metadata' object")
    return meta


def weight_files(directory: str | Path) -> list[Path]:
    """The weight files of a supernet folder (several for a split checkpoint); `CheckpointError` naming what is
    missing or malformed."""
    d = Path(directory)
    missing = missing_files(d)
    if missing:
        raise CheckpointError(f"{d} is not a supernet checkpoint (needs {', '.join(missing)})")
    return [d / n for n in listed_weight_files(d)]


def _split(state: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    """`state` cut, in order, into groups of at most `max_bytes` (a single larger tensor gets a group of its own)."""
    groups: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in state.items():
        n = v.numel() * v.element_size()
        if groups[-1] and size + n > max_bytes:
            groups.append({})
            size = 0
        groups[-1][k] = v
        size += n
    return groups


def _compose(outer: nn.Linear, inner: nn.Linear | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of outer(inner(x)), computed in float64 to keep the fold exact."""
    w_o, b_o = outer.weight.double(), outer.bias.double()
    if inner is None:
        return w_o, b_o
    w_i, b_i = inner.weight.double(), inner.bias.double()
    return w_o @ w_i, w_o @ b_i + b_o


def _copy_linear(dst: nn.Linear, wb: tuple[torch.Tensor, torch.Tensor]) -> None:
    dst.weight.copy_(wb[0].to(dst.weight.dtype))
    dst.bias.copy_(wb[1].to(dst.bias.dtype))
