"""`search-task` end to end on a tiny teacher, supernet and latency table: search, resume, final distillation,
export; and the one-line errors before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import make_supernet_dir, make_tiny_teacher, tiny_table
from typer.testing import CliRunner

from nasbert_deploy.cli.app import app
from nasbert_deploy.space import TINY

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
FAST = ("--proxy-rows", "24", "--proxy-heldout", "12", "--proxy-epochs", "1", "--seq-len", "32")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, one_thread):
    from nasbert_deploy.student.finetune import FinetuneConfig, finetune_teacher
    from nasbert_deploy.student.tasks import task_splits

    root = tmp_path_factory.mktemp("tasksearch")
    encoder = make_tiny_teacher(root / "encoder")
    train, valid = task_splits("pydoc-sample")
    finetune_teacher(encoder, train, valid, root / "teacher", FinetuneConfig(epochs=1, max_len=32))
    supernet, _ = make_supernet_dir(root)
    return {"root": root, "teacher": root / "teacher", "supernet": supernet, "table": tiny_table(root / "t.json")}


def _args(s: dict, out: Path, *extra: str, latency: str = "1.6") -> list[str]:
    return ["search-task", "--task", "pydoc-sample", "--teacher-model", str(s["teacher"]), "--device", "cpu-ort",
            "--table", str(s["table"]), "--supernet", str(s["supernet"]), "--max-latency-ms", latency,
            "--out", str(out), *FAST, *extra]


def _run(args: list[str]):
    return runner.invoke(app, args, env={"COLUMNS": "80"})


def test_search_resume_is_exact_and_shares_the_cache(setup):
    root = setup["root"]
    r = _run(_args(setup, root / "a", "--evaluations", "2", "--search-only"))
    assert r.exit_code == 0, r.output
    assert "episode 1: eval 1/2" in r.output and "resuming" not in r.output
    r = _run(_args(setup, root / "a", "--evaluations", "5", "--search-only"))  # more evaluations: resumes
    assert r.exit_code == 0, r.output
    assert "resuming the task search at episode 3 (2 of 5 evaluations done" in r.output
    r = _run(_args(setup, root / "b", "--evaluations", "5", "--search-only"))  # one go
    assert r.exit_code == 0, r.output
    a = json.loads((root / "a" / "result.json").read_text())["search"]
    b = json.loads((root / "b" / "result.json").read_text())["search"]
    assert [h["arch"] for h in a["history"]] == [h["arch"] for h in b["history"]]
    assert [h["reward"] for h in a["history"]] == [h["reward"] for h in b["history"]]
    assert a["evaluations"] == 5
    cache = json.loads((root / "a" / "search" / "cache.json").read_text())["archs"]
    assert set(cache) == {h["arch"] for h in a["history"]}
    for h in a["history"]:  # every evaluated arch is within the hard budget and cached with its costs
        assert h["latency_ms"] <= 1.6 and cache[h["arch"]]["params"] == TINY.params(TINY.parse(h["arch"]))
        assert 0.0 <= cache[h["arch"]]["accuracy"] <= 1.0
    r = _run(_args(setup, root / "a", "--evaluations", "5", "--search-only", "--controller", "evolution"))
    assert r.exit_code == 2 and "other settings (controller differ)" in r.stderr


def test_final_distillation_and_export(setup):
    out = setup["root"] / "full"
    r = _run(_args(setup, out, "--evaluations", "2", "--controller", "evolution", "--final-epochs", "1"))
    assert r.exit_code == 0, r.output
    result = json.loads((out / "result.json").read_text())
    arch = result["search"]["best_arch"]
    report = json.loads((out / "export" / "report.json").read_text())
    assert report["arch"] == arch and report["validation"]["passed"]
    assert result["export"]["predicted_ms"] == pytest.approx(result["search"]["best"]["latency_ms"])
    assert result["export"]["measured_ms"] == report["latency"]["measured"]["median_ms"] > 0
    assert result["export"]["validation_passed"] is True
    assert 0.0 <= result["final"]["valid"]["accuracy"] <= 1.0 and result["final"]["valid"]["label_loyalty"] is not None
    from nasbert_deploy.student.finetune import load_classifier

    model, _ = load_classifier(out / "student")
    assert model.config.arch == arch and model.config.num_labels == len(result["labels"])
    assert "exported to" in r.output and "valid accuracy" in r.output


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("infeasible", "no architecture within 0.01 ms at batch 1, seq 32: the fastest takes"),
        ("params", "params: the smallest has"),
        ("labels", "the task has labels the teacher does not cover: zzz"),
        ("other space", "does not cover space 'tiny'"),
        ("device", "--device"),
        ("unwritable", "cannot write --out"),
        ("not ours", "holds other files"),
        ("encoder", "is not a classifier"),
    ],
)
def test_errors_are_one_line_before_any_work(setup, case, message, tmp_path):
    from nasbert_deploy.resources import shipped_dir

    out = tmp_path / "out"
    args = _args(setup, out, "--evaluations", "2", latency="0.01" if case == "infeasible" else "1.6")
    if case == "params":
        args += ["--max-params", "10"]
    if case == "labels":
        task = tmp_path / "task.jsonl"
        task.write_text("".join(json.dumps({"text": f"row {i}", "label": "zzz" if i == 3 else "library"}) + "\n"
                                for i in range(20)))
        args[args.index("pydoc-sample")] = str(task)
    if case == "other space":
        args[args.index(str(setup["table"]))] = str(shipped_dir("profiles") / "cpu-ort.json")
    if case == "device":
        args[args.index("cpu-ort")] = "no-such-device"
    if case == "unwritable":
        args[args.index(str(out))] = "/proc/nasbert-test/out"
    if case == "not ours":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    if case == "encoder":
        args[args.index(str(setup["teacher"]))] = str(setup["root"] / "encoder")
    r = _run(args)
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert message in " ".join(r.stderr.split()), r.stderr
    assert not out.exists() or case == "not ours"
    if case == "not ours":
        assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
