"""distill / finetune under torchrun: 2 gloo processes on the CPU against one process with twice the batch.

Each test spawns two ranks that run an interrupted run (rank 1 starts from other weights, which rank 0's replace)
and then resume it; the ranks must hold identical weights at the interrupt and at the end, rank 0 alone writes
the checkpoint and the output, and the result must match one process trained with the global batch.
"""

from __future__ import annotations

import datetime
import json
import os
import random
import socket
import sys
from pathlib import Path

import pytest
import torch
from helpers import make_tiny_teacher, tiny_vocab
from safetensors.torch import load_file, save_file

from nasbert_deploy.model.distributed import allreduce_grads, shard
from nasbert_deploy.model.loop import checkpoint_dir
from nasbert_deploy.space import TINY
from nasbert_deploy.student.distill import DistillConfig, build_student, distill
from nasbert_deploy.student.finetune import FinetuneConfig, finetune, load_classifier
from nasbert_deploy.student.tasks import load_task, sample_task_path
from nasbert_deploy.teacher import load_teacher

pytestmark = pytest.mark.usefixtures("one_thread")
ARCH = "64:mha,ffn|32:sep3,id"
B = 3  # rows per process and step
DISTILL = dict(steps=6, batch_size=B, seq_len=12, lr=2e-3, intermediate_weight=1.0, checkpoint_every=100)
FINETUNE = dict(epochs=2, max_len=16, lr=3e-3, lam=0.5, temperature=2.0)
STOP = {"distill": 4, "finetune": 5}  # the step after which Ctrl-C hits every rank (finetune: inside epoch 2)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def _keyword_task(path: Path, n: int, seed: int) -> Path:
    """Texts of 5 whole-word tokens (no padding, so batch shapes do not matter); the label names a keyword."""
    words = [w for w in tiny_vocab() if w.isalpha() and len(w) > 3]
    keys, fill = words[:3], words[3:30]
    r = random.Random(seed)
    with path.open("w") as f:
        for _ in range(n):
            k = r.randrange(3)
            text = r.sample(fill, 4) + [keys[k]]
            r.shuffle(text)
            f.write(json.dumps({"text": " ".join(text), "label": "xyz"[k]}) + "\n")
    return path


def _student():
    return build_student(ARCH, init="random", space=TINY)


def _run_distill(root: Path, rank: int, snap: dict) -> dict:
    teacher, texts = load_teacher(root / "teacher"), json.loads((root / "texts.json").read_text())
    cfg = DistillConfig(**DISTILL)
    student = _student()

    def stop(step, _total, _values):
        if step == STOP["distill"]:
            snap.update(_state(student.model))
            raise KeyboardInterrupt

    if rank:
        with torch.no_grad():  # another start: rank 0's weights must replace it
            for p in student.model.parameters():
                p.add_(0.1)
    try:
        distill(student, teacher, texts, root / "out", cfg, progress=stop)
    except KeyboardInterrupt:
        pass
    student, seen, notes = _student(), [], []
    report = distill(student, teacher, texts, root / "out", cfg, texts[:6], progress=lambda s, n, v: seen.append(s),
                     note=notes.append)
    return {"state": _state(student.model), "report": report, "seen": seen, "notes": notes}


def _run_finetune(root: Path, rank: int, snap: dict) -> dict:
    import nasbert_deploy.student.finetune as ft

    train, valid = load_task(root / "train.jsonl"), load_task(root / "valid.jsonl")
    cfg = FinetuneConfig(batch_size=B, **FINETUNE)
    real, trained = ft.train_classifier, []

    def spy(model, *a, **k):  # keeps the model `finetune` builds; rank 1 starts from other weights
        trained.append(model)
        if rank:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.1)
        return real(model, *a, **k)

    def stop(step, _total, _values):
        if step == STOP["finetune"]:
            snap.update(_state(trained[-1]))
            raise KeyboardInterrupt

    ft.train_classifier = spy
    try:
        try:
            finetune(root / "student", train, valid, root / "out", cfg, root / "teacher-clf", progress=stop)
        except KeyboardInterrupt:
            pass
        seen, notes = [], []
        report = finetune(root / "student", train, valid, root / "out", cfg, root / "teacher-clf",
                          progress=lambda s, n, v: seen.append(s), note=notes.append)
    finally:
        ft.train_classifier = real
    return {"state": _state(trained[-1]), "report": report, "seen": seen, "notes": notes}


