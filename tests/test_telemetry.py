"""`import nasbert_deploy` turns telemetry off and nothing else; openvino's telemetry declines without a global CI=true."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from nasbert_deploy.telemetry import TELEMETRY_SWITCHES, openvino_telemetry_off

WATCHED = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "CI", *TELEMETRY_SWITCHES)


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without any switch we watch (conftest and .ci/run set some), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in WATCHED}
    env.update(extra)
    return env


def _env_after(code: str, env: dict[str, str]) -> dict[str, str | None]:
    script = f"import json, os\n{code}\nprint(json.dumps({{k: os.environ.get(k) for k in {list(WATCHED)!r}}}))"
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_import_sets_only_telemetry_switches():
    seen = _env_after("import nasbert_deploy", _clean_env())
    assert {k: seen[k] for k in TELEMETRY_SWITCHES} == TELEMETRY_SWITCHES
    assert seen["HF_HUB_OFFLINE"] is None and seen["TRANSFORMERS_OFFLINE"] is None and seen["CI"] is None


def test_import_keeps_what_the_program_set():
    seen = _env_after("import nasbert_deploy", _clean_env(ORT_DISABLE_TELEMETRY="0", CI="false"))
    assert seen["ORT_DISABLE_TELEMETRY"] == "0" and seen["CI"] == "false"


def test_the_command_line_goes_offline():
    code = "import sys\nfrom nasbert_deploy.cli.app import main\nsys.argv = ['nasbert-deploy', '--version']\n" \
           "try:\n    main()\nexcept SystemExit:\n    pass"
    seen = _env_after(code, _clean_env())
    assert seen["HF_HUB_OFFLINE"] == "1" and seen["TRANSFORMERS_OFFLINE"] == "1" and seen["CI"] is None


@pytest.mark.parametrize("prior", [None, "false", "true"])
def test_openvino_telemetry_off_restores_ci(monkeypatch, prior):
    if prior is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", prior)
    with pytest.raises(RuntimeError), openvino_telemetry_off():
        assert os.environ["CI"] == "true"
        raise RuntimeError("the previous value comes back on errors too")
    assert os.environ.get("CI") == prior


@pytest.mark.slow
def test_openvino_conversion_declines_telemetry(tmp_path):
    """After `import nasbert_deploy` and an ONNX -> OpenVINO conversion, openvino_telemetry's singleton has no
    consent, CI is unset again, and no client-id files were written (HOME is a fresh folder)."""
    code = f"""
import nasbert_deploy
import onnx
from onnx import TensorProto, helper
from nasbert_deploy.runtimes.convert import onnx_to_openvino
x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), {str(tmp_path / "m.onnx")!r})
onnx_to_openvino({str(tmp_path / "m.onnx")!r}, {str(tmp_path / "m.xml")!r})
import openvino_telemetry
t = openvino_telemetry.Telemetry()
assert t.consent is False and t.backend.app_name == "OVC", (t.consent, t.backend.app_name)
"""
    home = tmp_path / "home"
    home.mkdir()
    seen = _env_after(code, _clean_env(HOME=str(home)))
    assert seen["CI"] is None
    assert (tmp_path / "m.xml").is_file() and not any(home.iterdir())
