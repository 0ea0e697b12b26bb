"""The `nasbert-deploy` command line: a thin shell over the library.

Each command group lives in `nasbert_deploy/commands/<name>.py` and exposes `register(app)`.
Any `NasBertDeployError` becomes one line on stderr and exit code 2; Ctrl-C exits 130.
"""

from __future__ import annotations

import importlib
from typing import Any

import typer
from typer.core import TyperGroup

from nasbert_deploy import __version__
from nasbert_deploy.errors import NasBertDeployError

COMMAND_MODULES = ["space_cmd", "profile_cmd", "supernet_cmd", "search_cmd", "export_cmd", "train_cmd"]


class _App(TyperGroup):
    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except NasBertDeployError as exc:
            from nasbert_deploy.cli.common import err_console

            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            from nasbert_deploy.cli.common import err_console

            err_console.print("interrupted (long-running commands resume when run again)")
            raise SystemExit(130) from None


app = typer.Typer(
    cls=_App,
    name="nasbert-deploy",
    help="NAS-BERT compression for deployment: search space, supernet, device profiles, search, export.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"nasbert-deploy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """NAS-BERT compression for deployment."""


for _name in COMMAND_MODULES:
    importlib.import_module(f"nasbert_deploy.cli.{_name}").register(app)


def main() -> None:
    app()