def _worker(rank: int, world: int, port: int, root: str, kind: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        snap: dict = {}
        res = (_run_distill if kind == "distill" else _run_finetune)(Path(root), rank, snap)
        ckpt_state = checkpoint_dir(Path(root) / "out") / "state.json"
        save_file(snap, f"{root}/snap{rank}.safetensors")
        save_file(res["state"], f"{root}/final{rank}.safetensors")
        info = {k: res[k] for k in ("report", "seen", "notes")}
        (Path(root) / f"rank{rank}.json").write_text(json.dumps({**info, "ckpt_left": ckpt_state.exists()}))
    finally:
        torch.distributed.destroy_process_group()


def _spawn(root: Path, kind: str) -> list[dict]:
    """Two ranks; forked where possible (a spawned rank spends ~10 s importing torch and transformers again)."""
    method = "fork" if sys.platform == "linux" else "spawn"
    torch.multiprocessing.start_processes(_worker, args=(2, _port(), str(root), kind), nprocs=2, start_method=method)
    return [json.loads((root / f"rank{r}.json").read_text()) for r in range(2)]


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=atol) for k in a)


@pytest.mark.slow
def test_distill_two_processes_equal_one_process_with_the_global_batch_and_resume(tmp_path):
    teacher_dir = make_tiny_teacher(tmp_path / "teacher")
    tok = load_teacher(teacher_dir).tokenizer
    long_texts = [t for t in load_task(sample_task_path("train")).texts if len(tok(t)["input_ids"]) > DISTILL["seq_len"]]
    texts = long_texts[:40]  # all truncated to seq_len: every rank's mean is over as many tokens
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    ranks = _spawn(tmp_path, "distill")

    s0, s1 = load_file(str(tmp_path / "snap0.safetensors")), load_file(str(tmp_path / "snap1.safetensors"))
    assert _close(s0, s1, 0.0)  # at the interrupt: rank 1 trained from rank 0's weights
    f0, f1 = load_file(str(tmp_path / "final0.safetensors")), load_file(str(tmp_path / "final1.safetensors"))
    assert _close(f0, f1, 0.0)
    for r in ranks:  # both resumed from rank 0's checkpoint and ran the remaining steps
        assert r["seen"] == list(range(STOP["distill"] + 1, DISTILL["steps"] + 1))
        assert r["report"]["world_size"] == 2 and r["report"]["steps"] == DISTILL["steps"]
    assert ranks[0]["notes"] == [f"resuming from step {STOP['distill']} of {DISTILL['steps']}"]
    assert ranks[1]["report"]["heldout"] == ranks[0]["report"]["heldout"]  # rank 0's report, computed there only
    assert not ranks[0]["ckpt_left"] and (tmp_path / "out" / "distill_report.json").is_file()
    assert json.loads((tmp_path / "out" / "distill_report.json").read_text())["world_size"] == 2

    one = _student()  # one process, twice the batch: the same global batches and the same mean loss
    report = distill(one, load_teacher(teacher_dir), texts, tmp_path / "one", DistillConfig(**{**DISTILL, "batch_size": 2 * B}))
    assert report["world_size"] == 1
    start = _state(_student().model)
    assert any((f0[k] - start[k]).abs().max() > 1e-3 for k in f0)  # it trained
    assert _close(f0, _state(one.model), 2e-5)
    assert report["history"][-1][1] == pytest.approx(ranks[0]["report"]["history"][-1][1], rel=1e-4)


