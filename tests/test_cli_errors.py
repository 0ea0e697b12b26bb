"""Issue #18, row by row: bad input, unwritable or taken outputs give one line and exit 2 *before any work*.

Each row runs with tripwires on the library calls that do the work (profiling, training, searching,
exporting, evaluating): a row that reached one fails with 'heavy work started'. Each runs in an empty
folder and must leave it as it was. Also: an unexpected exception is one line saying it is a bug (exit 1),
`NASBERT_DEPLOY_DEBUG=1` shows it; output for people fits 80 columns; the supernet plan is stated first.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import SAMPLE, make_tiny_teacher
from typer.testing import CliRunner

from nasbert_deploy.cli.app import app

runner = CliRunner()
MINILM_ARCH = "128:mha,ffn,id|192:sep3,ffn,id|256:mha,ffn,ffn"
TINY_ARCH = "64:mha,ffn|32:sep3,id"
UNWRITABLE = "/proc/nasbert-test/x"  # /proc takes no new files, not even from root (os.access says it would)
HEAVY = [
    ("nasbert_deploy.profiling.profiler", "profile_device"), ("nasbert_deploy.profiling.bundle", "write_bundle"),
    ("nasbert_deploy.search.run", "run_search"), ("nasbert_deploy.supernet.launch", "train_from_corpus"),
    ("nasbert_deploy.student.distill", "build_student"), ("nasbert_deploy.student.distill", "distill"),
    ("nasbert_deploy.student.finetune", "finetune"), ("nasbert_deploy.student.finetune", "finetune_teacher"),
    ("nasbert_deploy.student.finetune", "load_classifier"), ("nasbert_deploy.export.run", "prepare_export"),
    ("nasbert_deploy.teacher", "load_teacher"),
]  # fmt: skip
pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="rows with an unwritable path use /proc")


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Path:
    """A real encoder folder (a tiny BERT and its tokenizer) without a classification head."""
    return make_tiny_teacher(tmp_path_factory.mktemp("encoder") / "enc")


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """An empty working folder holding the rows' inputs (binary garbage, a file, a folder, a corpus)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "garbage.bin").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "nul.txt").write_bytes(b"PK\x03\x04\x00\x00 a zip header, then words that decode as UTF-8\n" * 3)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    shutil.copyfile(SAMPLE, tmp_path / "text.txt")
    return tmp_path


@pytest.fixture
def work(folder, monkeypatch):
    """`folder` with tripwires on the calls that do the work: a command that reaches one fails the test."""
    import importlib

    for module, name in HEAVY:
        def trip(*_a, _name=name, **_k):
            raise AssertionError(f"heavy work started: {_name}")

        monkeypatch.setattr(importlib.import_module(module), name, trip)
    return folder


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def one_line_exit_2(args: list[str], fragment: str, root: Path) -> str:
    before = _listing(root)
    res = runner.invoke(app, args, env={"COLUMNS": "80"})
    assert res.exit_code == 2, res.output
    assert res.stderr.startswith("error: ") and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert fragment in res.stderr, res.stderr
    assert "Traceback" not in res.output and _listing(root) == before  # nothing written, nothing left behind
    return res.stderr


