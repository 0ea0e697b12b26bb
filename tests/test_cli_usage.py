"""The command line's shape: choices come from the registries, usage errors are one line and exit 2, --help is light."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from nasbert_deploy.cli import common
from nasbert_deploy.cli.app import app
from nasbert_deploy.devices import PRECISIONS
from nasbert_deploy.model.distributed import TRAIN_DEVICES
from nasbert_deploy.runtimes.base import RUNTIMES
from nasbert_deploy.space import SPACES
from nasbert_deploy.student import INITS

runner = CliRunner()


def test_choices_are_the_registries():
    assert [m.value for m in common.SpaceName] == list(SPACES)
    assert [m.value for m in common.RuntimeName] == list(RUNTIMES)
    assert [m.value for m in common.PrecisionName] == list(PRECISIONS)
    assert [m.value for m in common.InitName] == list(INITS)
    assert [m.value for m in common.TrainDevice] == list(TRAIN_DEVICES)


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["profile", "--device", "cpu-ort", "--rounds", "0"], ["'--rounds'", "greater than or equal to 1"]),
        (["space", "show", "--space", "large"], ["'large' is not one of 'standard', 'tiny', 'minilm'"]),
        (["arch", "info", "128:mha", "--space", "x"], ["is not one of 'standard', 'tiny', 'minilm'"]),
        (["search", "--max-latency-ms", "3", "--device", "tpu"], ["unknown device 'tpu'; valid: cpu-openvino", ".toml"]),
        (["search", "--device", "cpu-ort"], ["Missing option '--max-latency-ms'"]),
        (["arch", "info"], ["Missing argument"]),
        (["profile", "--bogus"], ["No such option", "--bogus"]),
        (["--bogus"], ["No such option", "--bogus"]),
        (["bogus"], ["No such command 'bogus'"]),
        (["evaluate", "--model", "m", "--runtime", "tensorrt"], ["'tensorrt' is not one of 'torch', 'onnxruntime', 'openvino'"]),
        (["search", "--max-latency-ms", "3", "--precision", "int2"], ["'int2' is not one of 'fp32', 'fp16', 'int8', 'int4'"]),
        (["export", "--out", "o", "--init", "pretrained"], ["'pretrained' is not one of 'supernet', 'random'"]),
        (["supernet", "train", "--corpus", "c", "--out", "o", "--device", "tpu"], ["is not one of 'auto', 'cpu', 'cuda'"]),
        (["finetune", "--model", "m", "--out", "o", "--lambda", "1.5"], ["less than or equal to 1"]),
    ],
)
def test_usage_errors_are_one_line_exit_2(args, fragments, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert res.stdout == "" and res.stderr.startswith("error: ")
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "Usage:" not in res.stderr and "╭" not in res.stderr and "--help" in res.stderr
    for fragment in fragments:
        assert fragment in res.stderr, res.stderr
    assert list(tmp_path.iterdir()) == []


def test_help_stays_light():
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom nasbert_deploy.cli.app import app\n"
        "for args in ([], ['--help'], ['export', '--help'], ['supernet', 'train', '--help']):\n"
        "    assert CliRunner().invoke(app, args).exit_code in (0, 2)\n"
        "print(sorted(m for m in ('torch', 'onnxruntime', 'openvino', 'nncf', 'transformers') if m in sys.modules))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
