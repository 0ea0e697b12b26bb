"""`evaluate --model EXPORT_FOLDER` adds its scores to the folder's model card (task, split file, runtime, date,
machine, every score), atomically; folders without a card are left alone."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import ARCH, make_supernet_dir, make_tokenizer_dir
from typer.testing import CliRunner

from nasbert_deploy.cli.app import app
from nasbert_deploy.export import card
from nasbert_deploy.profiling.host import cpu_model
from nasbert_deploy.student.tasks import SAMPLE_DIR


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    """A tiny encoder folder as `export` writes its transformers part, and a task laid out as task/{train,valid}.jsonl."""
    from transformers import AutoTokenizer

    from nasbert_deploy.export.ecosystem import write_ecosystem_files
    from nasbert_deploy.space import TINY

    root = tmp_path_factory.mktemp("evalcard")
    tok = AutoTokenizer.from_pretrained(str(make_tokenizer_dir(root / "tok")))
    _, net = make_supernet_dir(root)
    net.extract(ARCH).eval().save_pretrained(str(root / "enc"))
    tok.save_pretrained(str(root / "enc"))
    write_ecosystem_files(root / "enc", tok, TINY.output_dim, TINY.max_positions)
    task = root / "debian-sections"
    task.mkdir()
    for split in ("train", "valid"):
        shutil.copy(SAMPLE_DIR / f"debian-sections-sample-{split}.jsonl", task / f"{split}.jsonl")
    return root / "enc", task


def _card(folder):
    (folder / card.CARD).write_text(f"# a model\n\n## Quality\n\n{card.QUALITY_START}\n{card.NO_QUALITY}\n{card.QUALITY_END}\n\n"
                                    "## Files\n")


def _evaluate(folder, task, *extra):
    return CliRunner().invoke(app, ["evaluate", "--model", str(folder), "--task", str(task / "valid.jsonl"),
                                    "--train", str(task / "train.jsonl"), "--max-len", "32", *extra])


@pytest.mark.slow
def test_evaluate_appends_its_scores_to_the_card(encoder, tmp_path):
    enc, task = encoder
    folder = tmp_path / "export"
    shutil.copytree(enc, folder)
    _card(folder)
    before = (folder / card.CARD).read_text()
    res = _evaluate(folder, task, "--json", str(tmp_path / "r.json"))
    assert res.exit_code == 0, res.output
    assert "scores added to the model card" in res.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    text = (folder / card.CARD).read_text()
    section = text[text.index(card.QUALITY_START) : text.index(card.QUALITY_END)]
    assert card.NO_QUALITY not in section and "### debian-sections / torch (" in section
    assert "- split file: `valid.jsonl`" in section and "- probe trained on: `train.jsonl`" in section
    assert f"- machine: `{cpu_model()}," in section and "- evaluated: `20" in section
    assert f"| probe_accuracy | {report['probe_accuracy']:.4f} |" in section
    old_section = before[before.index(card.QUALITY_START) : before.index(card.QUALITY_END)]
    assert text.replace(section, "") == before.replace(old_section, "")  # the rest of the card is untouched
    res = _evaluate(folder, task, "--max-len", "16")  # a second evaluation: a second entry after the first
    assert res.exit_code == 0, res.output
    section = (folder / card.CARD).read_text().split(card.QUALITY_START)[1]
    assert section.count("### debian-sections / torch (") == 2 and section.count("- split file:") == 2
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # atomic: no temporary file left


@pytest.mark.slow
def test_folders_without_a_card_are_left_alone(encoder):
    enc, task = encoder
    names = sorted(p.name for p in enc.iterdir())
    res = _evaluate(enc, task)
    assert res.exit_code == 0, res.output
    assert "model card" not in res.stdout and sorted(p.name for p in enc.iterdir()) == names


def test_entry_names_the_task_by_its_folder_or_its_stem(tmp_path):
    e = card.evaluation_entry({"accuracy": 0.5, "labels": ["a", "b"], "flag": True, "teacher": "t"},
                              tmp_path / "wordnet" / "test.jsonl", "openvino")
    assert (e["task"], e["split file"], e["runtime"], e["teacher"], e["accuracy"]) == ("wordnet", "test.jsonl",
                                                                                       "openvino", "t", 0.5)
    assert "labels" not in e and "flag" not in e
    assert card.evaluation_entry({}, tmp_path / "my-task.jsonl", "torch")["task"] == "my-task"
    assert card.record_evaluation(tmp_path, {"accuracy": 0.5}, tmp_path / "x.jsonl", "torch") is None
