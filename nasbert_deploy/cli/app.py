"""The `nasbert-deploy` command line: a thin shell over the library.

One module-level `typer.Typer` per command group (`space_cmd`, `profile_cmd`, `supernet_cmd`,
`search_cmd`, `export_cmd`, `train_cmd`), mounted here. Every user error is one line on stderr and
exit code 2, whether click finds it while parsing (`click.UsageError`: unknown option, missing
argument, bad choice, out-of-range value) or the library does (`NasBertDeployError`); Ctrl-C exits 130.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, NoReturn

import typer

# typer 0.29 vendors click as `typer._click` (pinned <0.30 in pyproject.toml): its usage errors are these classes
from typer._click.exceptions import NoArgsIsHelpError, UsageError
from typer.core import TyperGroup
from typer.exceptions import Abort, Exit, TyperException

from nasbert_deploy import __version__
from nasbert_deploy.cli import (
    baseline_cmd,
    export_cmd,
    layermap_cmd,
    profile_cmd,
    prune_cmd,
    quantize_cmd,
    search_cmd,
    space_cmd,
    supernet_cmd,
    tasksearch_cmd,
    train_cmd,
)
from nasbert_deploy.errors import NasBertDeployError

# what `main` sets (each only if unset): the command line never fetches anything from a model hub
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
DEBUG_ENV = "NASBERT_DEPLOY_DEBUG"  # set to 1: an unexpected error shows its traceback
REPORT_TO = "the nasbert-deploy issue tracker"


def _error_line(message: str) -> NoReturn:
    from rich.markup import escape

    from nasbert_deploy.cli.common import err_console

    line = " ".join(message.split())  # one line, however the message was wrapped
    err_console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
    raise SystemExit(2)


def _usage_error(exc: UsageError) -> NoReturn:
    """click's usage errors (parsing, choices, ranges) as one line, with the command and where to look."""
    ctx = exc.ctx
    where = f"{ctx.command_path}: " if ctx is not None else ""
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    # typer validates values through pydantic, which prefixes a converter's own message with "Value error, "
    message = exc.format_message().replace("Value error, ", "")
    _error_line(f"{where}{message}{hint}")


def _os_error(exc: OSError) -> NoReturn:
    """The environment failed us (disk full, permissions, a name too long): one line, exit 2."""
    where = f" {exc.filename}" if exc.filename else ""
    _error_line(f"cannot use{where}: {exc.strerror or exc}")


def _bug(exc: BaseException) -> NoReturn:
    """Not the user's fault: one line saying it is a bug, where to report it and how to see the traceback; exit 1."""
    if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        raise exc
    from rich.markup import escape

    from nasbert_deploy.cli.common import err_console

    what = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
    err_console.print(f"[bold red]internal error (a bug in nasbert-deploy):[/] {escape(what)}; please report it to "
                      f"{REPORT_TO} with the command line; run again with {DEBUG_ENV}=1 for the traceback",
                      highlight=False, soft_wrap=True)
    raise SystemExit(1)


class _App(TyperGroup):
    """The root group: turns usage errors and library errors into one line and exit 2, once for all commands."""

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except NoArgsIsHelpError:
            raise  # `nasbert-deploy` alone shows the help
        except UsageError as exc:
            _usage_error(exc)
        except (TyperException, Exit, Abort):
            raise
        except NasBertDeployError as exc:
            _error_line(str(exc))
        except OSError as exc:
            _os_error(exc)
        except Exception as exc:
            _bug(exc)

    def invoke(self, ctx: Any) -> Any:
        from nasbert_deploy.cli.common import quiet_third_party

        try:
            with quiet_third_party():
                return super().invoke(ctx)
        except NoArgsIsHelpError:
            raise  # a group alone (`nasbert-deploy space`) shows its help
        except UsageError as exc:  # raised while parsing a subcommand's arguments
            _usage_error(exc)
        except NasBertDeployError as exc:
            _error_line(str(exc))
        except KeyboardInterrupt:
            from nasbert_deploy.cli.common import err_console

            err_console.print("interrupted (long-running commands resume when run again)")
            raise SystemExit(130) from None
        except (TyperException, Exit, Abort, BrokenPipeError):
            raise
        except OSError as exc:
            _os_error(exc)
        except Exception as exc:
            _bug(exc)


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
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
) -> None:
    """NAS-BERT compression for deployment."""


app.add_typer(space_cmd.space_app, name="space")
app.add_typer(space_cmd.arch_app, name="arch")
app.add_typer(profile_cmd.app)  # devices, profile, predict
app.add_typer(supernet_cmd.app, name="supernet")
app.add_typer(search_cmd.app)  # search
app.add_typer(export_cmd.app)  # export
app.add_typer(train_cmd.app)  # distill, finetune, finetune-teacher, evaluate
app.add_typer(prune_cmd.app)  # prune
app.add_typer(quantize_cmd.app)  # quantize
app.add_typer(tasksearch_cmd.app)  # search-task
app.add_typer(layermap_cmd.app)  # layer-map
app.add_typer(baseline_cmd.app)  # truncate


def main() -> None:
    """Entry point of the installed `nasbert-deploy` command: offline, then the app."""
    for key, value in OFFLINE.items():
        os.environ.setdefault(key, value)
    try:
        app()
    except BrokenPipeError:  # `nasbert-deploy ... | head`: the reader left; no traceback at exit either
        import sys

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
