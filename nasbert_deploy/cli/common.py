"""What the command modules share: consoles, the choices (each built from the registry it names), common options.

Light imports only: `nasbert-deploy --help` must not import torch, onnxruntime or openvino.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum
from typing import Annotated

import typer
from rich.console import Console

from nasbert_deploy.devices import PRECISIONS, DeviceSpec
from nasbert_deploy.errors import DeviceError, NasBertDeployError
from nasbert_deploy.runtimes.base import RUNTIMES
from nasbert_deploy.space import SPACES
from nasbert_deploy.student import INITS
from nasbert_deploy.supernet.launch import TRAIN_DEVICES

console = Console()
err_console = Console(stderr=True)


def choice(name: str, values: Iterable[str]) -> type[Enum]:
    """A `str` Enum with one member per registry entry (typer shows and checks them as choices)."""
    return Enum(name, {v: v for v in values}, type=str)  # type: ignore[return-value]


SpaceName = choice("SpaceName", SPACES)
RuntimeName = choice("RuntimeName", RUNTIMES)
PrecisionName = choice("PrecisionName", PRECISIONS)
InitName = choice("InitName", INITS)
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
ThreadsOpt = Annotated[int, typer.Option("--threads", min=0, help="torch CPU threads (0 = torch's default).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed.")]


def fail(message: str) -> NasBertDeployError:
    """Build a user error to raise: the CLI prints it as one line and exits 2."""
    return NasBertDeployError(message)


def set_threads(threads: int) -> None:
    """torch CPU threads for this process (0 = leave torch's default)."""
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
