"""Where shipped data lives: `devices/` and `profiles/` at the repository top level.

In a source checkout (and an editable install) they are read from the checkout; a wheel carries
them as the packages `nasbert_deploy._devices` / `nasbert_deploy._profiles` (see pyproject.toml).
"""

from __future__ import annotations

from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent


def shipped_dir(kind: str) -> Path:
    """Directory of shipped `devices` or `profiles` data (may not exist for `profiles`)."""
    if kind not in ("devices", "profiles"):
        raise ValueError(kind)
    local = _ROOT / kind
    if local.is_dir():
        return local
    return Path(__file__).resolve().parent / f"_{kind}"
