"""CLI of distill / finetune / finetune-teacher / evaluate: exit codes, one-line errors, outputs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import make_tiny_teacher
from typer.testing import CliRunner

from nasbert_deploy.cli.app import app

pytestmark = pytest.mark.usefixtures("one_thread")
ARCH = "64:mha,ffn|32:sep3,id"
runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("cli")
    teacher = make_tiny_teacher(root / "teacher")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(["the module provides functions for objects"] * 20 + ["a class has a method"] * 20) + "\n")
    return {"root": root, "teacher": teacher, "corpus": corpus}


def _run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_distill_finetune_evaluate_end_to_end(tiny):
    root = tiny["root"]
    r = _run("distill", "--arch", ARCH, "--init", "random", "--space", "tiny", "--teacher", tiny["teacher"],
             "--corpus", tiny["corpus"], "--valid-corpus", tiny["corpus"], "--out", root / "student", "--steps", "4",
             "--batch-size", "4", "--seq-len", "16")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "held-out hidden MSE" in r.output
    assert "distilling: step 4/4 hidden" in r.output  # not a terminal: plain progress lines, not silence until the end
    assert json.loads((root / "student" / "distill_report.json").read_text())["steps"] == 4
    r = _run("finetune-teacher", "--teacher", tiny["teacher"], "--out", root / "tft", "--epochs", "1", "--max-len", "32")
    assert r.exit_code == 0, r.output
    r = _run("finetune", "--model", root / "student", "--out", root / "sft", "--teacher-model", root / "tft",
             "--lambda", "0.7", "--epochs", "1", "--max-len", "32")  # fmt: skip
    assert r.exit_code == 0, r.output
    config = json.loads((root / "sft" / "finetune_report.json").read_text())["config"]
    assert config["lam"] == 0.7 and config["kd"] == "mse"  # --kd auto: the logits' MSE for a classification task
    r = _run("finetune", "--model", root / "student", "--out", root / "sft-kl", "--teacher-model", root / "tft",
             "--kd", "kl", "--epochs", "1", "--max-len", "32")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "kd" not in json.loads((root / "sft-kl" / "finetune_report.json").read_text())["config"]  # KL: as before --kd
    r = _run("evaluate", "--model", root / "sft", "--teacher-model", root / "tft", "--json", root / "eval.json", "--max-len", 32)
    assert r.exit_code == 0, r.output
    report = json.loads((root / "eval.json").read_text())
    assert report["examples"] == 100 and 0.0 <= report["label_loyalty"] <= 1.0 and report["runtime"] == "torch"
    assert len(report["labels"]) == 6


def test_distill_sentence_embedding_terms_are_options(tiny):
    root = tiny["root"]
    r = _run("distill", "--arch", ARCH, "--init", "random", "--space", "tiny", "--teacher", tiny["teacher"],
             "--corpus", tiny["corpus"], "--out", root / "sent", "--steps", "2", "--batch-size", "4", "--seq-len", "16",
             "--embedding-weight", "0.5", "--similarity-weight", "2", "--similarity-temperature", "0.1")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "embedding" in r.output and "similarity" in r.output  # both terms are trained and shown
    cfg = json.loads((root / "sent" / "distill_report.json").read_text())["config"]
    assert (cfg["embedding_weight"], cfg["similarity_weight"], cfg["similarity_temperature"]) == (0.5, 2.0, 0.1)
    varied = root / "varied.txt"  # held-out rows that differ: identical rows have nothing to rank
    words = tiny["corpus"].read_text().split()
    varied.write_text("\n".join(" ".join(words[i % 7 :: 1 + i % 3][: 4 + i % 9]) for i in range(16)) + "\n")
    r = _run("distill", "--arch", ARCH, "--init", "random", "--space", "tiny", "--teacher", tiny["teacher"],
             "--corpus", tiny["corpus"], "--out", root / "query", "--steps", "2", "--batch-size", "4", "--seq-len", "16",
             "--query-weight", "1", "--query-len", "6", "--valid-corpus", varied)  # fmt: skip
    assert r.exit_code == 0, r.output
    report = json.loads((root / "query" / "distill_report.json").read_text())
    assert (report["config"]["query_weight"], report["config"]["query_len"]) == (1.0, 6)
    assert report["heldout"]["query"] > 0 and "query" in r.output  # trained, shown, and scored on held-out text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("finetune", "--model", "{root}/nothing", "--out", "{root}/o1"), "not a local Hugging Face model folder"),
        (("finetune", "--model", "{teacher}", "--out", "{root}/o2", "--task", "{root}/t.txt"), "valid: .jsonl, .csv, .tsv"),
        (("distill", "--arch", ARCH, "--from-export", "{root}", "--corpus", "{corpus}", "--out", "{root}/o3"), "exactly one"),
        (("distill", "--arch", "64:mha", "--init", "random", "--space", "tiny", "--teacher", "{teacher}",
          "--corpus", "{corpus}", "--out", "{root}/o4"), "block(s)"),  # fmt: skip
        (("distill", "--arch", ARCH, "--init", "random", "--space", "tiny", "--teacher", "{teacher}", "--corpus", "{corpus}",
          "--out", "{root}/o5", "--prediction-weight", "1"), "no masked-LM head"),  # fmt: skip
        (("evaluate", "--model", "{teacher}", "--task", "{root}/missing.jsonl"), "does not exist"),
        (("finetune", "--model", "{teacher}", "--out", "{root}/o1", "--transfer", "{corpus}"), "needs --teacher-model"),
        (("finetune", "--model", "{teacher}", "--out", "{root}/o2", "--teacher-model", "{teacher}",
          "--transfer", "{root}/empty.txt"), "transfer set"),  # fmt: skip
        (("finetune", "--model", "{teacher}", "--out", "{root}/o3", "--kd", "mse"), "needs --teacher-model"),
        (("finetune", "--model", "{teacher}", "--out", "{root}/o4", "--kd", "kl"), "needs --teacher-model"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tiny, args, message):
    (tiny["root"] / "t.txt").write_text("x")
    (tiny["root"] / "empty.txt").write_text("\n")
    fill = {k: str(v) for k, v in tiny.items()}
    r = _run(*(a.format(**fill) for a in args))
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert not any((tiny["root"] / f"o{i}").exists() for i in range(1, 6))
    assert not any(p.name.endswith(".ckpt") for p in tiny["root"].iterdir())


def test_option_ranges_are_checked(tiny):
    r = _run("finetune", "--model", tiny["teacher"], "--out", tiny["root"] / "o", "--lambda", "1.5")
    assert r.exit_code == 2 and "less than or equal to 1" in r.output
    r = _run("finetune", "--model", tiny["teacher"], "--out", tiny["root"] / "o", "--kd", "cosine")
    assert r.exit_code == 2 and "cosine" in r.output and "mse" in r.output
    r = _run("evaluate", "--model", tiny["teacher"], "--runtime", "tensorrt")
    assert r.exit_code == 2 and "tensorrt" in r.output


def test_installed_entry_point_reports_errors_in_one_line(tmp_path):
    exe = shutil.which("nasbert-deploy") or str(Path(sys.executable).parent / "nasbert-deploy")
    r = subprocess.run([exe, "evaluate", "--model", str(tmp_path / "none")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "not a local Hugging Face model folder" in r.stderr