@pytest.mark.slow
def test_finetune_two_processes_equal_one_process_with_the_global_batch_and_resume(tmp_path):
    from transformers import AutoTokenizer

    teacher_dir = make_tiny_teacher(tmp_path / "teacher")
    clf, tok = load_classifier(teacher_dir, ["x", "y", "z"])  # a teacher classifier (random head) for task KD
    clf.save_pretrained(tmp_path / "teacher-clf")
    tok.save_pretrained(tmp_path / "teacher-clf")
    student = _student().model
    student.config.classifier_dropout = 0.0  # dropout masks would differ between one batch of 2B and two of B
    student.save_pretrained(tmp_path / "student")
    AutoTokenizer.from_pretrained(teacher_dir).save_pretrained(tmp_path / "student")
    _keyword_task(tmp_path / "train.jsonl", 16, 0)  # 16 rows, global batch 6: 3 steps an epoch, the last of 4 rows
    _keyword_task(tmp_path / "valid.jsonl", 9, 1)  # rank 1's slice of it is 1 row
    ranks = _spawn(tmp_path, "finetune")

    s0, s1 = load_file(str(tmp_path / "snap0.safetensors")), load_file(str(tmp_path / "snap1.safetensors"))
    assert _close(s0, s1, 0.0)
    for r in ranks:
        assert r["seen"] == list(range(STOP["finetune"] + 1, 7))
        assert r["report"]["world_size"] == 2
    notes = ranks[0]["notes"]
    resumed = notes.index(f"resuming from step {STOP['finetune']} of 6")
    assert all("from the cache" in n for n in notes[:resumed])  # the resumed run reads the teacher's logits back
    scored = [n for n in notes[resumed + 1:] if n.startswith("epoch ")]  # the epochs that ended after the resume
    assert [n.split(":")[0] for n in scored] == [f"epoch {h['epoch']}/2" for h in ranks[0]["report"]["history"]
                                                 if h["epoch"] * 3 > STOP["finetune"]]
    assert ranks[0]["report"]["history"] == ranks[1]["report"]["history"]  # every rank scored every epoch alike
    assert not ranks[0]["ckpt_left"]
    f0, f1 = load_file(str(tmp_path / "final0.safetensors")), load_file(str(tmp_path / "final1.safetensors"))
    assert _close(f0, f1, 0.0)  # the same weights kept on both ranks
    assert _close(f0, load_file(str(tmp_path / "out" / "model.safetensors")), 0.0)  # and written by rank 0

    cfg = FinetuneConfig(batch_size=2 * B, **FINETUNE)
    one = finetune(tmp_path / "student", load_task(tmp_path / "train.jsonl"), load_task(tmp_path / "valid.jsonl"),
                   tmp_path / "one", cfg, tmp_path / "teacher-clf")
    assert one["best"] == ranks[0]["report"]["best"]  # the same epoch kept
    assert [h["valid_macro_f1"] for h in one["history"]] == [h["valid_macro_f1"] for h in ranks[0]["report"]["history"]]
    ref = load_file(str(tmp_path / "one" / "model.safetensors"))
    start = load_file(str(tmp_path / "student" / "model.safetensors"))
    assert any((f0[f"nasbert.{k}"] - start[k]).abs().max() > 1e-3 for k in start)  # it trained
    assert _close(f0, ref, 2e-5)


def test_uneven_gradients_average_as_one_process(monkeypatch):
    """`allreduce_grads(uneven=True)`: a rank without a gradient adds zeros; one no rank has stays None."""
    a, b, c = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
    a.grad, b.grad = torch.tensor([2.0, 4.0]), None  # this rank; the other rank (simulated) has a: [0, 2], b: [6, 6]
    others = torch.tensor([0.0, 2.0, 6.0, 6.0, 0.0, 0.0, 1.0, 1.0, 0.0])

    def all_reduce(t):
        t += others

    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    allreduce_grads([a, b, c], world=2, uneven=True)
    assert a.grad.tolist() == [1.0, 3.0] and b.grad.tolist() == [3.0, 3.0] and c.grad is None
    assert [list(shard(5, r, 2)) for r in range(2)] == [[0, 1], [2, 3, 4]] and list(shard(1, 0, 2)) == []


def _cli_worker(rank: int, world: int, port: int, root: str, args: list[str]) -> None:
    """One torchrun process of a command: torchrun's environment, then the command line in this process."""
    from typer.testing import CliRunner

    from nasbert_deploy.cli.app import app

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), NASBERT_DEPLOY_PROGRESS_S="0")  # fmt: skip
    res = CliRunner().invoke(app, args)
    (Path(root) / f"cli{rank}.json").write_text(json.dumps({"code": res.exit_code, "out": res.output}))


