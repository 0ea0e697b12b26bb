"""The export cache (keys, atomic folders, reuse, parallel workers) and whole models assembled from their parts."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers import MICRO

from nasbert_deploy.devices import load_device
from nasbert_deploy.profiling import cache as cache_mod
from nasbert_deploy.profiling.assemble import REPEAT_SCALE, AssemblyError, assemble_model, model_parts
from nasbert_deploy.profiling.cache import CACHE_ENV, ExportCache, default_cache_dir, prepare_exports
from nasbert_deploy.profiling.items import make_inputs, model_item, op_items, reference_item
from nasbert_deploy.space import TINY


def test_model_parts_follow_the_arch():
    a = TINY.parse("32:mha,id|64:sep3,ffn")
    assert model_parts(a) == [("embedding@h32", "embedding"), ("mha@h32", "op"), ("boundary@h32>h64", "boundary"),
                              ("sep3@h64", "op"), ("ffn@h64", "op"), ("head@h64", "head")]


def test_cache_dir_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c" and ExportCache.at().root == tmp_path / "c"
    assert ExportCache.at("~/x").root.name == "x" and "~" not in str(ExportCache.at("~/x").root)
    monkeypatch.delenv(CACHE_ENV)
    assert default_cache_dir().parts[-3:] == (".cache", "nasbert-deploy", "exports")


def test_cache_keys_differ_by_item_space_and_precision(tmp_path):
    c = ExportCache(tmp_path)
    ort, int8 = load_device("cpu-ort"), load_device("cpu-ort-int8")
    it = op_items(MICRO)[0]
    f = c.folder(it, ort, MICRO)
    assert f == c.folder(it, ort, MICRO) and f.parent.name == "onnxruntime-cpu-fp32"
    assert len({f, c.folder(it, int8, MICRO), c.folder(op_items(MICRO)[1], ort, MICRO), c.folder(it, ort, replace(
        MICRO, vocab_size=999))}) == 4
    assert c.lookup(it, ort, MICRO) is None


def test_assembly_refuses_a_graph_of_another_shape(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "t", 32])
    mask = helper.make_tensor_value_info("mask", TensorProto.INT64, ["b", "t"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "t", 32])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x, mask], [y])
    onnx.save(helper.make_model(g), str(tmp_path / "op.onnx"))
    arch = MICRO.parse("32:mha,id|32:mha,id")
    parts = {k: tmp_path / "op.onnx" for k, _ in model_parts(arch)}
    with pytest.raises(AssemblyError, match="expected|Reshape"):
        assemble_model(arch, parts, tmp_path / "m.onnx", MICRO.output_dim)
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
def test_assembled_model_computes_what_the_torch_model_computes(tmp_path, one_thread):
    """Parts exported alone, chained without their reshapes: the same function as NasBertModel holding the parts'
    weights (the k-th repeat of a part scaled by 1 + k/1024), in ORT."""
    import onnxruntime as ort

    from nasbert_deploy.model.modeling import NasBertConfig, NasBertModel
    from nasbert_deploy.runtimes.convert import export_onnx

    arch = TINY.parse("32:mha,sep3|64:ffn,ffn")  # ffn@h64 twice: the repeat must get distinct weights
    items = {it.key: it for it in op_items(TINY)}
    mods, paths = {}, {}
    for key, _ in model_parts(arch):
        if key not in mods:
            it = items[key]
            mods[key] = it.build(TINY)
            paths[key] = export_onnx(mods[key], tmp_path / f"{key}.onnx", it.example_inputs(TINY), it.output_names)
    out = assemble_model(arch, paths, tmp_path / "model.onnx", TINY.output_dim)
    model = NasBertModel(NasBertConfig.from_arch(arch, TINY)).eval()
    uses: Counter[str] = Counter()

    def copy(dst, src, key):
        k = uses[key]
        uses[key] += 1
        f = np.float32(1 + k * REPEAT_SCALE)
        sd = src.state_dict()
        dst.load_state_dict({n: v * f if v.dtype == torch.float32 and v.numel() >= 16 else v for n, v in sd.items()})

    parts = model_parts(arch)
    emb = mods[parts[0][0]]
    model.embeddings.load_state_dict(emb.emb.state_dict())
    model.embed_proj.load_state_dict(emb.proj.state_dict())
    layers = iter(layer for b in model.blocks for layer in b.layers if type(layer).__name__ != "Identity")
    bounds = iter(model.boundaries)
    for key, role in parts[1:]:
        if role == "op":
            copy(next(layers), mods[key], key)
        elif role == "boundary":
            copy(next(bounds), mods[key].linear, key)
        elif role == "head":
            copy(model.head, mods[key].linear, key)
    feed = make_inputs(model_item(arch).inputs, 3, 11, TINY.vocab_size, seed=1)  # not the export example's shape
    feed["attention_mask"][1, 7:] = 0  # padding reaches the attention and the convolution
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    with torch.no_grad():
        ref = model(torch.from_numpy(feed["input_ids"]), torch.from_numpy(feed["attention_mask"])).last_hidden_state.numpy()
    assert got.shape == (3, 11, TINY.output_dim) and np.abs(got - ref).max() < 1e-4
    import onnx

    mats = [i for i in onnx.load(str(out)).graph.initializer if i.data_type == 1 and len(i.dims) == 2]
    assert len(mats) == 15 and len({bytes(i.raw_data) for i in mats}) == 15  # no two weight matrices alike: none shared


@pytest.mark.slow
def test_exports_are_cached_atomically_and_reused(tmp_path, monkeypatch):
    spec = load_device("cpu-ort")
    c = ExportCache(tmp_path / "cache")
    run = ExportCache(tmp_path / "run")
    model = model_item(MICRO.parse("32:ffn,id|32:ffn,id"))
    seen = []
    files, made = prepare_exports([[], [reference_item(MICRO)], [model]], spec, MICRO, c, run,
                                  progress=lambda p, d, t: seen.append((d, t)))
    parts = {k for k, _ in model_parts(MICRO.parse(model.arch))} | {k for k, _ in model_parts(MICRO.parse(
        reference_item(MICRO).arch))}
    assert made == {"exported": len(parts), "assembled": 2} and seen[-1] == (len(parts) + 2, len(parts) + 2)
    assert set(files) == {"reference", model.key}  # the parts are exported, not returned
    assert files[model.key].is_relative_to(run.root) and files["reference"].is_relative_to(c.root)
    meta = json.loads((files[model.key].parent / "meta.json").read_text())
    assert meta["how"] == "assembled" and meta["artefact"] == "model.onnx" and meta["space_hash"] == MICRO.space_hash()
    assert list((c.root / "tmp").iterdir()) == []  # written under a temporary name, renamed into place
    calls = []
    monkeypatch.setattr(cache_mod, "_convert", lambda job: calls.append(job) or (job["item"].key, 0.0, "exported"))
    again, made = prepare_exports([[], [reference_item(MICRO)], [model]], spec, MICRO, c, run)
    assert again == files and made == {} and calls == []  # everything from the cache


@pytest.mark.slow
def test_exports_run_in_parallel_workers(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_mod, "MIN_JOBS_PER_WORKER", 1)
    spec = load_device("cpu-ort")
    c = ExportCache(tmp_path)
    items = op_items(MICRO)[-2:]  # head and overhead: the smallest exports; the workers' imports dominate
    files, made = prepare_exports([items], spec, MICRO, c, workers=2)
    assert made == {"exported": 2} and set(files) == {it.key for it in items}
    assert all(f.is_file() and f.name == "model.onnx" for f in files.values())


def test_every_onnx_runtime_converts_through_from_onnx():
    from nasbert_deploy.profiling.cache import cacheable
    from nasbert_deploy.runtimes.base import RUNTIMES, get_runtime

    for name in RUNTIMES:  # the cache converts exactly as `compile` does, through the plug-in's own `from_onnx`
        spec = replace(load_device("cpu-ort"), runtime=name)
        assert cacheable(spec) == (name != "torch") == hasattr(get_runtime(name), "from_onnx")
