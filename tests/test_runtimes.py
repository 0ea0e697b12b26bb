"""Every runtime plug-in compiles and runs an operation at shapes other than the export example; GPU specs refuse clearly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nasbert_deploy.devices import load_device
from nasbert_deploy.errors import RuntimeUnavailableError
from nasbert_deploy.profiling.items import Item, make_inputs
from nasbert_deploy.runtimes.base import RUNTIMES, get_runtime, require_available, time_compiled
from nasbert_deploy.space import TINY

CPU_SPEC = {"torch": "cpu-torch", "onnxruntime": "cpu-ort", "openvino": "cpu-openvino"}
INT8_SPECS = ("cpu-ort-int8", "cpu-openvino-int8")
GPU_SPECS = ("cuda-torch", "cuda-torch-fp16", "cuda-ort", "openvino-gpu")


def test_every_runtime_has_a_cpu_spec_tested():
    assert set(RUNTIMES) == set(CPU_SPEC)


def _check(spec_name: str, tmp_path, atol: float) -> None:
    spec = load_device(spec_name)
    item = Item("sep3@h32", "op", 32, op="sep3")
    module = item.build(TINY)
    compiled = get_runtime(spec.runtime).compile(module, item.example_inputs(TINY), item.output_names, spec, tmp_path)
    for b, t in ((1, 9), (3, 20)):  # neither is the (2, 37) export example: axes must be dynamic
        feed = make_inputs(item.inputs, b, t, TINY.vocab_size, seed=b)
        with torch.no_grad():
            ref = module(*(torch.from_numpy(feed[n]) for n in ("x", "mask"))).numpy()
        out = compiled.run(feed)[0]
        assert out.shape == (b, t, 32)
        assert np.abs(out - ref).max() < atol
    timing = time_compiled(compiled, make_inputs(item.inputs, 1, 16, TINY.vocab_size), warmup=1, runs=3)
    assert timing.runs == 3 and 0 < timing.median_ms < 1000


@pytest.mark.slow
@pytest.mark.parametrize("runtime", sorted(CPU_SPEC))
def test_runtime_fp32_matches_torch(runtime, tmp_path):
    _check(CPU_SPEC[runtime], tmp_path, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("spec_name", INT8_SPECS)
def test_int8_specs_quantize_and_run(spec_name, tmp_path):
    _check(spec_name, tmp_path, atol=0.5)  # INT8: close, not exact (outputs are LayerNormed, O(1))


@pytest.mark.parametrize("spec_name", GPU_SPECS)
def test_gpu_specs_refuse_clearly_without_gpu(spec_name, tmp_path):
    spec = load_device(spec_name)
    if get_runtime(spec.runtime).availability(spec) is None:
        pytest.skip("this machine has the GPU")
    with pytest.raises(RuntimeUnavailableError, match=f"device '{spec_name}' is not usable here: .*(CUDA|GPU)"):
        require_available(spec)
    item = Item("ffn@h32", "op", 32, op="ffn")
    with pytest.raises(RuntimeUnavailableError, match="CUDA|GPU"):
        get_runtime(spec.runtime).compile(item.build(TINY), item.example_inputs(TINY), item.output_names, spec, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_onnx_registry_is_built_once_per_process_and_unpatched_after():
    from torch.onnx._internal.exporter import _registration as reg

    from nasbert_deploy.runtimes.convert import reuse_onnx_registry

    original = reg.ONNXRegistry.__dict__["from_torchlib"]
    with reuse_onnx_registry():
        first = reg.ONNXRegistry.from_torchlib()
    with reuse_onnx_registry():  # a later export (export_onnx enters this block every time) reuses it
        assert reg.ONNXRegistry.from_torchlib() is first
    assert reg.ONNXRegistry.__dict__["from_torchlib"] is original


@pytest.mark.parametrize("trans_b,alpha,bias", [(1, 1.0, True), (0, 0.5, True), (1, 1.0, False)])
def test_gemm_to_matmul_keeps_outputs(trans_b, alpha, bias):
    """int8 on ORT quantizes MatMul only: Linears exported as Gemm are rewritten to MatMul + Add first."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from nasbert_deploy.runtimes.convert import gemm_to_matmul

    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 4) if trans_b else (4, 6)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w")] + ([numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "b")]
                                                 if bias else [])
    node = helper.make_node("Gemm", ["x", "w"] + (["b"] if bias else []), ["y"], transB=trans_b, alpha=alpha)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = rng.standard_normal((5, 4)).astype(np.float32)

    def run(m):
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    ref = run(model)
    new = gemm_to_matmul(onnx.load_from_string(model.SerializeToString()))
    onnx.checker.check_model(new)
    assert [n.op_type for n in new.graph.node] == (["MatMul", "Add"] if bias else ["MatMul"])
    assert {i.name for i in new.graph.initializer} == {"w__matmul"} | ({"b"} if bias else set())
    assert np.abs(run(new) - ref).max() < 1e-5
