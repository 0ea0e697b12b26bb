from __future__ import annotations

import random

import pytest
from torch import nn

from nasbert_deploy.errors import ArchError
from nasbert_deploy.model.memory import (
    MIB,
    block_activation_bytes,
    estimate_memory,
    fixed_activation_bytes,
    op_activation_bytes,
    peak_activation_bytes,
    weight_bytes,
)
from nasbert_deploy.model.modeling import NasBertConfig, NasBertModel
from nasbert_deploy.space import STANDARD, TINY, Op


@pytest.mark.parametrize("space", [TINY, STANDARD], ids=lambda s: s.name)
def test_float_weights_are_params_times_width(space):
    rng = random.Random(0)
    for _ in range(20):
        arch = space.random_arch(rng)
        assert weight_bytes(space, arch, "fp32") == 4 * space.params(arch)
        assert weight_bytes(space, arch, "fp16") == 2 * space.params(arch)


def test_int8_weights_match_the_torch_model():
    rng = random.Random(1)
    for _ in range(5):
        arch = TINY.random_arch(rng)
        model = NasBertModel(NasBertConfig.from_arch(arch, TINY))
        matrices = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
        expected = sum(p.numel() * (1 if id(p) in matrices else 4) for p in model.parameters())
        assert weight_bytes(TINY, arch, "int8") == expected
        # int4 (KDLSQ 4-bit): packed Linear weights + a float scale per output channel, the word table packed with
        # a scale per row, everything else float
        word = model.get_input_embeddings().weight
        lin = [m for m in model.modules() if isinstance(m, nn.Linear)]
        rest = sum(p.numel() for p in model.parameters() if id(p) not in matrices and p is not word)
        expected4 = (sum((m.weight.numel() + 1) // 2 + 4 * m.out_features for m in lin) + 4 * rest
                     + (word.numel() + 1) // 2 + 4 * word.shape[0])
        assert weight_bytes(TINY, arch, "int4") == expected4


def test_activation_formulas_by_hand():
    b, t = 2, 16
    # MHA at 64 (4 heads): x, q, k, v (4*b*t*h) + scores and probabilities (2*b*H*t*t), fp32
    assert op_activation_bytes(TINY, Op("mha"), 64, b, t) == 4 * (4 * b * t * 64 + 2 * b * 4 * t * t) == 49152
    assert op_activation_bytes(TINY, Op("ffn"), 32, b, t) == 4 * (b * t * 32 + 2 * b * t * 128)
    assert op_activation_bytes(TINY, Op("sep", 3), 32, b, t, "fp16") == 2 * 3 * b * t * 32
    assert op_activation_bytes(TINY, Op("id"), 32, b, t) == 4 * b * t * 32
    with pytest.raises(ArchError, match="valid: fp32, fp16, int8, int4"):
        op_activation_bytes(TINY, Op("id"), 32, b, t, "int2")


def test_peak_is_a_max_not_a_sum():
    arch = TINY.parse("64:mha,ffn|32:sep3,id")
    b, t = 1, 64
    blocks = [block_activation_bytes(TINY, blk, b, t) for blk in arch.blocks]
    fixed = fixed_activation_bytes(TINY, arch.hiddens, b, t)
    mha = op_activation_bytes(TINY, Op("mha"), 64, b, t)
    assert blocks[0] == max(mha, op_activation_bytes(TINY, Op("ffn"), 64, b, t))
    assert peak_activation_bytes(TINY, arch, b, t) == max(*blocks, fixed) < sum(blocks) + fixed
    est = estimate_memory(TINY, arch, b, t)
    assert est.total_mb * MIB == weight_bytes(TINY, arch) + max(*blocks, fixed)


def test_attention_scores_grow_quadratically():
    a = op_activation_bytes(STANDARD, Op("mha"), 256, 1, 128)
    c = op_activation_bytes(STANDARD, Op("mha"), 256, 1, 512)
    linear = 4 * 4 * 256
    assert (c - 512 * linear) == 16 * (a - 128 * linear)
