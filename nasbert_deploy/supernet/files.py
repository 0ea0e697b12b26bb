"""The files of a supernet folder: its description (`supernet.json`) and its weights, one safetensors file or,
above `MAX_FILE_BYTES`, several (`supernet-00001-of-0000N.safetensors`, listed in the description's
`weight_files`). Light to import (no torch): `default` and `network` both use it.
"""

from __future__ import annotations

import re
from pathlib import Path

from nasbert_deploy.errors import CheckpointError

SUPERNET_FILES = ("supernet.json", "supernet.safetensors")
# Weights larger than this are split into `supernet-00001-of-0000N.safetensors` files, listed in supernet.json's
# "weight_files", so no shipped file passes 50 MB (package indexes and git hosts warn or refuse above that).
MAX_FILE_BYTES = 48 * 2**20
SHARD_NAME = re.compile(r"supernet-\d{5}-of-\d{5}\.safetensors")


def listed_weight_files(directory: Path) -> list[str]:
    """The weight file names a supernet folder's description lists (`weight_files` of a split checkpoint), else
    the one `supernet.safetensors`; `CheckpointError` for a malformed list. The description must exist."""
    from nasbert_deploy.fileio import read_input_json

    meta = read_input_json(directory / SUPERNET_FILES[0], "supernet description", CheckpointError)
    names = meta.get("weight_files", [SUPERNET_FILES[1]]) if isinstance(meta, dict) else [SUPERNET_FILES[1]]
    if names != [SUPERNET_FILES[1]] and (
        not isinstance(names, list) or not names or not all(isinstance(n, str) and SHARD_NAME.fullmatch(n) for n in names)
    ):
        raise CheckpointError(
            f"{directory / SUPERNET_FILES[0]}: 'weight_files' must list files named like supernet-00001-of-00002.safetensors"
        )
    return names


def missing_files(directory: Path) -> list[str]:
    """Files a trained supernet folder needs and `directory` lacks: its description, then the weight files."""
    if not (directory / SUPERNET_FILES[0]).is_file():
        return [f for f in SUPERNET_FILES if not (directory / f).is_file()]
    return [n for n in listed_weight_files(directory) if not (directory / n).is_file()]


