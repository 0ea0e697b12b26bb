"""Device specs and the `devices` / `profile` / `predict` CLI refusals (one line, exit 2, nothing written)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from nasbert_deploy.cli.app import app
from nasbert_deploy.devices import DeviceSpec, list_devices, load_device
from nasbert_deploy.errors import DeviceError
from nasbert_deploy.resources import shipped_dir
from nasbert_deploy.runtimes.base import RUNTIMES, availability

runner = CliRunner()
SHIPPED = sorted(p.stem for p in shipped_dir("devices").glob("*.toml"))


def test_every_shipped_spec_loads_and_is_registered():
    assert len(SHIPPED) == 13
    assert [s.name for s in list_devices()] == SHIPPED
    for name in SHIPPED:
        spec = load_device(name)
        assert spec.name == name and spec.runtime in RUNTIMES
        assert spec.batch_sizes and all(s >= 2 for s in spec.seq_lens)
        assert DeviceSpec.from_dict({k: v for k, v in spec.to_dict().items() if k != "source"}) == spec


def test_cpu_specs_usable_here():
    for name in ("cpu-torch", "cpu-ort", "cpu-openvino", "cpu-ort-int8", "cpu-openvino-int8", "cpu-ort-kdlsq8", "cpu-ort-kdlsq4",
                 "cpu-openvino-kdlsq8", "cpu-openvino-kdlsq4"):
        assert availability(load_device(name)) is None


def test_user_spec_by_path(tmp_path):
    p = tmp_path / "edge.toml"
    p.write_text('name = "edge"\nruntime = "onnxruntime"\ntarget = "cpu"\nthreads = 2\nseq_lens = [64, 16]\n')
    spec = load_device(p)
    assert (spec.name, spec.threads, spec.seq_lens, spec.batch_sizes) == ("edge", 2, (16, 64), (1,))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('name = "x"\nruntime = "tensorrt"\ntarget = "cpu"\n', "runtime 'tensorrt' is not one of"),
        ('name = "x"\nruntime = "torch"\ntarget = "npu"\n', "target 'npu' is not valid for torch; valid: cpu, cuda"),
        ('name = "x"\nruntime = "torch"\ntarget = "cpu"\ncolour = 1\n', "unknown key"),
        ('name = "x"\nruntime = "torch"\ntarget = "cpu"\nseq_lens = []\n', "seq_lens must be a non-empty list"),
        ("name = [", "is not valid TOML"),
        ('name = "x"\nruntime = "onnxruntime"\ntarget = "cpu"\nquantizer = "gptq"\n', "quantizer 'gptq' is not one of ptq"),
        ('name = "x"\nruntime = "onnxruntime"\ntarget = "cpu"\nquantizer = "kdlsq"\n', "precision int8 or int4, runtime onnxr"),
        ('name = "x"\nruntime = "torch"\ntarget = "cpu"\nprecision = "int8"\nquantizer = "kdlsq"\n', "(got int8, torch, cpu)"),
        ('name = "x"\nruntime = "onnxruntime"\ntarget = "cpu"\nprecision = "int4"\n', "add quantizer = \"kdlsq\""),
    ],
)
def test_malformed_specs(tmp_path, text, match):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(DeviceError, match=match):
        load_device(p)


def test_unknown_device_names_the_valid_ones():
    with pytest.raises(DeviceError, match="unknown device 'tpu'; valid: cpu-openvino, "):
        load_device("tpu")


def test_cli_devices_table():
    r = runner.invoke(app, ["devices"], env={"COLUMNS": "250"})
    assert r.exit_code == 0, r.output
    for name in SHIPPED:
        assert name in r.output
    assert "no CUDA GPU is visible" in r.output or "CUDAExecutionProvider" in r.output


def _one_line_exit_2(r, match):
    assert r.exit_code == 2, r.output
    assert match in r.output
    assert len(r.output.strip().splitlines()) == 1, r.output


def test_cli_profile_refusals_write_nothing(tmp_path):
    out = tmp_path / "out.json"
    _one_line_exit_2(runner.invoke(app, ["profile", "--device", "tpu", "--out", str(out)]), "unknown device 'tpu'")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [")
    _one_line_exit_2(runner.invoke(app, ["profile", "--device", str(bad), "--out", str(out)]), "is not valid TOML")
    if "cuda" not in " ".join(_providers_here()):
        r = runner.invoke(app, ["profile", "--device", "cuda-ort", "--out", str(out)])
        _one_line_exit_2(r, "device 'cuda-ort' is not usable here")
    r = runner.invoke(app, ["profile", "--device", "cpu-torch", "--bundle", str(tmp_path / "b")])
    _one_line_exit_2(r, "uses the torch runtime")
    _one_line_exit_2(runner.invoke(app, ["profile", "--import", str(tmp_path / "none.json")]), "does not exist")
    bad.write_text("{}")
    _one_line_exit_2(runner.invoke(app, ["profile", "--import", str(bad), "--out", str(out)]), "is not the output of a bundle")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml"]


def test_cli_predict_refusals(tmp_path):
    from test_latency import _synthetic

    table = _synthetic().save(tmp_path / "tiny.json")  # a TINY-space table
    arch = "128:mha,ffn,id,id,id,id|128:mha,id,id,id,id,id|256:ffn,id,id,id,id,id|512:sep3,id,id,id,id,id"
    r = runner.invoke(app, ["predict", arch, "--table", str(table)])
    _one_line_exit_2(r, "does not cover space 'standard'")
    r = runner.invoke(app, ["predict", "32:mha,ffn|64:sep3,id", "--space", "tiny", "--table", str(table), "--seq-len", "12"])
    assert r.exit_code == 0, r.output
    assert "total" in r.output and "block 2" in r.output
    r = runner.invoke(app, ["predict", "32:mha,ffn|64:sep3,id", "--space", "tiny", "--table", str(table), "--seq-len", "40"])
    _one_line_exit_2(r, "outside the profiled range 8..16")


def _providers_here() -> list[str]:
    import onnxruntime as ort

    return [p.lower() for p in ort.get_available_providers()]


def test_openvino_runs_fp32_and_kdlsq4_without_dynamic_activation_quantization():
    """fp32 stays fp32 and a 4-bit KDLSQ IR runs its trained 8-bit activations, not the CPU plug-in's own int8 groups."""
    pytest.importorskip("openvino")
    import numpy as np
    import openvino as ov

    from nasbert_deploy.runtimes.openvino_rt import DYNAMIC_QUANT, compile_config

    for name, want in (("cpu-openvino", 0), ("cpu-openvino-kdlsq4", 0), ("cpu-openvino-int8", None),
                       ("cpu-openvino-kdlsq8", None)):
        assert compile_config(load_device(name)).get(DYNAMIC_QUANT) == want, name
    x = ov.opset13.parameter([1, 4], np.float32)
    model = ov.Model([ov.opset13.relu(x)], [x])
    compiled = ov.Core().compile_model(model, "CPU", compile_config(load_device("cpu-openvino-kdlsq4")))
    assert compiled.get_property(DYNAMIC_QUANT) == 0