ROWS = [  # (issue table row, args, what the one line says)
    ("devices: a binary file as the device spec", ["devices", "garbage.bin"], "device spec garbage.bin is binary, not text"),
    ("predict: --table binary garbage", ["predict", "--table", "garbage.bin", MINILM_ARCH, "--space", "minilm"],
     "latency table garbage.bin is binary, not text"),
    ("profile: --import binary garbage", ["profile", "--import", "garbage.bin"],
     "bundle results garbage.bin is binary, not text"),
    ("profile: --out unwritable", ["profile", "--device", "cpu-ort", "--out", f"{UNWRITABLE}/t.json"],
     f"cannot write --out {UNWRITABLE}/t.json: /proc does not accept new files"),
    ("profile: --out an existing folder", ["profile", "--device", "cpu-ort", "--out", "adir"], "--out adir is a folder"),
    ("search: --plot unwritable", ["search", "--device", "cpu-ort", "--max-latency-ms", "5", "--plot", f"{UNWRITABLE}.png"],
     "cannot write --plot"),
    ("search: --plot an existing folder", ["search", "--device", "cpu-ort", "--max-latency-ms", "5", "--plot", "adir"],
     "--plot adir is a folder"),
    ("supernet train: --out unwritable", ["supernet", "train", "--corpus", "text.txt", "--out", UNWRITABLE],
     f"cannot write --out {UNWRITABLE}"),
    ("supernet train: --out an existing file", ["supernet", "train", "--corpus", "text.txt", "--out", "afile"],
     "--out afile exists and is not a folder"),
    ("distill: a binary corpus that decodes as UTF-8", ["distill", "--arch", MINILM_ARCH, "--corpus", "nul.txt", "--out", "d"],
     "corpus nul.txt is binary, not text (a NUL byte at 4)"),
    ("distill: --out unwritable", ["distill", "--arch", MINILM_ARCH, "--corpus", "text.txt", "--out", UNWRITABLE],
     f"cannot write --out {UNWRITABLE}"),
    ("finetune-teacher: --out unwritable", ["finetune-teacher", "--out", UNWRITABLE], f"cannot write --out {UNWRITABLE}"),
    ("evaluate: --json unwritable", ["evaluate", "--model", "{encoder}", "--json", f"{UNWRITABLE}/r.json"],
     f"cannot write --json {UNWRITABLE}/r.json"),
    ("finetune: --out an existing file", ["finetune", "--model", "{encoder}", "--out", "afile"], "exists and is not a folder"),
    ("finetune-teacher: --out an existing file", ["finetune-teacher", "--out", "afile"], "exists and is not a folder"),
    ("distill: --out an existing file", ["distill", "--arch", MINILM_ARCH, "--corpus", "text.txt", "--out", "afile"],
     "exists and is not a folder"),
    ("distill: --heldout-every without held-out text", ["distill", "--arch", MINILM_ARCH, "--corpus", "text.txt",
                                                        "--heldout-every", "50", "--out", "d"], "give --valid-corpus too"),
    ("export: neither --arch nor a budget", ["export", "--out", "o"], "nothing to export: give --arch ARCH, or a budget"),
    ("evaluate: an encoder folder without a classifier", ["evaluate", "--model", "{encoder}"],
     "is not a classifier (it holds a BertModel"),
    ("arch info: 'foo'", ["arch", "info", "foo"], "block 1: 'foo' lacks 'HIDDEN:'"),
    ("arch info: '999:...'", ["arch", "info", "999:mha,ffn,id,id,id,id"], "block 1: hidden 999 not in [128, 192"),
]  # fmt: skip


@pytest.mark.parametrize(("row", "args", "fragment"), ROWS, ids=[r[0] for r in ROWS])
def test_issue_row_is_one_line_before_any_work(row, args, fragment, work, encoder):
    one_line_exit_2([a.format(encoder=encoder) for a in args], fragment, work)


def test_existing_outputs_need_force(work, encoder):
    (work / "r.json").write_text("{}")
    (work / "full").mkdir()
    (work / "full" / "keep.txt").write_text("mine")
    one_line_exit_2(["evaluate", "--model", str(encoder), "--json", "r.json"], "--json r.json exists; pass --force", work)
    one_line_exit_2(["finetune-teacher", "--out", "full"], "--out full exists and is not empty; pass --force", work)
    one_line_exit_2(["distill", "--arch", TINY_ARCH, "--corpus", "text.txt", "--out", "full"], "pass --force", work)
    one_line_exit_2(["profile", "--device", "cpu-ort", "--out", "afile"], "--out afile exists; pass --force", work)
    one_line_exit_2(["profile", "--device", "cpu-ort", "--bundle", "full"], "--bundle full exists and is not empty", work)
    one_line_exit_2(["search", "--device", "cpu-ort", "--max-latency-ms", "5", "--plot", "afile"], "pass --force", work)
    # with --force the output check passes: the next check speaks, and the file is untouched
    one_line_exit_2(["evaluate", "--model", str(encoder), "--json", "r.json", "--force"], "is not a classifier", work)
    assert (work / "r.json").read_text() == "{}"


