"""`search-task --init etd-impt|etd-rand`: students extracted from a pre-trained encoder (Extract Then Distill) instead
of a supernet -- on a tiny encoder (hidden 48, 2 layers, 4 heads of 12, FFN 96) and a tiny space of its geometry,
with a tiny latency table for that space; the one-line errors before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import make_sample_teacher, make_tiny_teacher, tiny_table
from typer.testing import CliRunner

from nasbert_deploy.cli.app import app
from nasbert_deploy.errors import OutputError, SpaceError, TaskError, TeacherError
from nasbert_deploy.search.problem import Budget
from nasbert_deploy.space import MINILM_WIDE, SPACES, STANDARD, TINY, SearchSpace
from nasbert_deploy.tasksearch.proxy import ProxyConfig

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
# the tiny encoder's own geometry: its largest architecture is the encoder itself
SPACE = SearchSpace(name="etd-tiny", num_blocks=2, layers_per_block=2, hidden_sizes=(24, 48), conv_kernels=(3,),
                    head_dim=12, ffn_ratio=2, embed_dim=48, output_dim=48, vocab_size=1000, max_positions=64)
FULL = "48:mha,ffn|48:mha,ffn"
FAST = ProxyConfig(rows=24, heldout=12, epochs=1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, one_thread):
    from nasbert_deploy.student.finetune import FinetuneConfig, finetune_teacher
    from nasbert_deploy.student.tasks import task_splits
    from nasbert_deploy.supernet.network import Supernet

    root = tmp_path_factory.mktemp("tasksearch-etd")
    encoder = make_tiny_teacher(root / "encoder")
    train, valid = task_splits("pydoc-sample")
    finetune_teacher(encoder, train, valid, root / "teacher", FinetuneConfig(epochs=1, max_len=32))
    torch.manual_seed(0)
    supernet = Supernet(SPACE).eval().save(root / "supernet", {"note": "random supernet of the etd space"})
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(SPACES, SPACE.name, SPACE)  # the library reads the registry at call time
        yield {"root": root, "encoder": encoder, "teacher": root / "teacher", "supernet": supernet, "train": train,
               "table": tiny_table(root / "t.json", SPACE)}


def _request(s: dict, out: Path, **kw):
    from nasbert_deploy.devices import load_device
    from nasbert_deploy.tasksearch.request import TaskSearchRequest

    base = dict(table=s["table"], evaluations=3, proxy=FAST, seq_len=32, search_only=True, init="etd-impt", rerank_top=0,
                space=SPACE.name, encoder=s["encoder"])
    return TaskSearchRequest("pydoc-sample", s["teacher"], load_device("cpu-ort"), Budget(1.6), out, **{**base, **kw})


@pytest.fixture
def counted(monkeypatch):
    """Count the calls of the importance scorer (the real one runs)."""
    from nasbert_deploy.model import importance

    calls = []
    real = importance.importance_scores

    def scores(*args, **kw):
        calls.append(args[3] if len(args) > 3 else kw.get("method"))
        return real(*args, **kw)

    monkeypatch.setattr(importance, "importance_scores", scores)
    return calls


def test_etd_search_scores_importance_once_and_resumes(setup, counted):
    from nasbert_deploy.tasksearch.run import run_task_search
    from nasbert_deploy.tasksearch.start import IMPORTANCE_FILE

    out, notes = setup["root"] / "a", []
    result = run_task_search(_request(setup, out, evaluations=2), notes.append)
    n = len([t for t in setup["train"].texts if t.strip()])
    assert counted == ["impt"] and 100 < n < 512
    assert any(f"scored on {n} task texts" in line for line in notes), notes  # the task's training texts: the sample
    start = result["start"]
    assert start["init"] == "etd-impt" and start["space"] == SPACE.name and start["encoder"] == str(setup["encoder"])
    assert start["importance"] == "impt" and start["importance_texts"] == n
    best = SPACE.parse(result["search"]["best_arch"])
    mapped = [f"{b.hidden}: " + " ".join(f"{op}<L{i + 1}" if op.kind in ("mha", "ffn") else str(op) for op in b.ops)
              for i, b in enumerate(best.blocks)]  # 2 blocks of a 2-layer encoder: block i distils layer i + 1
    assert start["layer_map"] == " | ".join(mapped)
    assert any(f"layer map of the best (student op < encoder layer): {start['layer_map']}" in n for n in notes)
    assert (out / "search" / IMPORTANCE_FILE).is_file()

    notes.clear()
    again = run_task_search(_request(setup, out, evaluations=4), notes.append)  # resumes: importance read back
    assert counted == ["impt"] and any("reused from" in n for n in notes), notes
    assert any("resuming the task search at episode 3" in n for n in notes), notes
    assert again["search"]["evaluations"] == 4 and again["search"]["history"][:2] == result["search"]["history"]
    for h in again["search"]["history"]:  # every proposal is within the budget (and in the space, so extractable)
        assert h["latency_ms"] <= 1.6 and SPACE.parse(h["arch"])


def test_proxy_students_carry_the_encoders_weights(setup, tmp_path, counted):
    from nasbert_deploy.model.etd import extract_student
    from nasbert_deploy.model.importance import importance_scores
    from nasbert_deploy.tasksearch.proxy import classifier_from_supernet
    from nasbert_deploy.tasksearch.start import IMPORTANCE_ROWS, load_start, sample_texts
    from nasbert_deploy.teacher import load_teacher

    texts = setup["train"].texts
    start = load_start("etd-impt", None, SPACE, setup["encoder"], texts, 0, tmp_path, lambda _: None)
    encoder = load_teacher(setup["encoder"])
    enc = encoder.tokenizer(list(texts[:4]), padding=True, truncation=True, max_length=32, return_tensors="pt")
    model = classifier_from_supernet(start, FULL, ["a", "b"])  # the student equal to the encoder reproduces it
    with torch.no_grad():
        want = encoder.model(**enc).last_hidden_state
        got = model.nasbert(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    m = enc["attention_mask"][:, :, None].bool()
    assert torch.allclose(got.masked_select(m), want.masked_select(m), atol=1e-4)
    assert model.config.num_labels == 2 and model.config.id2label == {0: "a", 1: "b"}
    # a narrower student keeps the units the importance on the task's texts ranks first
    imp = importance_scores(encoder.model, encoder.tokenizer, sample_texts(texts, IMPORTANCE_ROWS, 0), "impt", seed=0)
    arch = "24:mha,ffn|48:sep3,id"
    ref, _ = extract_student(arch, SPACE, encoder.model, imp)
    mine = classifier_from_supernet(start, arch, ["a", "b"]).nasbert.state_dict()
    assert all(torch.equal(mine[k], v) for k, v in ref.state_dict().items())
    assert counted == ["impt", "impt"]  # load_start once, the reference once
    rand = load_start("etd-rand", None, SPACE, setup["encoder"], texts, 0, tmp_path / "r", lambda _: None)
    assert rand.importance.method == "rand" and rand.record(arch)["layer_map"] == "24: mha<L1 ffn<L1 | 48: sep3 id"


def test_every_architecture_of_a_passing_space_is_extractable(setup, tmp_path):
    """`prepare` refuses a space unless the encoder provides all of it, so the controllers never propose an
    architecture extraction cannot build: checked on every architecture of the tiny space, and on samples of the
    shipped spaces against a MiniLM-L6-shaped config (no weights)."""
    import random

    from transformers import BertConfig

    from nasbert_deploy.model.etd import check_extractable
    from nasbert_deploy.space import MINILM
    from nasbert_deploy.tasksearch.start import check_encoder, encoder_skeleton

    check_encoder(SPACE, setup["encoder"])
    skeleton = encoder_skeleton(setup["encoder"])
    archs = list(SPACE.enumerate())
    assert len(archs) == 576
    for arch in archs:
        check_extractable(arch, SPACE, skeleton)
    minilm = tmp_path / "minilm-shape"
    BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536).save_pretrained(minilm)
    rng, shape = random.Random(0), encoder_skeleton(minilm)
    for space in (MINILM_WIDE, MINILM):  # heads of 32, and heads of 64 made of two of 32
        check_encoder(space, minilm)
        for _ in range(200):
            check_extractable(space.random_arch(rng), space, shape)
    with pytest.raises(TeacherError, match=r"width 512 needs more heads.*use --init supernet, or a --space"):
        check_encoder(STANDARD, minilm)


def test_the_start_is_part_of_the_search_identity(setup, counted):
    """init / space / encoder join the resume key and the proxy cache's key (a supernet search keeps the key it had
    before --init existed); a shared cache written by one start is not read by another."""
    from nasbert_deploy.tasksearch.run import run_task_search

    root = setup["root"]
    impt, rand = _request(setup, root / "k1"), _request(setup, root / "k1", init="etd-rand")
    sup = _request(setup, root / "k1", init="supernet", space=None, encoder=None, supernet=setup["supernet"])
    assert impt.key() != rand.key() and impt.key()["init"] == "etd-impt" and impt.key()["encoder"] == str(setup["encoder"])
    assert set(sup.key()) == {"task", "teacher_model", "device", "budget", "table", "supernet", "controller",
                              "latency_weight", "proxy", "batch", "seq_len", "seed"}
    shared = root / "shared-cache.json"
    keys, runs = [], []
    for out, start in (("k-impt", {}), ("k-rand", {"init": "etd-rand"}),
                       ("k-sup", {"init": "supernet", "space": None, "encoder": None, "supernet": setup["supernet"]})):
        runs.append(run_task_search(_request(setup, root / out, evaluations=2, cache=shared, **start), lambda _: None))
        data = json.loads(shared.read_text())
        keys.append(data["proxy_key"])  # each start replaced the cache: it did not take another start's scores
        assert set(data["archs"]) == {h["arch"] for h in runs[-1]["search"]["history"]}
    assert len(set(keys)) == 3
    assert [r["start"]["init"] for r in runs] == ["etd-impt", "etd-rand", "supernet"]
    assert runs[2]["start"] == {"init": "supernet", "supernet": str(setup["supernet"])}
    with pytest.raises(OutputError, match=r"other settings \(init differ\)"):  # the same folder, another start
        run_task_search(_request(setup, root / "k-impt", evaluations=2, init="etd-rand"), lambda _: None)
    assert counted == ["impt", "rand"]  # refused before the encoder was scored again


def test_final_student_records_the_start_and_the_layer_map(setup, monkeypatch):
    """The final distillation starts from the extraction too; result, student report and export weights record the
    init and the layer map. (The export itself is the normal path, run end to end in test_tasksearch_cli.py; here it
    is replaced by a recorder to keep the test short.)"""
    from nasbert_deploy.student.finetune import load_classifier
    from nasbert_deploy.tasksearch import final
    from nasbert_deploy.tasksearch.run import run_task_search

    seen = {}

    def export(model, tokenizer, out_dir, spec, budget_ms, batch, seq_len, weights, on_step=None):
        seen.update(weights=weights, arch=model.config.arch)
        return {"latency": {}, "validation": {"passed": True}}

    monkeypatch.setattr(final, "export_student", export)
    out = setup["root"] / "final"
    req = _request(setup, out, evaluations=1, search_only=False, final=final.FinetuneConfig(epochs=1, max_len=32))
    result = run_task_search(req, lambda _: None)
    start = result["start"]
    assert result["final"]["start"] == start and seen["weights"]["start"] == start and "supernet" not in seen["weights"]
    assert seen["arch"] == result["search"]["best_arch"] and "<L" in start["layer_map"]
    report = json.loads((out / "student" / "finetune_report.json").read_text())
    assert report["init"] == "etd-impt" and report["layer_map"] == start["layer_map"]
    model, _ = load_classifier(out / "student")
    assert model.config.arch == result["search"]["best_arch"]


@pytest.mark.parametrize(
    ("case", "extra", "message"),
    [
        ("unknown init", ["--init", "etd-magic"], "'etd-magic' is not one of 'supernet', 'etd-impt', 'etd-rand'"),
        ("supernet and etd", ["--init", "etd-impt", "--supernet", "SUPERNET"], "--supernet is for --init supernet"),
        ("encoder without etd", ["--supernet", "SUPERNET"], "--encoder is the encoder --init etd-impt / etd-rand"),
        ("head size", ["--init", "etd-impt", "--space", "tiny"], "head_dim 16 is not a multiple of the teacher's head"),
        ("widths", ["--init", "etd-rand", "--space", "minilm-wide"], "output_dim 384 is not the teacher's width 48"),
        ("not a model", ["--init", "etd-impt", "--space", "tiny"], "is not a local Hugging Face model folder"),
        ("supernet space", ["--space", "minilm", "--supernet", "SUPERNET"], "--space minilm is not the space of"),
    ],
)
def test_cli_errors_are_one_line_before_any_work(setup, case, extra, message, tmp_path):
    out = tmp_path / "out"
    encoder = str(tmp_path / "none") if case == "not a model" else str(setup["encoder"])
    args = ["search-task", "--task", "pydoc-sample", "--teacher-model", str(setup["teacher"]), "--device", "cpu-ort",
            "--table", str(setup["table"]), "--max-latency-ms", "1.6", "--out", str(out), "--seq-len", "32",
            *[str(setup["supernet"]) if a == "SUPERNET" else a for a in extra]]
    if case != "supernet space":
        args += ["--encoder", encoder]
    r = runner.invoke(app, args, env={"COLUMNS": "80"})
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert message in " ".join(r.stderr.split()), r.stderr
    assert not out.exists()


def test_library_errors_before_any_work(setup, tmp_path):
    """A table of another space (the one-line `SpaceError`), an encoder of another vocabulary, an unknown init."""
    from nasbert_deploy.tasksearch.request import prepare

    out = tmp_path / "out"
    with pytest.raises(SpaceError, match="does not cover space 'etd-tiny'"):
        prepare(_request(setup, out, table=tiny_table(tmp_path / "tiny.json", TINY)))
    other = make_sample_teacher(tmp_path / "other", layers=2)  # the same shape, another vocabulary
    with pytest.raises(TeacherError, match="have different vocabularies"):
        prepare(_request(setup, out, encoder=other))
    with pytest.raises(TaskError, match="unknown --init 'etd'"):
        prepare(_request(setup, out, init="etd"))
    assert not out.exists()


def test_cli_runs_an_etd_search(setup, monkeypatch):
    """The CLI wiring of --init / --encoder (the tiny space stands in for the default ETD space)."""
    from nasbert_deploy.cli import tasksearch_cmd
    from nasbert_deploy.tasksearch import START_INITS

    assert [m.value for m in tasksearch_cmd.StartName] == list(START_INITS)
    monkeypatch.setattr("nasbert_deploy.tasksearch.request.DEFAULT_ETD_SPACE", SPACE.name)
    out = setup["root"] / "cli"
    args = ["search-task", "--task", "pydoc-sample", "--teacher-model", str(setup["teacher"]), "--device", "cpu-ort",
            "--table", str(setup["table"]), "--max-latency-ms", "1.6", "--out", str(out), "--seq-len", "32",
            "--init", "etd-rand", "--encoder", str(setup["encoder"]), "--evaluations", "2", "--search-only",
            "--proxy-rows", "24", "--proxy-heldout", "12", "--proxy-epochs", "1"]
    r = runner.invoke(app, args, env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    assert f"students extracted from {setup['encoder']} (etd-rand) in space etd-tiny" in " ".join(r.output.split())
    result = json.loads((out / "result.json").read_text())
    assert result["request"]["init"] == "etd-rand" and result["start"]["importance"] == "rand"
    assert result["search"]["evaluations"] == 2
