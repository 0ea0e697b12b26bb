"""benchmarks/bench_plane.py end to end on tiny classifiers: every point scored and timed on both CPU runtimes,
labels matched by name (a point whose head orders the classes differently scores as the same model), resumable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import make_tiny_teacher, write_word_task

ROOT = Path(__file__).resolve().parent.parent


def _classifier(encoder: Path, out: Path, labels: str) -> Path:
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(0)
    clf = BertForSequenceClassification.from_pretrained(encoder, num_labels=3, id2label=dict(enumerate(labels)),
                                                        label2id={c: i for i, c in enumerate(labels)})
    clf.save_pretrained(out)
    AutoTokenizer.from_pretrained(encoder).save_pretrained(out)
    return out


@pytest.mark.slow
def test_plane_scores_and_times_every_point(tmp_path):
    encoder = make_tiny_teacher(tmp_path / "encoder")
    teacher = _classifier(encoder, tmp_path / "teacher", "xyz")
    # the same weights with the classes listed in another order: must score exactly as the teacher does
    flipped = _classifier(encoder, tmp_path / "flipped", "xyz")
    cfg = json.loads((flipped / "config.json").read_text())
    from safetensors.torch import load_file, save_file

    w = load_file(flipped / "model.safetensors")
    perm = [2, 0, 1]  # new class i is old class perm[i]
    w["classifier.weight"], w["classifier.bias"] = w["classifier.weight"][perm], w["classifier.bias"][perm]
    save_file(w, flipped / "model.safetensors", metadata={"format": "pt"})
    names = "xyz"
    cfg["id2label"] = {str(i): names[p] for i, p in enumerate(perm)}
    cfg["label2id"] = {names[p]: i for i, p in enumerate(perm)}
    (flipped / "config.json").write_text(json.dumps(cfg))
    task = tmp_path / "task"
    task.mkdir()
    write_word_task(task / "train.jsonl", 64, 0)
    write_word_task(task / "valid.jsonl", 24, 1)
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_plane.py"), "--task-dir", str(task), "--teacher", str(teacher),
           "--point", f"flipped={flipped}", "--eval-len", "16", "--rounds", "2", "--work", str(tmp_path / "work"),
           "--plot", str(tmp_path / "plane.png")]
    env = {"PYTHONPATH": f"{ROOT}:{ROOT / 'benchmarks'}", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "work" / "plane.json").read_text())
    for dev in ("cpu-ort", "cpu-openvino"):
        for name in ("teacher fp32", "teacher PTQ INT8", "flipped"):
            assert res[f"score/{name}/{dev}"]["examples"] == 24
            assert res[f"latency/{dev}"][name]["median_ms"] > 0
        assert res[f"latency/{dev}"]["teacher fp32"]["speedup"] == 1.0
        same = res[f"score/flipped/{dev}"]
        assert same["label_loyalty"] == 1.0 and same["probability_loyalty"] > 0.999
    assert (tmp_path / "plane.png").stat().st_size > 0 and "flipped" in r.stdout
    # a second run reads everything from the cache
    r2 = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r2.returncode == 0 and ": accuracy" not in r2.stdout and ": accuracy" in r.stdout
    bad = subprocess.run([*cmd[:2], "--task-dir", str(task), "--teacher", str(teacher), "--point", "nope"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert bad.returncode == 2 and "NAME=FOLDER" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_quantized_openvino_irs_open_under_the_int8_precision_policy(tmp_path, monkeypatch):
    """NNCF and KDLSQ IRs (FakeQuantize nodes) open as the int8 device specs run them (precision unpinned); float IRs
    pinned to f32. Opening KDLSQ pinned beside NNCF unpinned once made KDLSQ look up to 1.21x slower."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_quantize

    opened = []
    monkeypatch.setattr(bench_quantize, "OvCompiled", lambda path, spec: opened.append(spec.precision))
    quantized, plain = tmp_path / "q.xml", tmp_path / "f.xml"
    quantized.write_text('<net><layers><layer id="3" name="fq" type="FakeQuantize" version="opset1"/></layers></net>')
    plain.write_text('<net><layers><layer id="3" name="mm" type="MatMul" version="opset1"/></layers></net>')
    bench_quantize._open(quantized, True)
    bench_quantize._open(plain, True)
    bench_quantize._open(plain, True, int8=True)
    assert opened == ["int8", "fp32", "int8"]
