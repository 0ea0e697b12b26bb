from __future__ import annotations

import json
import os
import random
import warnings
from dataclasses import replace

import pytest
import torch
from helpers import MICRO, SETTINGS

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NNCF_CI", "1")
os.environ.setdefault("CI", "true")  # openvino telemetry off in-process


@pytest.fixture(scope="session", autouse=True)
def export_cache(tmp_path_factory):
    """Profiling exports and teacher logits go to caches of this session, never to ~/.cache
    (NASBERT_DEPLOY_CACHE, NASBERT_DEPLOY_LOGITS_CACHE)."""
    from nasbert_deploy.profiling.cache import CACHE_ENV
    from nasbert_deploy.student.teacher_logits import CACHE_ENV as LOGITS_ENV

    root = tmp_path_factory.mktemp("export-cache")
    saved = {k: os.environ.get(k) for k in (CACHE_ENV, LOGITS_ENV)}
    os.environ[CACHE_ENV] = str(root)
    os.environ[LOGITS_ENV] = str(tmp_path_factory.mktemp("teacher-logits"))
    yield root
    for k, old in saved.items():
        if old is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = old


@pytest.fixture(scope="session", autouse=True)
def fresh_working_dir(tmp_path_factory):
    """Tests run in an empty folder: the files a user's own runs leave in the checkout (the quick start's
    ./profiles/local/*.json, which `find_table` prefers; ./out) neither change what a test sees nor get written over."""
    old = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(old)


@pytest.fixture
def tiny_space():
    from nasbert_deploy.space import TINY

    return TINY


@pytest.fixture
def rng():
    return random.Random(1234)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models train fastest on one thread; more only fight over the shared cores."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def micro_table(tmp_path_factory):
    """The micro space profiled directly on cpu-ort, interrupted once and resumed (asserted on the way)."""
    from nasbert_deploy.devices import load_device
    from nasbert_deploy.errors import NoisyHostWarning
    from nasbert_deploy.profiling.profiler import partial_path, profile_device

    out = tmp_path_factory.mktemp("prof") / "micro-ort.json"
    spec = replace(load_device("cpu-ort"), name="micro-ort", seq_lens=(8, 16))
    seen = []

    def interrupt(phase, done, total):
        seen.append((phase, done, total))
        if phase == "time" and done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), warnings.catch_warnings():
        warnings.simplefilter("ignore", NoisyHostWarning)  # this shared host: not what the fixture is about
        profile_device(spec, MICRO, out, SETTINGS, interrupt)
    assert not out.exists()
    state = json.loads(partial_path(out).read_text())
    assert sum(len(r) for k, per in state["results"].items() for r in per.values() if k != "reference") == 5
    assert len(state["results"]["reference"]["b1s8"]) == 1  # timed before the first item of the first pass
    total_first = max(t for p, _, t in seen if p == "time")
    assert total_first == (7 * 2 + 5 * 3) * 2  # (7 items x 2 rounds + (3 + 2 held-out) models x 3 rounds) x 2 points
    resumed = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoisyHostWarning)
        table = profile_device(spec, MICRO, out, SETTINGS, lambda p, d, t: resumed.append((p, d, t)))
    assert max(t for p, _, t in resumed if p == "time") == total_first - 5  # completed timings were skipped
    assert not partial_path(out).exists()
    return out, table
