"""The default supernet shipped with the package (`nasbert_deploy/data/supernet/`).

Trained by `nasbert-deploy supernet train` from the offline MiniLM-L6 teacher on the `minilm`
space (see docs/supernet.md for the exact command). Used whenever no `--supernet DIR` is given.
Light to import: torch is only imported by `load_default_supernet`.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nasbert_deploy.errors import CheckpointError
from nasbert_deploy.supernet.files import missing_files

if TYPE_CHECKING:
    from nasbert_deploy.supernet.network import Supernet

CANDIDATES_FILE = "candidates.json"
def default_supernet_dir() -> Path:
    """Folder of the shipped default supernet (may be absent in a build without it)."""
    return Path(str(resources.files("nasbert_deploy"))) / "data" / "supernet"


def resolve_supernet_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """`path`, or the shipped default when None; `CheckpointError` if it holds no trained supernet."""
    d = default_supernet_dir() if path is None else Path(path)
    missing = missing_files(d)
    if missing:
        if path is None:
            raise CheckpointError(
                f"the default supernet is not in this install ({d} lacks {', '.join(missing)}); "
                "train one with `nasbert-deploy supernet train --out DIR` and pass --supernet DIR"
            )
        raise CheckpointError(
            f"{d} is not a trained supernet (lacks {', '.join(missing)}); make one with `nasbert-deploy supernet train --out DIR`"
        )
    return d


def default_candidates_path() -> Path:
    """The default supernet's candidate table; `CheckpointError` if the default supernet is absent."""
    p = resolve_supernet_dir(None) / CANDIDATES_FILE
    if not p.is_file():
        raise CheckpointError(f"the default supernet at {p.parent} has no {CANDIDATES_FILE}")
    return p


def load_default_supernet() -> tuple[Supernet, dict[str, Any]]:
    """(supernet, metadata) of the shipped default; `CheckpointError` if absent."""
    from nasbert_deploy.supernet.network import Supernet

    return Supernet.load(resolve_supernet_dir(None))
