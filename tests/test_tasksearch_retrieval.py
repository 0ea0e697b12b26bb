"""`search-task` on a retrieval task (query/document pairs): the proxy is a short retrieval distillation scored by
held-out MRR, the final student an encoder distilled on every pair, exported and scored beside the teacher -- on the
tiny encoder as the teacher, a random TINY supernet and a tiny table (numbers, not mocks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import make_supernet_dir, make_tiny_teacher, one_line_error, tiny_table, write_pair_task, write_word_task
from typer.testing import CliRunner

from nasbert_deploy.cli.app import app
from nasbert_deploy.tasksearch.proxy import ProxyConfig

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
FAST = ("--proxy-rows", "64", "--proxy-heldout", "32", "--proxy-epochs", "1", "--seq-len", "32")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("tasksearch-retrieval")
    supernet, net = make_supernet_dir(root)
    return {"root": root, "teacher": make_tiny_teacher(root / "teacher"), "supernet": supernet, "net": net,
            "table": tiny_table(root / "t.json"), "train": write_pair_task(root / "train.jsonl", 160, 0),
            "valid": write_pair_task(root / "valid.jsonl", 40, 1)}


def _args(s: dict, out: Path, *extra: str) -> list[str]:
    return ["search-task", "--task", str(s["train"]), "--teacher-model", str(s["teacher"]), "--device", "cpu-ort",
            "--table", str(s["table"]), "--supernet", str(s["supernet"]), "--max-latency-ms", "1.6", "--out", str(out),
            *FAST, *extra]


def _run(args: list[str]):
    return runner.invoke(app, args, env={"COLUMNS": "80"})


def test_proxy_learns_and_is_reproducible(setup):
    from nasbert_deploy.student.retrieval import load_retrieval
    from nasbert_deploy.student.retrieval_training import load_encoder
    from nasbert_deploy.tasksearch.retrieval import (
        RetrievalProxy,
        proxy_config,
        proxy_teacher_embeddings,
        split_proxy_pairs,
    )

    data = load_retrieval(setup["train"])
    _, tok = load_encoder(setup["teacher"], "--teacher-model", convert=False)
    cfg = proxy_config(ProxyConfig(rows=96, heldout=48, epochs=3, max_len=32))
    assert cfg.batch_size == 32 and cfg.temperature == 0.05  # in-batch negatives; cosine similarities
    train, held = split_proxy_pairs(data, cfg)
    assert len(train) == 96 and len(held) == 48 and not set(train.queries) & set(held.queries)
    t_q, t_d = proxy_teacher_embeddings(setup["teacher"], train, tok, 32)
    assert t_q.shape == (96, 48) and t_d.shape == (len(train.documents), 48)
    arch = "64:mha,ffn|32:sep3,ffn"
    scores = {}
    for name, c in {"trained": cfg, "untouched": ProxyConfig(**{**cfg.to_dict(), "lr": 0.0})}.items():
        proxy = RetrievalProxy(setup["net"], tok, train, held, t_q, t_d, c)
        scores[name] = proxy.evaluate(arch)
    again = RetrievalProxy(setup["net"], tok, train, held, t_q, t_d, cfg).evaluate(arch)
    assert again.accuracy == scores["trained"].accuracy and again.macro_f1 == scores["trained"].macro_f1
    assert scores["trained"].accuracy > scores["untouched"].accuracy + 0.1, scores
    assert 0.0 <= scores["trained"].macro_f1 <= 1.0 and scores["trained"].label_loyalty is None


def test_search_resumes_then_distils_exports_and_scores_the_pick(setup):
    root = setup["root"]
    r = _run(_args(setup, root / "a", "--evaluations", "2", "--search-only", "--rerank-top", "0"))
    assert r.exit_code == 0, r.output
    assert "episode 1: eval 1/2 (50% of budget) MRR" in r.output
    r = _run(_args(setup, root / "a", "--evaluations", "3", "--valid", str(setup["valid"]), "--final-epochs", "1",
                   "--rerank-top", "2", "--rerank-seeds", "2"))
    assert r.exit_code == 0, r.output
    assert "resuming the task search at episode 3 (2 of 3 evaluations done" in r.output
    assert "rerank: " in r.output and " proxy MRR " in " ".join(r.output.split())
    result = json.loads((root / "a" / "result.json").read_text())
    arch, v = result["pick"], result["final"]["valid"]
    assert result["labels"] == [] and result["valid_rows"] == 40 and result["rerank"]["best_arch"] == arch
    assert result["retrieval_proxy"]["batch_size"] == 32 and result["retrieval_proxy"]["temperature"] == 0.05
    cache = json.loads((root / "a" / "search" / "cache.json").read_text())["archs"]
    for h in result["search"]["history"]:
        assert h["latency_ms"] <= 1.6 and 0.0 < cache[h["arch"]]["accuracy"] <= 1.0  # accuracy: held-out MRR
    assert set(v) >= {"mrr", "recall@1", "recall@10", "teacher_mrr", "kept_mrr", "ranking_loyalty@10"}
    assert v["mrr"] == pytest.approx(result["final"]["best"]["mrr"])  # the kept weights are the ones scored
    assert f"valid MRR {v['mrr']:.3f}" in r.output
    report = json.loads((root / "a" / "export" / "report.json").read_text())
    assert report["arch"] == arch and report["validation"]["passed"] and result["export"]["measured_ms"] > 0
    r = runner.invoke(app, ["evaluate", "--model", str(root / "a" / "student"), "--task", str(setup["valid"]),
                            "--json", str(root / "eval.json"), "--max-len", "32"])
    assert r.exit_code == 0, r.output
    assert json.loads((root / "eval.json").read_text())["mrr"] == pytest.approx(v["mrr"], abs=1e-4)
    cfg = json.loads((root / "a" / "student" / "config.json").read_text())
    assert cfg["arch"] == arch and not cfg.get("id2label", {}).get("1")  # an encoder, no task head


def test_bad_input_is_one_line(setup, tmp_path):
    from nasbert_deploy.student.finetune import FinetuneConfig, finetune_teacher
    from nasbert_deploy.student.tasks import task_splits

    cls = write_word_task(tmp_path / "cls.jsonl", 12, 0)
    clf = tmp_path / "clf"
    finetune_teacher(setup["teacher"], *task_splits(str(cls), None, 0.25), clf, FinetuneConfig(epochs=1, max_len=16))
    cases = [
        (("--kd", "mse"), "--kd mse"),
        (("--transfer", str(cls)), "--transfer is for classification"),
        (("--valid", str(cls)), "is not a retrieval file"),
    ]
    for extra, needle in cases:
        one_line_error(_run(_args(setup, tmp_path / "o", *extra)), needle)
    args = _args(setup, tmp_path / "o")
    args[args.index("--teacher-model") + 1] = str(clf)
    one_line_error(_run(args), "is a task model")
    assert not (tmp_path / "o").exists()


def test_shared_cache_reuses_scores_and_the_teacher_is_not_reloaded(setup, monkeypatch):
    """`--cache`: a second search of the same proxy setting (another latency weight, its own --out) takes the first
    one's scores instead of training those archs again, and the teacher's cached embeddings spare loading it; on
    pairs the proxy defaults are retrieval-sized (2048 pairs, 1000 held-out queries)."""
    from nasbert_deploy.tasksearch import retrieval

    root, shared = setup["root"], setup["root"] / "shared" / "proxy-cache.json"
    calls = {"evaluate": 0, "load": 0}
    evaluate, load = retrieval.RetrievalProxy.evaluate, retrieval.load_encoder

    def counted_evaluate(self, arch):
        calls["evaluate"] += 1
        return evaluate(self, arch)

    def counted_load(*a, **k):
        calls["load"] += 1
        return load(*a, **k)

    monkeypatch.setattr(retrieval.RetrievalProxy, "evaluate", counted_evaluate)
    monkeypatch.setattr(retrieval, "load_encoder", counted_load)
    common = ("--evaluations", "3", "--search-only", "--rerank-top", "0", "--cache", str(shared))
    r = _run(_args(setup, root / "c1", *common))
    assert r.exit_code == 0, r.output
    first = json.loads(shared.read_text())["archs"]
    assert calls["evaluate"] == len(first) == 3 and not (root / "c1" / "search" / "cache.json").exists()
    calls.update(evaluate=0, load=0)
    r = _run(_args(setup, root / "c2", *common, "--latency-weight", "0"))
    assert r.exit_code == 0, r.output
    seen = [h["arch"] for h in json.loads((root / "c2" / "result.json").read_text())["search"]["history"]]
    assert calls["evaluate"] == len(set(seen) - set(first)) < len(set(seen)) and calls["load"] == 0
    assert set(json.loads(shared.read_text())["archs"]) == set(first) | set(seen)
    args = _args(setup, root / "c3", "--evaluations", "1", "--search-only", "--rerank-top", "0")
    for opt in ("--proxy-rows", "--proxy-heldout"):
        del args[args.index(opt) : args.index(opt) + 2]
    r = _run(args)
    assert r.exit_code == 0, r.output
    proxy = json.loads((root / "c3" / "result.json").read_text())["request"]["proxy"]
    assert (proxy["rows"], proxy["heldout"]) == (retrieval.PROXY_ROWS, retrieval.PROXY_HELDOUT) == (2048, 1000)


def test_bad_cache_is_one_line(setup, tmp_path):
    (tmp_path / "other.json").write_text('{"not": "a cache"}')
    for cache, needle in ((tmp_path, "is a folder"), (tmp_path / "other.json", "is not a proxy cache")):
        one_line_error(_run(_args(setup, tmp_path / "o", "--cache", str(cache))), f"--cache {cache}", needle)
        assert not (tmp_path / "o").exists()
    assert (tmp_path / "other.json").read_text() == '{"not": "a cache"}'
