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


def _here() -> dict:
    env = environment()
    return {k: env[k] for k in ("cpu_model", "runtime_versions", "cpu_features", "logical_cpus")}


def test_same_cpu_name_but_other_cache_or_isa_is_another_machine():
    here = _here()
    assert machine_mismatch(here) is None
    feats = here["cpu_features"]
    l3 = feats["l3_cache_kb"] or 32768
    bigger = dict(here, cpu_features={**feats, "l3_cache_kb": 8 * l3})  # same "AMD EPYC", another chip
    note = machine_mismatch(bigger, "cpu-ort", "pass --calibrate")
    assert note is not None and "L3" in note and "\n" not in note and note.endswith("pass --calibrate")
    isa = feats["isa"] or []
    extra = "amx" if "amx" not in isa else "avx2"
    other_isa = dict(here, cpu_features={**feats, "isa": sorted(set(isa) ^ {extra})})
    note = machine_mismatch(other_isa, "cpu-ort")
    assert note is not None and "ISA" in note and extra in note
    assert "L3" not in note  # only what differs is named


def test_fields_a_manifest_lacks_are_skipped():
    here = _here()
    old = {k: here[k] for k in ("cpu_model", "runtime_versions")}  # the shipped tables' manifests
    assert machine_mismatch(old) is None
    assert machine_mismatch(dict(old, cpu_features={"l3_cache_kb": None, "isa": None})) is None
    partial = dict(old, cpu_features={"isa": here["cpu_features"]["isa"]})  # no L3 recorded
    assert machine_mismatch(partial) is None
    assert "logical CPUs" in machine_mismatch(dict(old, logical_cpus=(here["logical_cpus"] or 1) + 64))


def test_new_manifests_record_cache_isa_and_cpus():
    from nasbert_deploy.devices import load_device
    from nasbert_deploy.profiling.build import make_manifest
    from nasbert_deploy.profiling.bundle_runner import cpu_features as runner_features
    from nasbert_deploy.profiling.host import KERNEL_ISA, cpu_features

    m = make_manifest(load_device("cpu-ort"), {}, 1.0, "direct")
    feats = m["cpu_features"]
    assert set(feats) == {"l3_cache_kb", "isa"} and m["logical_cpus"] >= 1
    assert feats["isa"] is None or set(feats["isa"]) <= set(KERNEL_ISA)
    assert runner_features() == cpu_features()  # the on-device runner records the same fields
    assert machine_mismatch(m) is None


def _other_cpu_table(tmp_path):
    data = json.loads(find_table("cpu-ort").read_text())
    data["manifest"]["cpu_model"] = "Intel(R) Xeon(R) Platinum 8488C"
    table = tmp_path / "other.json"
    table.write_text(json.dumps(data))
    return table


def test_search_warns_for_a_table_from_another_cpu_on_stderr(tmp_path):
    table = _other_cpu_table(tmp_path)
    res = CliRunner().invoke(app, ["search", "--table", str(table), "--max-latency-ms", "5", "--json"])
    assert res.exit_code == 0, res.output
    lines = [x for x in res.stderr.splitlines() if "made on another machine" in x]
    assert len(lines) == 1 and "8488C" in lines[0] and "--calibrate" in lines[0]
    assert json.loads(res.stdout)["best"]  # stdout stays the result


def test_export_warns_for_a_table_from_another_cpu(tmp_path, monkeypatch):
    from nasbert_deploy.devices import load_device
    from nasbert_deploy.export.pipeline import ExportOptions
    from nasbert_deploy.export.run import ExportRequest, prepare_export

    profiles = tmp_path / "profiles"
    profiles.mkdir()
    _other_cpu_table(tmp_path).rename(profiles / "cpu-ort.json")  # ./profiles/NAME.json comes before the shipped one
    monkeypatch.chdir(tmp_path)
    notes = []
    request = ExportRequest(tmp_path / "m", ExportOptions(formats=("onnx",)), load_device("cpu-ort"), ARCH, init="random",
                            space="minilm")
    prepared = prepare_export(request, lambda line, warning: notes.append((line, warning)))  # what the CLI prints
    assert len(notes) == 1 and notes[0][1] and "8488C" in notes[0][0] and "pass --calibrate" in notes[0][0]
    assert prepared.options == request.options and not (tmp_path / "m").exists()  # no calibration, nothing written


def test_a_gpu_table_names_its_gpu_a_cpu_table_made_on_a_gpu_host_does_not():
    from nasbert_deploy.profiling.host import gpu_model

    here = _here()
    gpu = dict(here, device={"name": "cuda-torch", "target": "cuda"}, gpu_model="NVIDIA H200")
    note = machine_mismatch(gpu, "cuda-torch")
    if gpu_model() == "NVIDIA H200":  # run on that GPU: the same machine
        assert note is None
    else:
        assert note is not None and "GPU 'NVIDIA H200'" in note and "nasbert-deploy profile --device cuda-torch" in note
    cpu_table = dict(here, device={"name": "cpu-ort", "target": "cpu"}, gpu_model="NVIDIA H200")
    assert machine_mismatch(cpu_table, "cpu-ort") is None


def test_only_the_tables_own_runtime_version_counts():
    here = _here()
    torch_table = dict(here, device={"name": "cpu-torch", "runtime": "torch"},
                       runtime_versions={**here["runtime_versions"], "onnxruntime": "0.0.1"})
    assert machine_mismatch(torch_table, "cpu-torch") is None
    ort_table = dict(torch_table, device={"name": "cpu-ort", "runtime": "onnxruntime"})
    assert "onnxruntime 0.0.1" in machine_mismatch(ort_table, "cpu-ort")
