"""benchmarks/quant_sensitivity.py: one part fake-quantized at a time, scored against the float classifier."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import make_tiny_teacher

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """finetune-teacher's mean-pooled form of a tiny BERT (1 epoch), and a 24-row task file of its labels."""
    from nasbert_deploy.student.finetune import FinetuneConfig, finetune_teacher
    from nasbert_deploy.student.tasks import load_task, sample_task_path

    root = tmp_path_factory.mktemp("sens")
    src = make_tiny_teacher(root / "bert")
    train = load_task(sample_task_path("train")).subset(range(32))
    valid = load_task(sample_task_path("valid")).subset(range(16))
    finetune_teacher(src, train, valid, root / "ft", FinetuneConfig(epochs=1, batch_size=8, max_len=32), pooling="mean")
    known = set(json.loads((root / "ft" / "config.json").read_text())["label2id"])
    rows = [r for r in map(json.loads, sample_task_path("valid").read_text().splitlines()) if r["label"] in known]
    (root / "task.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:24]))
    return root / "ft", root / "task.jsonl"


def test_groups_are_named_up_to_the_first_layer_index():
    from quant_sensitivity import group_of

    assert group_of("nasbert.blocks.3.layers.0.query") == "nasbert.blocks.3"
    assert group_of("bert.encoder.layer.2.attention.self.key") == "bert.encoder.layer.2"
    assert group_of("classifier") == "classifier" and group_of("nasbert.embed_proj") == "nasbert.embed_proj"


def test_every_group_is_scored_against_the_float_model(classifier):
    from quant_sensitivity import run

    model, task = classifier
    res = run(model, task, task, max_len=32, bits=2, log=lambda s: None)
    rows = res["rows"]
    assert rows["float"] == {"accuracy": rows["float"]["accuracy"], "label_loyalty": 1.0, "probability_loyalty": 1.0}
    # the converted teacher has no projections: its groups are its blocks and the classifier
    groups = sorted(k for k in rows if k.startswith("weights of "))
    assert groups == ["weights of classifier", "weights of nasbert.blocks.0", "weights of nasbert.blocks.1"]
    # one row per kind of Linear input; query, key and value share one quantizer, so their rows are the same
    kinds = sorted(k for k in rows if k.startswith("inputs of "))
    assert kinds == sorted(f"inputs of {k}" for k in ("query", "key", "value", "out", "fc1", "fc2", "classifier"))
    assert rows["inputs of query"] == rows["inputs of key"] == rows["inputs of value"]
    for v in rows.values():
        assert 0 <= v["accuracy"] <= 1 and 0 <= v["label_loyalty"] <= 1 and 0 < v["probability_loyalty"] <= 1
    assert rows["all weights"]["probability_loyalty"] < 0.9999  # 2-bit weights move the probabilities
    assert res["examples"] == 24 and res["bits"] == 2 and "cpu" in res["machine"]


def test_smoothquant_rows_and_the_row_filter(classifier):
    from quant_sensitivity import run

    model, task = classifier
    res = run(model, task, task, max_len=32, bits=8, log=lambda s: None, smooth=[0.5, 0.9], only="^(float|activations|every)",
              ratios=[1e6])
    rows = res["rows"]
    assert sorted(rows) == sorted(["float", "activations only", "everything", "activations only, SmoothQuant 0.5",
                                   "everything, SmoothQuant 0.5", "activations only, SmoothQuant 0.9",
                                   "everything, SmoothQuant 0.9", "everything, SmoothQuant 0.5 where max/median >= 1000000.0",
                                   "everything, SmoothQuant 0.9 where max/median >= 1000000.0"])
    assert res["smooth_alphas"] == [0.5, 0.9] and res["smooth_min_ratios"] == [1e6]
    # the smoothed activations are another model than the plain ones (the scales did reach the quantizers)
    assert rows["activations only, SmoothQuant 0.9"] != rows["activations only"]


@pytest.mark.parametrize("extra, needle", [(["--bits", "3"], "--bits 3 is not supported; valid: 8, 4, 2"),
                                           (["--task", "missing.jsonl"], "--task missing.jsonl is not a file"),
                                           (["--smooth", "1.0"], "every alpha must lie strictly between 0 and 1"),
                                           (["--only", "("], "is not a regular expression"),
                                           (["--smooth-ratio", "8"], "together with --smooth ALPHA")])
def test_bad_input_is_one_line_exit_2(classifier, tmp_path, extra, needle):
    model, task = classifier
    args = ["--model", str(model), "--task", str(task), *extra]
    r = subprocess.run([sys.executable, str(BENCH / "quant_sensitivity.py"), *args], capture_output=True, text=True,
                       cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and needle in r.stderr, r.stderr
    assert r.stdout == ""