@pytest.mark.parametrize(
    ("name", "content", "args", "fragment"),
    [
        ("t.jsonl", b'{"query": "q", "document": "d"}\n', ["finetune-teacher", "--task", "t.jsonl", "--out", "o"],
         "t.jsonl has 1 pair; a validation split needs at least 2"),  # retrieval pairs train, but one is too few
        ("t.jsonl", b'{"text": "a", "label": "x"}\n{"text": "b", "lab', ["finetune-teacher", "--task", "t.jsonl", "--out", "o"],
         "t.jsonl:2: not valid JSON"),
        ("t.csv", b'text,label\n"' + b"a" * 200_000 + b'",b\n', ["finetune-teacher", "--task", "t.csv", "--out", "o"],
         "not a readable CSV file (field larger than field limit"),
        ("t.jsonl", b'{"text": ["a"], "label": "x"}\n', ["finetune-teacher", "--task", "t.jsonl", "--out", "o"],
         "text must be a string"),
        ("t.json", b'{"schema_version": 4, "manifest": {}, "entries": {"mha@h128": {"b1s32": {"median_ms": "fast"}}}}',
         ["predict", "--table", "t.json", MINILM_ARCH, "--space", "minilm"], "must be an object with a finite median_ms"),
        ("s.toml", b'name = "x"\nruntime = "onnxruntime"\ntarget = "cpu"\nproviders = 3\n', ["devices", "s.toml"],
         "providers must be a list"),
        ("c.json", b'{"schema": 1, "version": 123456789012345678901234567890' + b"1" * 5000 + b"}",
         ["search", "--max-latency-ms", "5", "--device", "cpu-ort", "--candidates", "c.json"], "is not valid JSON"),
    ],
)
def test_malformed_inputs_are_one_line(name, content, args, fragment, folder):
    (folder / name).write_bytes(content)  # no tripwires: search reads its candidate table for real
    one_line_exit_2(args, fragment, folder)


def test_a_bug_is_one_line_exit_1_and_debug_shows_it(work, monkeypatch):
    import nasbert_deploy.space as space

    def boom(name):
        raise RuntimeError("boom [not markup]")

    monkeypatch.setattr(space, "get_space", boom)
    res = runner.invoke(app, ["space", "show"])
    assert res.exit_code == 1 and len(res.stderr.strip().splitlines()) == 1, res.output
    assert "internal error (a bug in nasbert-deploy): RuntimeError: boom [not markup]" in res.stderr
    assert "report it" in res.stderr and "NASBERT_DEPLOY_DEBUG=1" in res.stderr and "Traceback" not in res.output
    res = runner.invoke(app, ["space", "show"], env={"NASBERT_DEPLOY_DEBUG": "1"})
    assert isinstance(res.exception, RuntimeError) and str(res.exception) == "boom [not markup]"


def test_an_environment_oserror_is_one_line_exit_2(work, monkeypatch):
    import nasbert_deploy.space as space

    def full(name):
        raise OSError(28, "No space left on device", "/data/x")

    monkeypatch.setattr(space, "get_space", full)
    res = runner.invoke(app, ["space", "show"])
    assert res.exit_code == 2 and res.stderr.strip() == "error: cannot use /data/x: No space left on device"


def _fits_80(text: str) -> None:
    assert "…" not in text, text
    assert all(len(line) <= 80 for line in text.splitlines()), text


