"""nasbert-deploy: NAS-BERT search spaces, supernets, per-device latency tables, search and export.

Importing the package is cheap: no torch, onnxruntime or openvino at import time.
"""

from __future__ import annotations

import os as _os

__version__ = "0.1.0"

# No telemetry from our dependencies on a user's machine: these switches must be set before
# onnxruntime / openvino / nncf / huggingface_hub are imported (see README, "Privacy").
for _k, _v in (
    ("ORT_DISABLE_TELEMETRY", "1"),
    ("HF_HUB_DISABLE_TELEMETRY", "1"),
    ("HF_HUB_OFFLINE", "1"),
    ("TRANSFORMERS_OFFLINE", "1"),
    ("NNCF_CI", "1"),
    # openvino_telemetry (used by openvino and nncf) has no switch of its own: it declines
    # whenever CI=true, and that is the only per-process off switch it honours.
    ("CI", "true"),
):
    _os.environ.setdefault(_k, _v)
