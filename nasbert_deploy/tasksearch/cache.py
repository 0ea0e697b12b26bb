"""`search-task --cache FILE`: the proxy-result cache kept outside the search's folder, so searches of the same proxy
setting share their scores (`loop.ProxySetup` reads and writes it; `{"proxy_key", "proxy", "archs"}`)."""

from __future__ import annotations

import json
from pathlib import Path

from nasbert_deploy.errors import OutputError
from nasbert_deploy.fileio import check_output


def check_cache(path: Path) -> None:
    """`--cache`: a file path that can be written and, if it exists, holds a proxy cache a search wrote (it is read,
    then replaced atomically); `OutputError` in one line otherwise."""
    check_output(path, "file", True, "--cache")
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = None
        if not (isinstance(data, dict) and isinstance(data.get("archs"), dict)):
            raise OutputError(f"--cache {path} is not a proxy cache of search-task (unreadable, damaged or another "
                              "file); give a new path or a cache a search wrote")
