from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nasbert_deploy.errors import ArchError, SpaceError
from nasbert_deploy.space import STANDARD, TINY, Arch, BlockArch, Op, SearchSpace, get_space, parse_count


def test_standard_block_count_is_97650():
    assert STANDARD.block_count() == 97_650
    assert STANDARD.size() == 97_650**4


def test_enumeration_matches_count_on_small_space():
    sp = SearchSpace(name="s", num_blocks=1, layers_per_block=3, hidden_sizes=(64, 128), conv_kernels=(3,), head_dim=64)
    blocks = list(sp.enumerate_blocks())
    assert len(blocks) == len(set(blocks)) == sp.block_count() == 2 * (3 + 9 + 27)
    for b in blocks:
        sp.validate_block(b)


def test_enumerate_whole_tiny_space():
    archs = list(TINY.enumerate())
    assert len(archs) == TINY.size() == (2 * (4 + 16)) ** 2


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=2**32 - 1), st.sampled_from([STANDARD, TINY]))
def test_string_and_dict_round_trip(seed, space):
    arch = space.random_arch(random.Random(seed))
    text = str(arch)
    assert space.parse(text) == arch
    assert Arch.from_dict(arch.to_dict()) == arch
    assert space.parse(text.replace(",", " , ")) == arch


_OK = "128:mha,ffn,id,id,id,id|128:mha,ffn,id,id,id,id|128:mha,ffn,id,id,id,id|"


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("128:mha", "has 1 block"),
        (_OK + "100:mha,id,id,id,id,id", "hidden 100"),
        (_OK + "128:conv,id,id,id,id,id", "'conv' is not an operation"),
        (_OK + "128:mha,id,ffn,id,id,id", "follows an identity"),
        (_OK + "128:id,id,id,id,id,id", "all identity"),
        (_OK + "128:mha,id", "has 2 layers"),
        (_OK + "128:sep9,id,id,id,id,id", "not in this space"),
        (_OK + "abc:mha,id,id,id,id,id", "not an integer"),
    ],
)
def test_bad_arch_strings(text, fragment):
    with pytest.raises(ArchError, match=fragment):
        STANDARD.parse(text)


def test_space_validation_and_lookup():
    with pytest.raises(SpaceError, match="multiple of head_dim"):
        SearchSpace(hidden_sizes=(100,))
    with pytest.raises(SpaceError, match="valid: standard, tiny"):
        get_space("nope")
    assert SearchSpace.from_dict(STANDARD.to_dict()) == STANDARD
    assert STANDARD.space_hash() != TINY.space_hash()
    assert SearchSpace.from_dict({**STANDARD.to_dict(), "name": "renamed"}).space_hash() == STANDARD.space_hash()


def test_the_four_block_minilm_space_differs_from_minilm_wide_only_in_depth():
    from nasbert_deploy.layermap.maps import heuristic_maps
    from nasbert_deploy.teacher import split_layers

    wide, deep = get_space("minilm-wide"), get_space("minilm-wide4")
    assert deep.num_blocks == 4 and {**deep.to_dict(), "name": "", "num_blocks": 3} == {**wide.to_dict(), "name": ""}
    arch = deep.parse("|".join(["256:mha,ffn,id,id"] * 4))
    assert len(arch.blocks) == 4 and deep.space_hash() != wide.space_hash()
    assert split_layers(6, 4) == [2, 4, 5, 6]
    # MiniLM-L6's 6 layers over 4 blocks: the layer-map heuristics are three different maps
    maps = heuristic_maps(4, 6)
    assert len({tuple(m) for m in maps.values()}) == 3, maps


def test_op_params_formulas():
    h = 128
    assert STANDARD.op_params(Op("mha"), h) == 4 * (h * h + h) + 2 * h
    assert STANDARD.op_params(Op("ffn"), h) == 8 * h * h + 5 * h + 2 * h
    assert STANDARD.op_params(Op("sep", 5), h) == 5 * h + h + h * h + h + 2 * h
    assert STANDARD.op_params(Op("id"), h) == 0


def test_flops_grow_quadratically_only_for_attention():
    f = STANDARD.op_flops
    assert f(Op("ffn"), 256, 256) == 2 * f(Op("ffn"), 256, 128)
    assert f(Op("mha"), 256, 256) > 2 * f(Op("mha"), 256, 128)
    a = STANDARD.parse("|".join(["256:mha,ffn,id,id,id,id"] * 4))
    assert STANDARD.flops(a, 128) == 4 * (f(Op("mha"), 256, 128) + f(Op("ffn"), 256, 128)) + 2 * 128 * (
        128 * 256 + 3 * 256 * 256 + 256 * 384
    )


def test_parse_count():
    assert parse_count("10M") == 10_000_000
    assert parse_count("2.5k") == 2_500
    assert parse_count("123") == 123
    with pytest.raises(ArchError):
        parse_count("ten")


def test_op_parse_and_block_depth():
    assert Op.parse("SEP7") == Op("sep", 7)
    b = BlockArch(128, (Op("mha"), Op("ffn"), Op("id")))
    assert b.depth == 2 and str(b) == "128:mha,ffn,id"
