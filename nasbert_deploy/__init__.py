"""nasbert-deploy: NAS-BERT search spaces, supernets, per-device latency tables, search and export.

Importing the package is cheap: no torch, onnxruntime or openvino at import time. It sets only the
telemetry-off switches of its dependencies (`nasbert_deploy.telemetry`); going offline is the
command line's decision (`nasbert_deploy.cli.app.main`).
"""

from __future__ import annotations

from nasbert_deploy.telemetry import disable_telemetry as _disable_telemetry

__version__ = "0.1.0"

# before onnxruntime / nncf / huggingface_hub are imported by anything in the package (see README, "Privacy")
_disable_telemetry()