def test_output_for_people_fits_80_columns(work):
    standard = "128:mha,ffn,id,id,id,id|192:sep3,ffn,id,id,id,id|256:mha,ffn,ffn,id,id,id|512:ffn,ffn,ffn,sep7,sep7,sep7"
    for args in (["devices"], ["space", "show"], ["arch", "info", MINILM_ARCH, "--space", "minilm"],
                 ["predict", "--device", "cpu-ort", MINILM_ARCH, "--space", "minilm"]):
        res = runner.invoke(app, args, env={"COLUMNS": "80"})
        assert res.exit_code == 0, res.output
        _fits_80(res.stdout)
    res = runner.invoke(app, ["arch", "info", standard], env={"COLUMNS": "80"})
    assert res.exit_code == 0 and f"arch {standard}" in res.stdout  # on one line of its own, never broken inside
    _fits_80(res.stdout.replace(f"arch {standard} (space standard)", ""))


def test_supernet_plan_is_stated_before_work_and_contradictions_refused(folder, monkeypatch):
    import nasbert_deploy.supernet.launch as launch

    def stop(_device):
        raise KeyboardInterrupt  # where the work would begin (process group, then the teacher)

    monkeypatch.setattr(launch, "init_distributed", stop)
    tiny = ["supernet", "train", "--corpus", "text.txt", "--out", "run", "--space", "tiny", "--paragraphs", "40",
            "--val-size", "8", "--seq-len", "16", "--batch-size", "8", "--bins", "2", "--per-bin", "8", "--keep", "3"]
    res = runner.invoke(app, [*tiny, "--epochs", "2", "--steps-per-epoch", "3", "--warmup-epochs", "1"])
    assert res.exit_code == 130, res.output
    assert "plan: 6 steps = 2 epochs x 3 steps" in res.stderr and "disk: about" in res.stderr
    assert "warning: 2 epochs allow 1 of the 5 shrinks needed to reach --keep 3 per bin" in res.stderr
    assert not (folder / "run").exists()
    one_line_exit_2([*tiny, "--epochs", "1", "--warmup-epochs", "3"], "--epochs 1 ends before the first shrink", folder)
    one_line_exit_2([*tiny, "--batch-size", "64"], "exceeds the 32 training paragraphs", folder)


def test_plan_sizes_are_the_supernets():
    from nasbert_deploy.space import MINILM, TINY
    from nasbert_deploy.supernet.network import Supernet
    from nasbert_deploy.supernet.plan import part_params

    assert sum(part_params(MINILM).values()) == 21_597_888  # the shipped supernet's count
    net = Supernet(TINY)
    assert sum(part_params(TINY).values()) == sum(p.numel() for p in net.parameters())
    assert part_params(TINY)["embed"] == sum(p.numel() for n, p in net.named_parameters() if n.startswith("embed"))


def test_bundle_results_of_the_wrong_shape_are_one_line(work):
    good = {"kind": "nasbert-profile-results", "bundle": {"format": 1, "space": {"name": "x"}}}
    (work / "r.json").write_text(json.dumps(good))
    one_line_exit_2(["profile", "--import", "r.json"], "malformed search-space description", work)
    good["bundle"] = []
    (work / "r.json").write_text(json.dumps(good))
    one_line_exit_2(["profile", "--import", "r.json"], "bundle format None", work)


def test_progress_is_plain_lines_when_not_on_a_terminal(capsys, monkeypatch):
    """profile's bar (the same `Ticker` feeds distill, finetune and supernet train): the first update, the last, and
    one every NASBERT_DEPLOY_PROGRESS_S seconds in between; nothing else."""
    from nasbert_deploy.cli import profile_cmd

    monkeypatch.setenv("NASBERT_DEPLOY_PROGRESS_S", "3600")
    with profile_cmd._progress() as update:
        for done in range(4):
            update("export", done, 3)
        update("time", 0, 10)
        update("time", 10, 10)
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["exporting models: 0 of 3", "exporting models: 3 of 3", "timing: 0 of 10", "timing: 10 of 10"]
