"""The NAS-BERT search space: operations, architectures, and their sizes.

Pure Python (no torch), so the CLI and the search stay fast to import.

Arch string form, one block per `|`, hidden size then the layer operations:

    128:mha,ffn,sep3,ffn,id,id|192:mha,ffn,mha,ffn,sep5,ffn|...

Identities (`id`) stand only at the end of a block, and a block has at least one real layer.
"""

from nasbert_deploy.space.arch import IDENTITY, OP_KINDS, Arch, BlockArch, Op
from nasbert_deploy.space.searchspace import (
    MINILM,
    MINILM_WIDE,
    SPACES,
    STANDARD,
    TINY,
    SearchSpace,
    format_params,
    get_space,
    parse_count,
)

__all__ = [
    "IDENTITY",
    "MINILM",
    "MINILM_WIDE",
    "OP_KINDS",
    "SPACES",
    "STANDARD",
    "TINY",
    "Arch",
    "BlockArch",
    "Op",
    "SearchSpace",
    "format_params",
    "get_space",
    "parse_count",
]
