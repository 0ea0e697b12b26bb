"""Task files, fine-tuning, task distillation and evaluation on tiny configs."""

from __future__ import annotations

import json
import random

import pytest
import torch
from helpers import make_tiny_teacher, tiny_vocab

from nasbert_deploy.errors import CorpusError, TaskError
from nasbert_deploy.model.losses import kd_loss, soft_kl
from nasbert_deploy.space import TINY
from nasbert_deploy.student.distill import build_student, checkpoint_dir
from nasbert_deploy.student.finetune import FinetuneConfig, evaluate, finetune, finetune_teacher, transfer_texts
from nasbert_deploy.student.task_training import mixed_loss
from nasbert_deploy.student.tasks import load_task, sample_task_path

pytestmark = pytest.mark.usefixtures("one_thread")
ARCH = "64:mha,ffn|32:sep3,id"
WORDS = [w for w in tiny_vocab() if w.isalpha() and len(w) > 3]
KEYS_A, KEYS_B, FILL = WORDS[:3], WORDS[3:6], WORDS[6:36]


def _keyword_task(path, n, seed, rule="a"):
    """Each text holds one keyword of set A, one of set B and 3 fillers; the label names the A (or B) keyword.

    Learnable by a tiny model; a teacher trained on rule B disagrees with gold rule A about 2/3 of the time.
    """
    r = random.Random(seed)
    with path.open("w") as f:
        for _ in range(n):
            a, b = r.randrange(3), r.randrange(3)
            words = r.sample(FILL, 3) + [KEYS_A[a], KEYS_B[b]]
            r.shuffle(words)
            f.write(json.dumps({"text": " ".join(words), "label": "xyz"[a if rule == "a" else b]}) + "\n")
    return load_task(path)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, one_thread):
    """Tiny teacher folder and a random tiny NAS-BERT encoder folder with the teacher's tokenizer."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("ft")
    teacher = make_tiny_teacher(root / "teacher")
    torch.manual_seed(0)
    student = build_student(ARCH, init="random", space=TINY)
    student.model.save_pretrained(root / "student")
    AutoTokenizer.from_pretrained(teacher).save_pretrained(root / "student")
    return {"root": root, "teacher": teacher, "student": root / "student"}


@pytest.fixture(scope="module")
def teacher_ft(dirs):
    """The tiny teacher fine-tuned on rule B of the keyword task."""
    root = dirs["root"]
    train, valid = _keyword_task(root / "tb.jsonl", 120, 0, "b"), _keyword_task(root / "vb.jsonl", 30, 1, "b")
    report = finetune_teacher(
        dirs["teacher"], train, valid, root / "teacher-ft", FinetuneConfig(epochs=6, batch_size=8, max_len=32, lr=3e-3)
    )
    assert report["best"]["accuracy"] >= 0.9
    return root / "teacher-ft"


def test_load_task_formats_and_labels(tmp_path):
    (tmp_path / "t.csv").write_text('text,text_pair,label\n"a, b",c,2\nd,e,10\nf,g,2\n', encoding="utf-8")
    task = load_task(tmp_path / "t.csv")
    assert task.texts == ("a, b", "d", "f") and task.pairs == ("c", "e", "g")
    assert task.label_names() == ["2", "10"]  # numeric labels sort numerically
    (tmp_path / "t.tsv").write_text("text\tlabel\nx\tpos\ny\tneg\n", encoding="utf-8")
    assert load_task(tmp_path / "t.tsv").label_ids({"neg": 0, "pos": 1}) == [1, 0]
    s = load_task(sample_task_path("train"))
    assert len(s) == 300 and len(s.label_names()) == 6 and s.pairs is None
    assert len(load_task(sample_task_path("valid"))) == 100


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "a", "label": "x"}\n{"text": "b"}\n', r":2: missing label"),
        ('{"text": "a", "label": "x"}\nnot json\n', r":2: not valid JSON"),
        ('{"text": "a", "label": "x"}\n{"text": "b", "label": "x"}\n', "at least 2"),
        ("", "no rows"),
    ],
)
def test_load_task_errors_name_the_row(tmp_path, content, message):
    p = tmp_path / "bad.jsonl"
    p.write_text(content, encoding="utf-8")
    with pytest.raises(TaskError, match=message):
        load_task(p)


def test_bad_paths_and_unknown_labels(tmp_path):
    with pytest.raises(TaskError, match="valid: .jsonl, .csv, .tsv"):
        (tmp_path / "t.txt").write_text("x")
        load_task(tmp_path / "t.txt")
    with pytest.raises(TaskError, match="does not exist"):
        load_task(tmp_path / "missing.jsonl")
    task = load_task(sample_task_path("valid"))
    with pytest.raises(TaskError, match="labels the model does not know: c-api"):
        task.label_ids({"library": 0})


def test_stratified_split_keeps_every_class():
    task = load_task(sample_task_path("train"))
    train, valid = task.split(0.2, seed=3)
    assert len(train) + len(valid) == 300
    assert 55 <= len(valid) <= 65
    assert set(train.label_names()) == set(valid.label_names()) == set(task.label_names())
    assert not set(train.texts) & set(valid.texts)


def test_finetune_learns_a_keyword_task(dirs, tmp_path):
    train = _keyword_task(tmp_path / "tr.jsonl", 120, 0)
    valid = _keyword_task(tmp_path / "va.jsonl", 60, 1)
    cfg = FinetuneConfig(epochs=10, batch_size=8, max_len=32, lr=3e-3)
    notes: list[str] = []
    report = finetune(dirs["student"], train, valid, tmp_path / "out", cfg, note=notes.append)
    assert report["best"]["accuracy"] >= 0.55, report["history"]  # chance is 1/3
    scored = [n for n in notes if n.startswith("epoch ")]  # every epoch's validation scores are shown as it ends
    assert [n.split(":")[0] for n in scored] == [f"epoch {e}/10" for e in range(1, 11)]
    best = report["best"]["epoch"]
    assert f"macro-F1 {report['history'][best - 1]['valid_macro_f1']:.4f} (the best so far, kept)" in scored[best - 1]
    assert all(f"epoch {best} stays the best" in n for n in scored[best:])
    assert evaluate(tmp_path / "out", train)["accuracy"] >= 0.6
    cfg_json = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg_json["id2label"] == {"0": "x", "1": "y", "2": "z"} and cfg_json["model_type"] == "nasbert"


def test_task_distillation_follows_the_teacher(dirs, teacher_ft, tmp_path):
    train = _keyword_task(tmp_path / "tr.jsonl", 120, 0)  # gold: rule A; the teacher follows rule B
    valid = _keyword_task(tmp_path / "va.jsonl", 30, 1)
    scores = {}
    for lam in (0.0, 1.0):
        cfg = FinetuneConfig(epochs=10, batch_size=8, max_len=32, lr=3e-3, lam=lam, temperature=2.0)
        report = finetune(dirs["student"], train, valid, tmp_path / f"s{lam}", cfg, teacher_model=teacher_ft)
        assert report["distilled_from_teacher"]
        scores[lam] = evaluate(tmp_path / f"s{lam}", train, teacher_model=teacher_ft)
    assert scores[0.0]["teacher_accuracy"] < 0.5  # the teacher disagrees with gold
    assert scores[1.0]["label_loyalty"] > scores[0.0]["label_loyalty"] + 0.2
    assert scores[1.0]["probability_loyalty"] > scores[0.0]["probability_loyalty"]
    assert scores[0.0]["accuracy"] > scores[1.0]["accuracy"]


def test_transfer_set_pulls_the_student_towards_the_teacher(dirs, teacher_ft, tmp_path):
    train = _keyword_task(tmp_path / "tr.jsonl", 60, 0)  # gold: rule A; the teacher follows rule B
    valid = _keyword_task(tmp_path / "va.jsonl", 30, 1)
    (tmp_path / "unlabelled.txt").write_text("\n".join(_keyword_task(tmp_path / "u.jsonl", 240, 2).texts + train.texts[:5]))
    rows = transfer_texts(tmp_path / "unlabelled.txt", train, valid)
    assert not set(rows) & set(train.texts) and len(rows) == len(set(rows))  # the task's own texts are left out
    assert transfer_texts(tmp_path / "unlabelled.txt", train, valid, limit=10, seed=1) != transfer_texts(
        tmp_path / "unlabelled.txt", train, valid, limit=10, seed=2)
    cfg = FinetuneConfig(epochs=4, batch_size=8, max_len=32, lr=3e-3, lam=0.0)  # labelled rows: gold CE only
    loyalty = {}
    for name, extra in (("plain", None), ("transfer", rows)):
        report = finetune(dirs["student"], train, valid, tmp_path / name, cfg, teacher_model=teacher_ft, transfer=extra)
        assert report["transfer_rows"] == (0 if extra is None else len(rows))
        loyalty[name] = evaluate(tmp_path / name, valid, teacher_model=teacher_ft)["label_loyalty"]
    assert loyalty["transfer"] > loyalty["plain"] + 0.2, loyalty


def test_transfer_needs_a_teacher_and_a_single_text_task(dirs, tmp_path):
    train = _keyword_task(tmp_path / "tr.jsonl", 20, 0)
    with pytest.raises(TaskError, match="needs --teacher-model"):
        finetune(dirs["student"], train, train, tmp_path / "o", FinetuneConfig(epochs=1), transfer=["a b c"])
    (tmp_path / "same.txt").write_text("\n".join(train.texts))
    with pytest.raises(TaskError, match="every line is a text of the task"):
        transfer_texts(tmp_path / "same.txt", train, train)
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(CorpusError, match="transfer set"):
        transfer_texts(tmp_path / "bin.txt", train, train)
    assert not (tmp_path / "o").exists()


def test_mixed_loss_is_the_old_formula_on_labelled_rows_and_kl_alone_on_transfer_rows():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    y = torch.tensor([0, 3, 1, 2, 1, 0])
    old = 0.3 * torch.nn.functional.cross_entropy(s, y) + 0.7 * kd_loss(s, t, 2.0)
    assert torch.allclose(mixed_loss(s, y, t, 0.7, 2.0), old)
    assert torch.allclose(mixed_loss(s, y, None, 0.7, 2.0), torch.nn.functional.cross_entropy(s, y))
    y_mixed = torch.tensor([0, 3, 1, -1, -1, -1])
    rows = torch.cat([0.3 * torch.nn.functional.cross_entropy(s[:3], y[:3], reduction="none") + 0.7 * soft_kl(s[:3], t[:3], 2.0),
                      soft_kl(s[3:], t[3:], 2.0)])
    assert torch.allclose(mixed_loss(s, y_mixed, t, 0.7, 2.0), rows.mean())


def test_finetune_resumes_mid_epoch_to_the_same_weights(dirs, tmp_path):
    train = _keyword_task(tmp_path / "tr.jsonl", 40, 0)
    valid = _keyword_task(tmp_path / "va.jsonl", 12, 1)
    cfg = FinetuneConfig(epochs=2, batch_size=8, max_len=32, lr=3e-3)
    finetune(dirs["student"], train, valid, tmp_path / "ref", cfg)

    def stop(step, total, values):
        if step == 7:  # inside the second epoch (5 batches per epoch)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(dirs["student"], train, valid, tmp_path / "run", cfg, progress=stop)
    assert json.loads((checkpoint_dir(tmp_path / "run") / "state.json").read_text())["done"] == 2
    seen = []
    finetune(dirs["student"], train, valid, tmp_path / "run", cfg, progress=lambda s, n, v: seen.append(s))
    assert seen == [8, 9, 10]
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "ref" / "model.safetensors"), load_file(tmp_path / "run" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_teacher_with_other_labels_is_refused(dirs, teacher_ft, tmp_path):
    (tmp_path / "other.jsonl").write_text('{"text": "a b", "label": "p"}\n{"text": "c d", "label": "q"}\n')
    train = load_task(tmp_path / "other.jsonl")
    with pytest.raises(TaskError, match="labels the model does not know"):
        finetune(dirs["student"], train, train, tmp_path / "o", FinetuneConfig(epochs=1), teacher_model=teacher_ft)
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_exported_classifier_scores_agree_with_torch(teacher_ft, tmp_path):
    """ONNX Runtime and OpenVINO runs of the exported classifier give the torch logits and metrics."""
    valid = _keyword_task(tmp_path / "va.jsonl", 40, 5, "b")
    ref = evaluate(teacher_ft, valid)
    for runtime in ("onnxruntime", "openvino"):
        got = evaluate(teacher_ft, valid, runtime=runtime)
        assert got["max_abs_logit_diff_vs_torch"] < 1e-4
        assert got["prediction_agreement_vs_torch"] == 1.0
        assert got["accuracy"] == ref["accuracy"] and got["macro_f1"] == ref["macro_f1"]
