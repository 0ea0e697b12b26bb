"""`search-task --corpus / --rerank-distilled / --transfer / --kd`: the student recipe of docs/quality.md inside the task
search -- on a tiny supernet, teacher and latency table, with the shipped sample text as corpus and transfer set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import SAMPLE, one_line_error, tasksearch_setup
from safetensors.torch import load_file
from typer.testing import CliRunner

from nasbert_deploy.cli.app import app

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
FAST = ("--proxy-rows", "24", "--proxy-heldout", "12", "--proxy-epochs", "1", "--seq-len", "32", "--evaluations", "2")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, one_thread):
    return tasksearch_setup(tmp_path_factory.mktemp("tasksearch-distilled"))


def _args(s: dict, out: Path, *extra: str) -> list[str]:
    return ["search-task", "--task", "pydoc-sample", "--teacher-model", str(s["teacher"]), "--device", "cpu-ort",
            "--table", str(s["table"]), "--supernet", str(s["supernet"]), "--max-latency-ms", "1.6", "--out", str(out),
            "--encoder", str(s["encoder"]), *FAST, *extra]


def _run(args: list[str]):
    return runner.invoke(app, args, env={"COLUMNS": "80"})


def test_the_pick_is_distilled_on_the_corpus_before_the_final_and_reused(setup):
    out = setup["root"] / "recipe"
    args = _args(setup, out, "--corpus", str(SAMPLE), "--distill-steps", "3", "--rerank-top", "2", "--rerank-seeds", "2",
                 "--no-rerank-agnostic", "--rerank-distilled", "--transfer", str(SAMPLE), "--transfer-rows", "40",
                 "--final-epochs", "1")
    r = _run(args)
    assert r.exit_code == 0, r.output
    result = json.loads((out / "result.json").read_text())
    cands = [c["arch"] for c in result["rerank"]["candidates"]]
    assert result["pick"] == result["rerank"]["best_arch"] and len(cands) == 2
    assert r.output.count("steps of 32 paragraphs") == len(cands)  # each candidate distilled once, the pick reused
    assert (out / "search" / "cache-distilled.json").is_file()
    distilled = result["start"]["distilled"]
    assert distilled["steps"] == 3 and distilled["corpus"] == str(SAMPLE) and distilled["teacher"] == str(setup["encoder"])
    enc = Path(distilled["encoder"])
    report = json.loads((enc / "distill_report.json").read_text())
    assert report["arch"] == result["pick"] and report["steps"] == 3
    assert result["final"]["config"]["kd"] == "mse" and result["final"]["config"]["lr"] == pytest.approx(1e-4)
    assert result["request"]["transfer_rows"] == 40
    # the final student started from the distilled encoder, not from the supernet's path
    start = load_file(str(enc / "model.safetensors"))
    path = setup["net"].extract(result["pick"]).state_dict()
    moved = [k for k in start if not torch.equal(start[k], path[k])]
    assert moved, "the corpus distillation changed no weight"
    r = _run(args)  # everything is there: nothing is trained again
    assert r.exit_code == 0, r.output
    assert "reused from" in r.output and "steps of 32 paragraphs" not in r.output


@pytest.mark.parametrize(("extra", "term"), [((), "kl"), (("--kd", "mse"), "mse"), (("--transfer", str(SAMPLE)), "mse")])
def test_kd_auto_is_kl_on_the_tasks_rows_alone_and_mse_with_the_recipe(setup, extra, term, tmp_path):
    from nasbert_deploy.cli.tasksearch_cmd import final_config

    assert final_config(3, None, "auto", 0, True, False).kd == "mse"  # after a corpus stage (the first test runs it)
    out = tmp_path / "out"
    args = _args(setup, out, "--rerank-top", "0", "--final-epochs", "1", *extra)
    i = args.index("--encoder")
    r = _run(args[:i] + args[i + 2:])
    assert r.exit_code == 0, r.output
    result = json.loads((out / "result.json").read_text())
    assert result["final"]["config"].get("kd", "kl") == term  # a KL config leaves the key out (older checkpoints)
    assert result["final"]["config"]["lr"] == pytest.approx(2e-4) and "distilled" not in result["start"]


@pytest.mark.parametrize(
    ("case", "extra", "message"),
    [
        ("rerank without corpus", ("--rerank-distilled",), "--rerank-distilled distils every rerank candidate"),
        ("rerank off", ("--corpus", "SAMPLE", "--rerank-distilled", "--rerank-top", "0"), "and a rerank"),
        ("search only", ("--transfer", "SAMPLE", "--search-only"), "--search-only stops before it"),
        ("empty corpus", ("--corpus", "EMPTY"), "corpus"),
        ("binary transfer", ("--corpus", "SAMPLE", "--transfer", "BINARY"), "transfer set"),
        ("encoder without corpus", (), "--encoder is the encoder --init etd-impt"),
        ("distilled dir without corpus", ("--distilled-dir", "DIR"), "--distilled-dir keeps the encoders"),
        ("distilled dir a file", ("--corpus", "SAMPLE", "--distilled-dir", "EMPTY"), "exists and is not a folder"),
    ],
)
def test_errors_are_one_line_before_any_work(setup, case, extra, message, tmp_path):
    files = {"SAMPLE": str(SAMPLE), "EMPTY": tmp_path / "empty.txt", "BINARY": tmp_path / "blob.bin", "DIR": tmp_path / "d"}
    files["EMPTY"].write_text("\n\n")
    files["BINARY"].write_bytes(bytes(range(256)) * 4)
    out = tmp_path / "out"
    r = _run(_args(setup, out, *(str(files.get(e, e)) for e in extra)))
    one_line_error(r, message)
    assert not out.exists()


def test_rerank_weighs_the_users_own_architectures(setup, tmp_path):
    from nasbert_deploy.devices import load_device
    from nasbert_deploy.search.problem import Budget
    from nasbert_deploy.tasksearch.request import TaskSearchRequest, prepare

    probe = TaskSearchRequest("pydoc-sample", setup["teacher"], load_device("cpu-ort"), Budget(1.6), tmp_path / "probe",
                              table=setup["table"], supernet=setup["supernet"], seq_len=32, search_only=True)
    prepared = prepare(probe)
    mine = str(prepared.fastest)
    out = setup["root"] / "own"
    r = _run(_args(setup, out, "--search-only", "--rerank-top", "1", "--rerank-seeds", "2", "--no-rerank-agnostic",
                   "--rerank-arch", mine, "--corpus", str(SAMPLE), "--rerank-distilled", "--distill-steps", "2"))
    assert r.exit_code == 0, r.output
    result = json.loads((out / "result.json").read_text())
    assert mine in [c["arch"] for c in result["rerank"]["candidates"]]
    assert "final" not in result and not (out / "student").exists()
    over = next(str(a) for a in prepared.space.enumerate() if not prepared.check.fits(a))
    for arch, message in ((over, "over the budget --max-latency-ms 1.6"), ("999:mha", "999")):
        r = _run(_args(setup, tmp_path / "bad", "--rerank-arch", arch, "--corpus", str(SAMPLE)))
        one_line_error(r, message)
        assert not (tmp_path / "bad").exists()


def test_an_interrupted_corpus_distillation_resumes_and_says_so(setup, tmp_path):
    from nasbert_deploy.space import TINY
    from nasbert_deploy.supernet.teacher_cache import read_paragraphs
    from nasbert_deploy.tasksearch.distilled import CorpusDistillation, DistilledStart
    from nasbert_deploy.tasksearch.start import SupernetStart
    from nasbert_deploy.teacher import load_teacher

    texts, teacher, notes = read_paragraphs(SAMPLE), load_teacher(setup["encoder"]), []
    arch = str(next(iter(TINY.enumerate())))

    def start(progress) -> DistilledStart:
        return DistilledStart(SupernetStart(setup["net"], setup["supernet"]), teacher, texts,
                              CorpusDistillation(SAMPLE, steps=4, batch_size=4, seq_len=16), tmp_path, {"test": 1}, 0,
                              notes.append, progress)

    def stop_at_2(step, total, values):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        start(stop_at_2).extract(arch)
    assert not (start(None).encoder_dir(arch) / "config.json").exists()
    seen: list[int] = []
    model = start(lambda step, total, values: seen.append(step)).extract(arch, num_labels=3)
    assert seen == [3, 4] and "resuming from step 2 of 4" in notes
    assert model.config.num_labels == 3 and model.config.arch == arch
    notes.clear()
    again = start(None).extract(arch, num_labels=3)
    assert any("reused from" in n for n in notes) and not any("steps of" in n for n in notes)
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_searches_of_two_tasks_share_the_distilled_encoders(setup, tmp_path):
    shared = tmp_path / "encoders"
    for name in ("a", "b"):  # the same task twice stands for two tasks: the encoders' key has no task in it
        r = _run(_args(setup, tmp_path / name, "--rerank-top", "0", "--final-epochs", "1", "--corpus", str(SAMPLE),
                       "--distill-steps", "2", "--distilled-dir", str(shared)))
        assert r.exit_code == 0, r.output
        assert ("steps of 32 paragraphs" in r.output) == (name == "a") and ("reused from" in r.output) == (name == "b")
    assert len(list(shared.glob("enc-*"))) == 1 and not (tmp_path / "a" / "search" / "distilled").exists()


def test_a_search_waits_for_another_distilling_the_same_encoder(setup, tmp_path):
    """Two searches sharing `--distilled-dir`: the second waits on the first's lock, then reuses its encoder."""
    import fcntl
    import threading

    from nasbert_deploy.space import TINY
    from nasbert_deploy.supernet.teacher_cache import read_paragraphs
    from nasbert_deploy.tasksearch.distilled import CorpusDistillation, DistilledStart
    from nasbert_deploy.tasksearch.start import SupernetStart
    from nasbert_deploy.teacher import load_teacher

    notes: list[str] = []
    start = DistilledStart(SupernetStart(setup["net"], setup["supernet"]), load_teacher(setup["encoder"]),
                           read_paragraphs(SAMPLE), CorpusDistillation(SAMPLE, steps=2, batch_size=4, seq_len=16), tmp_path,
                           {"test": 2}, 0, notes.append)
    arch = str(next(iter(TINY.enumerate())))
    out = start.encoder_dir(arch)
    got: list[Path] = []
    with open(out.with_name(f".{out.name}.lock"), "a") as other:  # "another run" holds the encoder's lock
        fcntl.flock(other, fcntl.LOCK_EX)
        waiter = threading.Thread(target=lambda: got.append(start.ensure(arch)))
        waiter.start()
        waiter.join(2.0)
        assert waiter.is_alive() and any("another run is distilling it" in n for n in notes)
        out.mkdir()
        (out / "config.json").write_text("{}")  # what the other run leaves when it ends
        fcntl.flock(other, fcntl.LOCK_UN)
    waiter.join(30)
    assert got == [out] and any("reused from" in n for n in notes) and not any("steps of" in n for n in notes)
