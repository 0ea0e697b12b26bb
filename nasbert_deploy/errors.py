"""Typed errors. Every user-facing failure is a subclass of `NasBertDeployError`.

The CLI turns any `NasBertDeployError` into one line on stderr and exit code 2, so each message
must say what is wrong *and* what would be valid.
"""

from __future__ import annotations


class NasBertDeployError(Exception):
    """Base class: an error caused by the user's input or environment (CLI exit code 2)."""


class ArchError(NasBertDeployError, ValueError):
    """An architecture string or dict does not describe a member of the search space."""


class SpaceError(NasBertDeployError, ValueError):
    """A search space is malformed, unknown, or does not match a table/checkpoint."""


class TeacherError(NasBertDeployError):
    """The teacher model cannot be found or loaded."""


class DeviceError(NasBertDeployError):
    """A device spec is unknown, malformed, or its hardware is not present."""


class RuntimeUnavailableError(DeviceError):
    """The runtime a device spec needs (onnxruntime, openvino, CUDA, ...) is not usable here."""


class TableError(NasBertDeployError):
    """A latency or candidate table is missing, malformed, incomplete or for another space."""


class InfeasibleBudgetError(NasBertDeployError):
    """No architecture satisfies the budget; the message names the binding constraint."""


class ExportError(NasBertDeployError):
    """An export failed: conversion, numeric validation, or an unusable output directory."""


class CheckpointError(NasBertDeployError):
    """A supernet or model checkpoint is missing, malformed or incompatible."""


class TaskError(NasBertDeployError):
    """A labelled task file is missing or malformed, or its labels do not match the model's."""


class OutputError(NasBertDeployError):
    """An output path cannot be written: wrong kind (file vs folder), not writable, or taken (no `--force`)."""


class InputError(NasBertDeployError):
    """A file the user handed in cannot be read: missing, a folder, unreadable, not UTF-8, not the expected format."""


class CorpusError(NasBertDeployError):
    """A text corpus is missing, empty, or too small for the requested training/validation split."""


class LayerMapError(NasBertDeployError, ValueError):
    """A distillation layer map does not fit the student and teacher, or its search cannot run as asked."""


class NoisyHostWarning(UserWarning):
    """The host varies too much between rounds for +-10% latency figures (the message says what to do)."""
