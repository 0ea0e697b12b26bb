"""Layer maps: one teacher layer index per student block (0..L; 0 = no loss on that block's output; the last entry,
1..L, is the layer the student's final output regresses), as `DistillConfig.layer_map` takes them.

The paper's heuristics (Jiao et al. 2020, Sec. 3) for N blocks and L teacher layers:
- uniform: the teacher's layers cut into N even groups, each block regresses the end of its group
  (`teacher.split_layers`, the split `distill` uses without a map; e.g. 6 layers, 3 blocks -> 2,4,6);
- last-layers: the teacher's last N layers (4,5,6);
- first-layers: the teacher's first N layers (1,2,3).
Random maps for the genetic search are monotone (non-decreasing, every block supervised) or free (any layer
0..L per inner block, non-monotone allowed).

A map is written `3,5,6` on the command line; `read_layer_map` also reads the result file of `layer-map`.
"""

from __future__ import annotations

import math
import random
import re
from pathlib import Path

from nasbert_deploy.errors import LayerMapError
from nasbert_deploy.teacher import split_layers

LayerMap = tuple[int, ...]
HEURISTICS: tuple[str, ...] = ("uniform", "last-layers", "first-layers")
INLINE = re.compile(r"^\s*\d+(\s*,\s*\d+)*\s*$")
MAP_HINT = "give a map inline (3,5,6) or the JSON file `nasbert-deploy layer-map` writes (its layer_map), or a JSON list"


def uniform_map(num_blocks: int, num_layers: int) -> LayerMap:
    """Block i regresses the end of its group of the teacher's layers (`split_layers`; with fewer layers than blocks,
    block i takes layer ceil(i * L / N), so neighbours may share one)."""
    if num_layers >= num_blocks:
        return tuple(split_layers(num_layers, num_blocks))
    return tuple(math.ceil((i + 1) * num_layers / num_blocks) for i in range(num_blocks))


def last_layers_map(num_blocks: int, num_layers: int) -> LayerMap:
    """The teacher's last `num_blocks` layers, in order (layer 1 repeated when the teacher has fewer layers)."""
    return tuple(max(1, num_layers - num_blocks + 1 + i) for i in range(num_blocks))


def first_layers_map(num_blocks: int, num_layers: int) -> LayerMap:
    """The teacher's first `num_blocks` layers, in order (the last layer repeated when the teacher has fewer)."""
    return tuple(min(num_layers, i + 1) for i in range(num_blocks))


def heuristic_maps(num_blocks: int, num_layers: int) -> dict[str, LayerMap]:
    """The paper's three heuristics by name (`HEURISTICS` order)."""
    return {
        "uniform": uniform_map(num_blocks, num_layers),
        "last-layers": last_layers_map(num_blocks, num_layers),
        "first-layers": first_layers_map(num_blocks, num_layers),
    }


def space_size(num_blocks: int, num_layers: int) -> int:
    """How many distinct maps exist: (L + 1) choices per inner block, L for the last."""
    return (num_layers + 1) ** (num_blocks - 1) * num_layers


def random_monotone_map(num_blocks: int, num_layers: int, rng: random.Random) -> LayerMap:
    """Every block supervised, teacher layers non-decreasing from the first block to the last."""
    return tuple(sorted(rng.choices(range(1, num_layers + 1), k=num_blocks)))


def random_map(num_blocks: int, num_layers: int, rng: random.Random) -> LayerMap:
    """Any valid map: each inner block 0..L, the last 1..L (non-monotone ones included)."""
    return tuple(rng.randint(0, num_layers) for _ in range(num_blocks - 1)) + (rng.randint(1, num_layers),)


def is_monotone(layer_map: LayerMap) -> bool:
    """Whether the supervised blocks' teacher layers never decrease."""
    used = [e for e in layer_map if e]
    return all(a <= b for a, b in zip(used, used[1:]))


def _entries(obj: object, where: str) -> LayerMap:
    if isinstance(obj, dict):
        obj = obj.get("layer_map")
    if not isinstance(obj, list) or not obj or not all(isinstance(e, int) and not isinstance(e, bool) for e in obj):
        raise LayerMapError(f"{where} holds no layer map (a non-empty list of integers); {MAP_HINT}")
    return tuple(obj)


def read_layer_map(value: str | Path) -> LayerMap:
    """`--layer-map VALUE`: a file (the `layer-map` result, whose `layer_map` is used, or a JSON list), else an
    inline list `3,5,6`. Checked against a student and teacher later (`teacher.check_layer_map`)."""
    from nasbert_deploy.fileio import read_input_json

    text = str(value)
    p = Path(text)
    if INLINE.match(text) and not p.exists():
        return tuple(int(e) for e in text.split(","))
    if not p.exists() and "," in text:
        raise LayerMapError(f"--layer-map {text!r} is neither a file nor a list of layer indices; {MAP_HINT}")
    return _entries(read_input_json(p, "layer map", LayerMapError, MAP_HINT), f"layer map {p}")


def layer_map_for(value: str, arch: str | None, from_export: Path | None, teacher: Path | None) -> tuple[int, ...]:
    """`--layer-map`, read and checked against the student's blocks and the teacher's layers before any work."""
    from nasbert_deploy.errors import CheckpointError
    from nasbert_deploy.teacher import check_layer_map, read_model_config, teacher_layers

    if from_export is not None:
        blocks = read_model_config(from_export, "--from-export", CheckpointError).get("arch")
    else:
        blocks = arch
    if not isinstance(blocks, str) or not blocks:
        raise LayerMapError("--layer-map needs the student's blocks: give --arch, or a NAS-BERT --from-export folder")
    return check_layer_map(read_layer_map(value), blocks.count("|") + 1, teacher_layers(teacher, nasbert=True))
