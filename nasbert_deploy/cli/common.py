"""Helpers shared by the CLI command modules (light imports only)."""

from __future__ import annotations

from enum import Enum

from rich.console import Console

from nasbert_deploy.errors import NasBertDeployError

console = Console()
err_console = Console(stderr=True)


class SpaceName(str, Enum):
    standard = "standard"
    tiny = "tiny"


def fail(message: str) -> NasBertDeployError:
    """Build a user error to raise: the CLI prints it as one line and exits 2."""
    return NasBertDeployError(message)
