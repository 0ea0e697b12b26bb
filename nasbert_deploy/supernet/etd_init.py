"""A supernet that starts from its teacher (Extract Then Distill for the whole weight-sharing network, #15).

Every candidate `mha` / `ffn` of block n, layer position j, width h is extracted from the teacher layer
position j maps to among the layers block n distils (`split_layers`; position j of p takes layer
`layers[j * len(layers) // p]`), keeping the teacher's most important heads, neurons and the h most
important residual dimensions `S(h)` (`model.importance`); `in_maps[n][h]` selects `S(h)` from the
teacher's width and `out_maps[n][h]` puts them back, so each block path starts as a slimmed copy of
the teacher's block. Convolutions keep their random start; the embeddings come from the teacher as
before (`teacher_cache.init_embeddings_from_teacher`).
"""

from __future__ import annotations

from typing import Any

import torch

from nasbert_deploy.errors import TeacherError
from nasbert_deploy.model.etd import choose_heads, copy_attention, copy_ffn, selection
from nasbert_deploy.model.importance import Importance, teacher_shape
from nasbert_deploy.space import SearchSpace
from nasbert_deploy.supernet.network import Supernet, _key
from nasbert_deploy.supernet.teacher_cache import init_embeddings_from_teacher
from nasbert_deploy.teacher import split_layers

SUPERNET_INITS = ("random", "etd-impt", "etd-rand")
SUPERNET_HINT = "use --init random or a space with the teacher's geometry (e.g. minilm-wide)"


def check_space_extractable(space: SearchSpace, teacher: Any, hint: str = SUPERNET_HINT) -> None:
    """TeacherError when some candidate of `space` cannot be extracted from the BERT-class `teacher` (the message
    ends with `hint`, what the user can do instead). Every architecture of a space that passes is extractable
    (`model.etd.check_extractable`): its checks are these, per block."""
    L, H, inner, D = teacher_shape(teacher)
    d, h = D // H, max(space.hidden_sizes)
    problems = []
    if space.output_dim != D:
        problems.append(f"output_dim {space.output_dim} is not the teacher's width {D}")
    if space.head_dim % d:
        problems.append(f"head_dim {space.head_dim} is not a multiple of the teacher's head size {d}")
    elif space.heads(h) * (space.head_dim // d) > H:
        problems.append(f"width {h} needs more heads than the teacher's {H}")
    if h > D or space.ffn_ratio * h > inner:
        problems.append(f"width {h} (FFN {space.ffn_ratio * h}) exceeds the teacher's {D} (FFN {inner})")
    if space.num_blocks > L:
        problems.append(f"{space.num_blocks} blocks cannot split the teacher's {L} layers")
    if problems:
        raise TeacherError(f"space {space.name!r} cannot start from the teacher: {'; '.join(problems)}; {hint}")


@torch.no_grad()
def init_supernet_from_teacher(net: Supernet, teacher: Any, importance: Importance) -> list[list[int]]:
    """Overwrite `net`'s maps and candidate ops with teacher extractions (module doc); returns, per block and
    layer position, the 1-based teacher layer it came from."""
    space = net.space
    check_space_extractable(space, teacher)
    L, H, _, D = teacher_shape(teacher)
    d, group = D // H, space.head_dim // (D // H)
    init_embeddings_from_teacher(net, teacher)
    order = importance.hidden_order()
    ends = split_layers(L, space.num_blocks)
    mapping = []
    for n, (start, end) in enumerate(zip([0, *ends[:-1]], ends)):
        layers = list(range(start, end))
        positions = [layers[j * len(layers) // space.layers_per_block] for j in range(space.layers_per_block)]
        mapping.append([t + 1 for t in positions])
        for h in space.hidden_sizes:
            s = sorted(order[:h])
            net.in_maps[n][f"h{h}"].weight.copy_(selection(s, list(range(D)), (h, D)))
            net.in_maps[n][f"h{h}"].bias.zero_()
            net.out_maps[n][f"h{h}"].weight.copy_(selection(list(range(D)), s, (D, h)))
            net.out_maps[n][f"h{h}"].bias.zero_()
            for j, t in enumerate(positions):
                layer = teacher.encoder.layer[t]
                heads = choose_heads(importance, t, space.heads(h), group)
                copy_attention(net.layers[n][j][_key(h, "mha")], layer, heads, d, s, group)
                copy_ffn(net.layers[n][j][_key(h, "ffn")], layer, importance.top(importance.neurons[t], space.ffn_ratio * h), s)
    return mapping
