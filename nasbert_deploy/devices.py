"""Device specs: which runtime, target, precision and threads, and what shapes to profile.

Specs are TOML files: the shipped ones in `devices/*.toml` (by name) or a user's file (by path).
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nasbert_deploy.errors import DeviceError
from nasbert_deploy.fileio import read_input_text
from nasbert_deploy.resources import shipped_dir

RUNTIME_NAMES = ("torch", "onnxruntime", "openvino")
TARGETS = {"torch": ("cpu", "cuda"), "onnxruntime": ("cpu", "cuda"), "openvino": ("cpu", "gpu", "npu")}
PRECISIONS = ("fp32", "fp16", "int8", "int4")
# how the int8/int4 model is made: "ptq" post-training (ORT dynamic INT8, NNCF), "kdlsq" the integer export
# `nasbert-deploy quantize` writes (QDQ / MatMulNBits ONNX, OpenVINO reading it; `lowbit.item`)
QUANTIZERS = ("ptq", "kdlsq")
_KEYS = {
    "name", "description", "runtime", "target", "precision", "quantizer", "threads",
    "batch_sizes", "seq_lens", "providers", "provider_options", "runtime_options",
}


@dataclass(frozen=True)
class DeviceSpec:
    """One deployment target. `threads` 0 means the runtime's default (all cores)."""

    name: str
    runtime: str
    target: str
    precision: str = "fp32"
    quantizer: str = "ptq"
    threads: int = 1
    batch_sizes: tuple[int, ...] = (1,)
    seq_lens: tuple[int, ...] = (32, 64, 128)
    description: str = ""
    providers: tuple[str, ...] = ()
    provider_options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    runtime_options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    source: str = field(default="", compare=False)

    @property
    def kdlsq_bits(self) -> int | None:
        """Weight bits of the `quantize` export this device runs (8 or 4), or None for any other device."""
        return {"int8": 8, "int4": 4}.get(self.precision) if self.quantizer == "kdlsq" else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["batch_sizes"], d["seq_lens"], d["providers"] = list(self.batch_sizes), list(self.seq_lens), list(self.providers)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "") -> DeviceSpec:
        where = source or data.get("name", "device spec")
        unknown = set(data) - _KEYS - {"source"}
        if unknown:
            raise DeviceError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(_KEYS))}")
        for key in ("name", "runtime", "target"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise DeviceError(f"{where}: missing or empty '{key}' (a string)")
        rt, target = data["runtime"], data["target"]
        if rt not in RUNTIME_NAMES:
            raise DeviceError(f"{where}: runtime {rt!r} is not one of {', '.join(RUNTIME_NAMES)}")
        if target not in TARGETS[rt]:
            raise DeviceError(f"{where}: target {target!r} is not valid for {rt}; valid: {', '.join(TARGETS[rt])}")
        precision = data.get("precision", "fp32")
        if precision not in PRECISIONS:
            raise DeviceError(f"{where}: precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        quantizer = data.get("quantizer", "ptq")
        if quantizer not in QUANTIZERS:
            raise DeviceError(f"{where}: quantizer {quantizer!r} is not one of {', '.join(QUANTIZERS)}")
        if quantizer == "kdlsq" and (precision not in ("int8", "int4") or rt == "torch" or target != "cpu"):
            raise DeviceError(f"{where}: quantizer 'kdlsq' runs the integer exports of `nasbert-deploy quantize`: precision "
                              f"int8 or int4, runtime onnxruntime or openvino, target cpu (got {precision}, {rt}, {target})")
        if precision == "int4" and quantizer != "kdlsq":
            raise DeviceError(f"{where}: precision int4 exists only as 4-bit KDLSQ weights (`nasbert-deploy quantize --bits 4`): "
                              "add quantizer = \"kdlsq\"")
        threads = data.get("threads", 1)
        if not isinstance(threads, int) or threads < 0:
            raise DeviceError(f"{where}: threads must be an integer >= 0 (0 = runtime default), got {threads!r}")

        def ints(key: str, default: tuple[int, ...], minimum: int) -> tuple[int, ...]:
            v = data.get(key, list(default))
            if not isinstance(v, list) or not v or not all(isinstance(i, int) and i >= minimum for i in v):
                raise DeviceError(f"{where}: {key} must be a non-empty list of integers >= {minimum}, got {v!r}")
            return tuple(sorted(set(v)))

        def table(key: str) -> dict[str, Any]:
            v = data.get(key, {})
            if not isinstance(v, dict):
                raise DeviceError(f"{where}: {key} must be a table of options, got {v!r}")
            return dict(v)

        providers = data.get("providers", [])
        if not isinstance(providers, list) or not all(isinstance(x, str) for x in providers):
            raise DeviceError(f"{where}: providers must be a list of strings, got {providers!r}")
        return cls(
            name=data["name"],
            runtime=rt,
            target=target,
            precision=precision,
            quantizer=quantizer,
            threads=threads,
            batch_sizes=ints("batch_sizes", (1,), 1),
            seq_lens=ints("seq_lens", (32, 64, 128), 2),
            description=str(data.get("description", "")),
            providers=tuple(providers),
            provider_options=table("provider_options"),
            runtime_options=table("runtime_options"),
            source=source,
        )


def _read(path: Path) -> DeviceSpec:
    """The one loader of device spec files: unreadable, undecodable or malformed specs are one `DeviceError`."""
    text = read_input_text(path, "device spec", DeviceError, hint="give a TOML file like those in devices/")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DeviceError(f"device spec {path} is not valid TOML: {exc}") from None
    return DeviceSpec.from_dict(data, source=str(path))


def list_devices() -> list[DeviceSpec]:
    """The shipped device specs, sorted by name."""
    return sorted((_read(p) for p in shipped_dir("devices").glob("*.toml")), key=lambda s: s.name)


def load_device(name_or_path: str | Path) -> DeviceSpec:
    """A shipped spec by name (e.g. `cpu-ort`) or a user's TOML file by path."""
    text = str(name_or_path)
    p = Path(text)
    if text.endswith(".toml") or p.is_file():
        if not p.is_file():
            raise DeviceError(f"device spec file {p} does not exist")
        return _read(p)
    shipped = shipped_dir("devices") / f"{text}.toml"
    if shipped.is_file():
        return _read(shipped)
    names = ", ".join(s.name for s in list_devices())
    raise DeviceError(f"unknown device {text!r}; valid: {names} (or a path to a .toml spec)")
