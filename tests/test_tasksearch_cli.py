"""`search-task` end to end on a tiny teacher, supernet and latency table: search, resume, final distillation,
export; and the one-line errors before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import tasksearch_setup
from typer.testing import CliRunner

from nasbert_deploy.cli.app import app
from nasbert_deploy.space import TINY

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
FAST = ("--proxy-rows", "24", "--proxy-heldout", "12", "--proxy-epochs", "1", "--seq-len", "32")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, one_thread):
    return tasksearch_setup(tmp_path_factory.mktemp("tasksearch"))


def _args(s: dict, out: Path, *extra: str, latency: str = "1.6", rerank: bool = False) -> list[str]:
    """The tiny search; without the rerank unless `rerank` (the default search reranks) or `extra` sets it."""
    off = () if rerank or "--rerank-top" in extra else ("--rerank-top", "0")
    return ["search-task", "--task", "pydoc-sample", "--teacher-model", str(s["teacher"]), "--device", "cpu-ort",
            "--table", str(s["table"]), "--supernet", str(s["supernet"]), "--max-latency-ms", latency,
            "--out", str(out), *FAST, *off, *extra]


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
    r = _run(_args(setup, out, "--evaluations", "2", "--controller", "evolution", "--final-epochs", "1", rerank=True))
    assert r.exit_code == 0, r.output
    result = json.loads((out / "result.json").read_text())
    arch, rr = result["pick"], result["rerank"]  # the default search reranks its top 4 under 3 proxy seeds
    assert rr["best_arch"] == arch and "pick after the rerank" in r.output
    assert f"picked {arch} by the rerank of {len(rr['candidates'])} candidates" in " ".join(r.output.split())
    assert result["request"]["rerank_top"] == 4 and result["request"]["rerank_seeds"] == 3
    report = json.loads((out / "export" / "report.json").read_text())
    assert report["arch"] == arch and report["validation"]["passed"]
    assert result["export"]["predicted_ms"] == pytest.approx(rr["candidates"][0]["latency_ms"])
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


def test_top_archs_takes_the_best_rewarded_distinct_archs():
    from nasbert_deploy.tasksearch.rerank import top_archs

    a = [{"arch": "x", "reward": 0.5}, {"arch": "y", "reward": 0.7}, {"arch": "x", "reward": 0.5}, {"arch": "z", "reward": 0.0}]
    b = [{"arch": "w", "reward": 0.6}, {"arch": "x", "reward": 0.8}]
    assert top_archs([a, b], 3) == ["x", "y", "w"]  # x's best reward over both searches; z was over budget
    assert top_archs([a], 10) == ["y", "x"]


def test_rerank_scores_the_top_under_more_seeds_and_resumes(setup, tmp_path):
    # a supernet with a candidate table, so NAS-BERT's task-agnostic picks join the rerank
    import shutil

    from nasbert_deploy.search.problem import Budget
    from nasbert_deploy.supernet.candidates import CandidateTable

    supernet = tmp_path / "supernet"
    shutil.copytree(setup["supernet"], supernet)
    losses = [{b: float(i + len(str(b))) / 10 for i, b in enumerate(TINY.enumerate_blocks())} for _ in range(TINY.num_blocks)]
    CandidateTable.from_losses(TINY, losses, {"kind": "test"}).save(supernet / "candidates.json")
    s = {**setup, "supernet": supernet}
    out = tmp_path / "r"
    args = _args(s, out, "--evaluations", "3", "--search-only", "--rerank-top", "2", "--rerank-seeds", "2")
    r = _run(args)
    assert r.exit_code == 0, r.output
    assert "rerank: proxy seed 1 (2/2)" in r.output and "task-agnostic picks" in r.output
    result = json.loads((out / "result.json").read_text())
    rr, search = result["rerank"], result["search"]
    cands = [c["arch"] for c in rr["candidates"]]
    top = sorted({h["arch"]: h["reward"] for h in search["history"] if h["reward"] > 0}.items(), key=lambda kv: -kv[1])
    assert {a for a, _ in top[:2]} <= set(cands)  # the search's two best, plus the agnostic picks
    from nasbert_deploy.export.pipeline import select_arch
    from nasbert_deploy.profiling.table import LatencyTable

    table = LatencyTable.load(setup["table"], TINY)
    from nasbert_deploy.devices import load_device

    agnostic = str(select_arch(load_device("cpu-ort"), Budget(1.6), 1, 32, supernet, [table]).arch)
    assert agnostic in cands
    cache0 = json.loads((out / "search" / "cache.json").read_text())["archs"]
    cache1 = json.loads((out / "search" / "cache.seed1.json").read_text())["archs"]
    for c in rr["candidates"]:  # the search's own seed first, then seed 1; the mean decides; all within budget
        assert c["accuracies"] == [cache0[c["arch"]]["accuracy"], cache1[c["arch"]]["accuracy"]]
        assert c["mean"] == pytest.approx(sum(c["accuracies"]) / 2) and c["latency_ms"] <= 1.6
    assert [c["reward"] for c in rr["candidates"]] == sorted((c["reward"] for c in rr["candidates"]), reverse=True)
    assert result["pick"] == rr["best_arch"] == cands[0]
    r = _run(args)  # again: everything cached, nothing evaluated
    assert r.exit_code == 0, r.output
    assert "candidates to evaluate" not in r.output
    assert json.loads((out / "result.json").read_text())["rerank"] == rr


def test_rerank_options_are_checked(setup, tmp_path):
    r = _run(_args(setup, tmp_path / "x", "--rerank-top", "-1"))
    assert r.exit_code == 2
