"""What the command modules share: consoles, the choices (each built from the registry it names), common options.

Light imports only: `nasbert-deploy --help` must not import torch, onnxruntime or openvino.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from enum import Enum
from typing import Annotated, Any

import typer
from rich.console import Console

from nasbert_deploy.devices import PRECISIONS, DeviceSpec
from nasbert_deploy.errors import DeviceError, NasBertDeployError
from nasbert_deploy.model.distributed import TRAIN_DEVICES
from nasbert_deploy.runtimes.base import RUNTIMES
from nasbert_deploy.space import SPACES
from nasbert_deploy.student import INITS, STUDENT_INITS

console = Console()
err_console = Console(stderr=True)


def choice(name: str, values: Iterable[str]) -> type[Enum]:
    """A `str` Enum with one member per registry entry (typer shows and checks them as choices)."""
    return Enum(name, {v: v for v in values}, type=str)  # type: ignore[return-value]


SpaceName = choice("SpaceName", SPACES)
RuntimeName = choice("RuntimeName", RUNTIMES)
EvalRuntimeName = choice("EvalRuntimeName", (*RUNTIMES, "onnxruntime-int8", "openvino-int8"))  # + an export's INT8 files
PrecisionName = choice("PrecisionName", PRECISIONS)
InitName = choice("InitName", INITS)
StudentInitName = choice("StudentInitName", STUDENT_INITS)
TrainDevice = choice("TrainDevice", TRAIN_DEVICES)


def device_spec(value: str) -> DeviceSpec:
    """`--device NAME|FILE.toml`: a shipped spec (`devices.list_devices()`) or a spec file; checked while parsing."""
    from nasbert_deploy.devices import load_device

    try:
        return load_device(value)
    except DeviceError as exc:
        raise ValueError(str(exc)) from None  # click reports it as a bad --device value (exit 2)


DEVICE_HELP = "Device spec: a name from `nasbert-deploy devices` or a path to a .toml spec"
DeviceOpt = Annotated[DeviceSpec | None, typer.Option("--device", parser=device_spec, metavar="NAME|FILE", help=DEVICE_HELP)]
DevicesOpt = Annotated[
    list[DeviceSpec] | None,
    typer.Option("--device", parser=device_spec, metavar="NAME|FILE",
                 help=DEVICE_HELP + "; repeat it for one model that meets a --max-latency-ms on each device, in order"),
]
ThreadsOpt = Annotated[int, typer.Option("--threads", min=0, max=1024, help="torch CPU threads (0 = torch's default).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed.")]


def fail(message: str) -> NasBertDeployError:
    """Build a user error to raise: the CLI prints it as one line and exits 2."""
    return NasBertDeployError(message)


def set_threads(threads: int) -> None:
    """torch CPU threads for this process (0 = leave torch's default)."""
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


# loggers of the libraries a command drives; their INFO/WARNING lines are not the user's business
THIRD_PARTY_LOGGERS = ("", "nncf", "onnxruntime", "openvino", "transformers", "torch", "onnxscript", "onnx", "safetensors")


@contextlib.contextmanager
def quiet_third_party() -> Iterator[None]:
    """While a command runs: third-party loggers at ERROR, third-party warnings hidden (ours still shown).

    Restored afterwards (tests run many commands in one process). `TRANSFORMERS_VERBOSITY` covers transformers
    imported inside the command (its first import resets its logger's level from that variable).
    """
    loggers = [logging.getLogger(name) for name in THIRD_PARTY_LOGGERS]
    levels = [lg.level for lg in loggers]
    disabled = logging.root.manager.disable
    env = os.environ.get("TRANSFORMERS_VERBOSITY")
    os.environ["TRANSFORMERS_VERBOSITY"] = env or "error"
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    logging.disable(logging.WARNING)  # also for loggers configured on import later (nncf sets its own to INFO)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore")
            warnings.filterwarnings("default", module=r"nasbert_deploy")
            yield
    finally:
        logging.disable(disabled)
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        if env is None:
            os.environ.pop("TRANSFORMERS_VERBOSITY", None)


PROGRESS_ENV = "NASBERT_DEPLOY_PROGRESS_S"  # seconds between plain progress lines when output is not a terminal


class Ticker:
    """When a plain progress line is due (output not on a terminal, so no live bar): the first update of each
    `key`, then one every `every_s` seconds (default 30, or `NASBERT_DEPLOY_PROGRESS_S`), and the last one."""

    def __init__(self, every_s: float | None = None) -> None:
        if every_s is None:
            try:
                every_s = float(os.environ.get(PROGRESS_ENV, "30"))
            except ValueError:
                every_s = 30.0
        self.every_s = every_s
        self.last: dict[str, float] = {}
        self.finished: set[str] = set()

    def due(self, done: int, total: int | None, key: str = "") -> bool:
        now = time.monotonic()
        last = self.last.get(key)
        if key in self.finished:
            return False
        if total is not None and done >= total:
            self.finished.add(key)
        elif last is not None and now - last < self.every_s:
            return False
        self.last[key] = now
        return True


def print_note(line: str, warning: bool = False) -> None:
    """A library's note for the user on stderr (stdout stays the command's result, e.g. --json): a machine
    mismatch as `warning: ...`, a calibration as a plain line."""
    err_console.print(f"[bold yellow]warning:[/] {line}" if warning else line, highlight=False, soft_wrap=True)


@contextmanager
def training_progress(title: str) -> Iterator[Callable[[int, int, dict[str, float]], None]]:
    """The training loop's (step, total, losses) callback: a transient bar on a terminal; on a pipe or in a log,
    a plain line at the start, every 30 s (`common.PROGRESS_ENV`) and at the end."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    plain, ticker = not console.is_terminal, Ticker()
    cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*cols, TextColumn("{task.fields[info]}"), console=console, transient=True, disable=plain) as prog:
        task = prog.add_task(title, total=None, info="")

        def update(step: int, total: int, values: dict[str, float]) -> None:
            info = " ".join(f"{k} {v:.4f}" for k, v in values.items())
            prog.update(task, completed=step, total=total, info=info)
            if plain and ticker.due(step, total):
                console.print(f"{title}: step {step}/{total} {info}".rstrip(), highlight=False)

        yield update


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.2e}" if 0 < abs(v) < 1e-3 else f"{v:.4f}"
    return str(v)


def print_report(title: str, rows: dict[str, Any]) -> None:
    from rich.table import Table

    t = Table(title=title, show_header=False)
    for k, v in rows.items():
        t.add_row(k, _fmt_value(v))
    console.print(t)
