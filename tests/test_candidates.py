from __future__ import annotations

import json
import random

import pytest

from nasbert_deploy.errors import ArchError, TableError
from nasbert_deploy.space import STANDARD, TINY, BlockArch, Op
from nasbert_deploy.supernet.candidates import SCHEMA, Candidate, CandidateTable, block_params, parse_block


def _table(space=TINY, n=4, seed=0) -> CandidateTable:
    rng = random.Random(seed)
    losses = []
    for _ in range(space.num_blocks):
        blocks = {space.random_block(rng): round(rng.uniform(0.01, 1.0), 6) for _ in range(n)}
        losses.append(blocks)
    return CandidateTable.from_losses(space, losses, {"teacher": "tiny-test", "steps": 3})


def test_parse_block_round_trip_every_block():
    for b in TINY.enumerate_blocks():
        assert parse_block(TINY, str(b)) == b


@pytest.mark.parametrize(
    "text,fragment",
    [("mha,ffn", "lacks 'HIDDEN:'"), ("x:mha,ffn", "not an integer"), ("32:mha,foo", "'foo' is not an operation"),
     ("48:mha,ffn", "not in [32, 64]"), ("32:id,mha", "follows an identity"), ("32:mha", "has 1 layers"),
     ("32:sep7,id", "not in this space")],
)
def test_parse_block_errors(text, fragment):
    with pytest.raises(ArchError, match=None) as info:
        parse_block(TINY, text)
    assert fragment in str(info.value)


def test_block_params_is_sum_of_ops():
    b = BlockArch(128, (Op("mha"), Op("ffn"), Op("sep", 3), Op("id"), Op("id"), Op("id")))
    h = 128
    expected = (4 * (h * h + h) + 2 * h) + (2 * 4 * h * h + 4 * h + h + 2 * h) + (3 * h + h + h * h + h + 2 * h)
    assert block_params(STANDARD, b) == expected == 215_552


def test_save_load_round_trip(tmp_path):
    t = _table()
    p = t.save(tmp_path / "c.json")
    data = json.loads(p.read_text())
    assert data["schema"] == SCHEMA and data["version"] == 1 and data["space_hash"] == TINY.space_hash()
    back = CandidateTable.load(p, TINY)
    assert back.blocks == t.blocks and back.metadata == {"teacher": "tiny-test", "steps": 3}
    assert back.space.space_hash() == TINY.space_hash()
    assert back.size() == len(t.blocks[0]) * len(t.blocks[1])


def test_load_rejects_other_space(tmp_path):
    p = _table().save(tmp_path / "c.json")
    with pytest.raises(TableError, match="made for space 'tiny'"):
        CandidateTable.load(p, STANDARD)


def _corrupt(tmp_path, mutate):
    data = _table().to_dict()
    mutate(data)
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(data))
    with pytest.raises(TableError) as info:
        CandidateTable.load(p)
    assert str(p) in str(info.value)
    return str(info.value)


def test_load_errors(tmp_path):
    assert "does not exist" in str(pytest.raises(TableError, CandidateTable.load, tmp_path / "nope.json").value)
    (tmp_path / "x.json").write_text("{not json")
    assert "not valid JSON" in str(pytest.raises(TableError, CandidateTable.load, tmp_path / "x.json").value)
    assert "schema" in _corrupt(tmp_path, lambda d: d.update(schema="other"))
    assert "version 2" in _corrupt(tmp_path, lambda d: d.update(version=2))
    assert "space_hash" in _corrupt(tmp_path, lambda d: d.update(space_hash="0" * 16))
    assert "has 1 block list" in _corrupt(tmp_path, lambda d: d["blocks"].pop())
    assert "no candidates" in _corrupt(tmp_path, lambda d: d["blocks"][1].clear())
    assert "the space gives" in _corrupt(tmp_path, lambda d: d["blocks"][0][0].update(params=5))
    assert "finite number" in _corrupt(tmp_path, lambda d: d["blocks"][0][0].update(loss=-1.0))
    assert "not a number" in _corrupt(tmp_path, lambda d: d["blocks"][0][0].update(loss="low"))
    assert "needs 'arch'" in _corrupt(tmp_path, lambda d: d["blocks"][0][0].pop("loss"))
    assert "follows an identity" in _corrupt(tmp_path, lambda d: d["blocks"][0][0].update(arch="32:id,mha"))
    assert "twice" in _corrupt(tmp_path, lambda d: d["blocks"][0].append(dict(d["blocks"][0][0])))


def test_constructor_validates():
    b = BlockArch(32, (Op("mha"), Op("id")))
    with pytest.raises(TableError, match="the space gives"):
        CandidateTable(TINY, [[Candidate(b, 0.1, 1)], [Candidate(b, 0.1, block_params(TINY, b))]])
