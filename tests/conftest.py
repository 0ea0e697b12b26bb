from __future__ import annotations

import os
import random

import pytest

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NNCF_CI", "1")
os.environ.setdefault("CI", "true")  # openvino telemetry off in-process


@pytest.fixture
def tiny_space():
    from nasbert_deploy.space import TINY

    return TINY


@pytest.fixture
def rng():
    return random.Random(1234)
