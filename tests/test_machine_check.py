"""A latency table belongs to a machine: predict says so in one line when the table was made elsewhere."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from nasbert_deploy.cli.app import app
from nasbert_deploy.profiling.host import cpu_model, environment, machine_mismatch
from nasbert_deploy.profiling.table import find_table

ARCH = "128:mha,ffn,id|192:sep3,ffn,id|256:mha,ffn,ffn"


def test_same_machine_says_nothing_other_machine_says_what_differs():
    here = {"cpu_model": cpu_model(), "runtime_versions": environment()["runtime_versions"]}
    assert machine_mismatch(here) is None
    other = dict(here, cpu_model="Intel(R) Xeon(R) Platinum 8488C", runtime_versions={"onnxruntime": "0.0.1"})
    note = machine_mismatch(other, "cpu-ort")
    assert "Intel(R) Xeon(R) Platinum 8488C" in note and "onnxruntime 0.0.1" in note
    assert "nasbert-deploy profile --device cpu-ort" in note and "\n" not in note


def test_predict_warns_for_a_table_from_another_cpu(tmp_path):
    data = json.loads(find_table("cpu-ort").read_text())
    data["manifest"]["cpu_model"] = "Intel(R) Xeon(R) Platinum 8488C"
    table = tmp_path / "other.json"
    table.write_text(json.dumps(data))
    res = CliRunner().invoke(app, ["predict", "--table", str(table), ARCH, "--space", "minilm"])
    assert res.exit_code == 0, res.output
    assert "made on another machine" in res.stderr and "8488C" in res.stderr