@pytest.mark.slow
def test_distill_and_finetune_commands_under_torchrun_print_on_rank_zero_only(tmp_path):
    teacher = make_tiny_teacher(tmp_path / "teacher")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(["the module provides functions for objects"] * 12 + ["a class has a method"] * 12) + "\n")
    _keyword_task(tmp_path / "train.jsonl", 14, 0)
    _keyword_task(tmp_path / "valid.jsonl", 6, 1)
    commands = {
        "distill": ["distill", "--arch", ARCH, "--init", "random", "--space", "tiny", "--teacher", teacher, "--corpus",
                    corpus, "--out", tmp_path / "student", "--steps", "3", "--batch-size", "2", "--seq-len", "12"],
        "finetune": ["finetune", "--model", tmp_path / "student", "--out", tmp_path / "clf", "--task",
                     tmp_path / "train.jsonl", "--valid", tmp_path / "valid.jsonl", "--epochs", "2", "--batch-size", "4",
                     "--max-len", "16", "--device", "cpu"],
    }  # fmt: skip
    expected = {"distill": ["distilling: step 3/3", "distilled ->", "│ processes"],
                "finetune": ["fine-tuning: step 4/4", "fine-tuned ->", "│ processes"]}  # 14 rows, 8 a step: 2 steps an epoch
    method = "fork" if sys.platform == "linux" else "spawn"
    for name, args in commands.items():
        torch.multiprocessing.start_processes(_cli_worker, args=(2, _port(), str(tmp_path), [str(a) for a in args]),
                                              nprocs=2, start_method=method)
        r0, r1 = (json.loads((tmp_path / f"cli{r}.json").read_text()) for r in range(2))
        assert r0["code"] == 0 and r1["code"] == 0, r0["out"] + r1["out"]
        assert "training on 2 processes (device cpu on rank 0)" in r0["out"] and r1["out"] == ""  # rank 0 speaks
        for fragment in expected[name]:  # progress and the report table, once
            assert r0["out"].count(fragment) == 1, r0["out"]
    report = json.loads((tmp_path / "student" / "distill_report.json").read_text())
    assert report["world_size"] == 2 and report["device"] == "cpu" and report["steps"] == 3
    report = json.loads((tmp_path / "clf" / "finetune_report.json").read_text())
    assert report["world_size"] == 2 and len(report["history"]) == 2
    assert not checkpoint_dir(tmp_path / "student").exists() and not checkpoint_dir(tmp_path / "clf").exists()


@pytest.mark.parametrize("command", [
    ["distill", "--arch", ARCH, "--init", "random", "--space", "tiny", "--corpus", "{corpus}", "--out", "{root}/o"],
    ["finetune", "--model", "{teacher}", "--out", "{root}/o"],
    ["finetune-teacher", "--teacher", "{teacher}", "--out", "{root}/o"],
])  # fmt: skip
def test_device_cuda_without_a_gpu_is_one_line_exit_2_before_any_work(tmp_path, monkeypatch, command):
    from typer.testing import CliRunner

    from nasbert_deploy.cli.app import app

    for module, name in [("nasbert_deploy.student.distill", "build_student"), ("nasbert_deploy.student.distill", "distill"),
                         ("nasbert_deploy.student.finetune", "finetune"), ("nasbert_deploy.teacher", "load_teacher"),
                         ("nasbert_deploy.student.finetune", "finetune_teacher")]:  # fmt: skip
        monkeypatch.setattr(f"{module}.{name}", lambda *a, _n=name, **k: pytest.fail(f"work started: {_n}"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    corpus = tmp_path / "c.txt"
    corpus.write_text("some text to distil on\n" * 4)
    fill = {"corpus": corpus, "root": tmp_path, "teacher": make_tiny_teacher(tmp_path / "t")}
    res = CliRunner().invoke(app, [a.format(**fill) for a in command] + ["--device", "cuda"])
    assert res.exit_code == 2, res.output
    assert res.stderr.strip() == "error: --device cuda: no CUDA GPU is visible to torch; use --device cpu"
    assert not (tmp_path / "o").exists() and not checkpoint_dir(tmp_path / "o").exists()
