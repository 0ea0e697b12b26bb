"""benchmarks/time_files.py: exported files timed side by side on both CPU runtimes, ratios to each runtime's first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import make_tiny_teacher

ROOT = Path(__file__).resolve().parent.parent
ENV = {"PYTHONPATH": f"{ROOT}:{ROOT / 'benchmarks'}", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "time_files.py"), *args], capture_output=True,
                          text=True, env=ENV, timeout=600)


def test_files_are_timed_side_by_side_with_ratios(tmp_path):
    from transformers import BertModel

    from nasbert_deploy.runtimes.convert import FirstOutput, export_onnx

    model = BertModel.from_pretrained(make_tiny_teacher(tmp_path / "tiny")).eval()
    ids = torch.randint(5, 1000, (1, 16))
    path = export_onnx(FirstOutput(model), tmp_path / "m.onnx", {"input_ids": ids, "attention_mask": torch.ones_like(ids)},
                       ["last_hidden_state"])
    r = _run("--ort", f"a={path}", "--ort", f"b={path}", "--openvino", f"c={path}", "--ort-default", f"d={path}",
             "--seq", "16", "--vocab", "1000", "--rounds", "2", "--clock", "cpu")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [line.split() for line in r.stdout.splitlines()[2:]]
    assert [(x[0], x[1]) for x in rows] == [("onnxruntime", "a"), ("onnxruntime", "b"), ("openvino", "c"), ("ort-default", "d")]
    assert all(float(x[2]) > 0 for x in rows) and all(float(rows[i][4]) == 1.0 for i in (0, 2, 3))


def test_a_file_that_takes_token_type_ids_is_timed(tmp_path):
    """A Hugging Face classifier's export (`prune`'s) names token_type_ids among its inputs: fed as zeros."""
    from transformers import BertForSequenceClassification

    from nasbert_deploy.runtimes.convert import FirstOutput, export_onnx

    model = BertForSequenceClassification.from_pretrained(make_tiny_teacher(tmp_path / "tiny"), num_labels=3).eval()
    ids = torch.randint(5, 1000, (2, 16))
    example = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    path = export_onnx(FirstOutput(model), tmp_path / "clf.onnx", example, ["logits"])
    r = _run("--ort", f"a={path}", "--openvino", f"b={path}", "--seq", "16", "--vocab", "1000", "--rounds", "1")
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.parametrize("args, needle", [([], "no files"), (["--ort", "x=missing.onnx"], "is not NAME=FILE"),
                                          (["--openvino", "nofile"], "is not NAME=FILE"),
                                          (["--ort-default", "x=missing.onnx"], "is not NAME=FILE"),
                                          (["--ort", "x=EMPTY", "--vocab", "3"], "a vocabulary of 6 ids")])
def test_bad_input_is_one_line_exit_2(args, needle, tmp_path):
    (tmp_path / "empty.onnx").write_bytes(b"")  # checked before any file is opened
    r = _run(*[a.replace("EMPTY", str(tmp_path / "empty.onnx")) for a in args])
    assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1
