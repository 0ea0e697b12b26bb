"""Telemetry of our dependencies, switched off in one place and nowhere else.

`import nasbert_deploy` calls `disable_telemetry()`: it sets, each only if not already set, the
switches that do nothing but turn telemetry off, before any runtime is imported:

- `ORT_DISABLE_TELEMETRY=1`: onnxruntime (on by default on Linux since 1.29);
- `HF_HUB_DISABLE_TELEMETRY=1`: huggingface_hub's usage pings (and the extra user-agent fields);
- `NNCF_CI=1`: nncf replaces its telemetry object with a stub (nncf 3.4 reads it nowhere else:
  `nncf/telemetry/wrapper.py`).

It does not go offline (`HF_HUB_OFFLINE`, `TRANSFORMERS_OFFLINE`): that changes how every other
library in the importing program loads models, so it is the command line's decision (`cli/app.py`).

openvino_telemetry (used by openvino's converter and by nncf) has no switch of its own: its
singleton `Telemetry` declines only if `CI=true` when it is (re)initialised, which happens when
`openvino.tools.ovc` is imported (`import openvino` does that), at every `ov.convert_model` (it
re-initialises as app 'OVC') and when nncf is imported. A global `CI=true` would change the
behaviour of anything else that reads `CI`, so `openvino_telemetry_off()` sets it only around those
calls and restores the previous value; wrap every `import openvino` / `import nncf` / `convert_model`
/ `nncf.quantize` in the package with it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

TELEMETRY_SWITCHES: dict[str, str] = {
    "ORT_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "NNCF_CI": "1",
}


def disable_telemetry() -> None:
    """Set the telemetry-only switches (each only if the environment does not set it already)."""
    for key, value in TELEMETRY_SWITCHES.items():
        os.environ.setdefault(key, value)


@contextmanager
def openvino_telemetry_off() -> Iterator[None]:
    """`CI=true` while openvino / nncf (re)initialise openvino_telemetry (its consent is read then and kept);
    the previous value of `CI` (or its absence) is restored afterwards."""
    prior = os.environ.get("CI")
    os.environ["CI"] = "true"
    try:
        yield
    finally:
        if prior is None:
            os.environ.pop("CI", None)
        else:
            os.environ["CI"] = prior
