"""Student distillation on tiny configs: losses, supernet inheritance, resume, outputs, errors."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from helpers import make_tiny_teacher

from nasbert_deploy.errors import CheckpointError, TeacherError
from nasbert_deploy.space import TINY
from nasbert_deploy.student.distill import (
    DistillConfig,
    build_student,
    checkpoint_dir,
    distill,
    distill_losses,
    heldout_losses,
    masked_kl,
    masked_mse,
)
from nasbert_deploy.student.tasks import load_task, sample_task_path
from nasbert_deploy.supernet.network import Supernet
from nasbert_deploy.teacher import load_teacher

ARCH = "64:mha,ffn|32:sep3,id"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return load_teacher(make_tiny_teacher(tmp_path_factory.mktemp("teacher")))


@pytest.fixture(scope="module")
def supernet_dir(tmp_path_factory):
    torch.manual_seed(0)
    net = Supernet(TINY)
    with torch.no_grad():  # non-trivial maps so that inheritance is checked for real
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    d = tmp_path_factory.mktemp("supernet")
    net.save(d)
    return d


@pytest.fixture(scope="module")
def texts():
    return list(load_task(sample_task_path("train")).texts)


def _cfg(**kw):
    base = dict(steps=12, batch_size=4, seq_len=24, lr=2e-3, intermediate_weight=1.0, checkpoint_every=5)
    return DistillConfig(**{**base, **kw})


def test_masked_losses_ignore_padding():
    s, t = torch.zeros(1, 4, 3), torch.zeros(1, 4, 3)
    t[0, :2] = 2.0
    t[0, 3] = 1000.0  # padding: must not count
    mask = torch.tensor([[1, 1, 1, 0]])
    assert masked_mse(s, t, mask).item() == pytest.approx(4.0 * 2 / 3)
    logits = torch.randn(1, 4, 7)
    assert masked_kl(logits, logits, mask, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    other = logits.clone()
    other[0, 3] += 50.0  # differs only at the padded position
    assert masked_kl(other, logits, mask, 1.0).item() == pytest.approx(0.0, abs=1e-6)
    assert masked_kl(logits * 3, logits, mask, 1.0).item() > 0.01


def test_inherited_student_reproduces_supernet_blocks(teacher, supernet_dir):
    net, _ = Supernet.load(supernet_dir)
    student = build_student(ARCH, supernet_dir=supernet_dir)
    assert student.init == "supernet"
    arch = TINY.parse(ARCH)
    enc = teacher.tokenizer(["a short text", "another text for the test"], padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    outs = []
    hook = student.model.blocks[0].register_forward_hook(lambda _m, _i, o: outs.append(o))
    with torch.no_grad():
        final = student.model(ids, mask).last_hidden_state
        hook.remove()
        ref_block0 = net.forward_block(0, arch.blocks[0], net.embed(ids), mask)
        ref_final = net(arch, ids, mask)
        # the training-only projection is the supernet's out_map: block-0 output in teacher width matches
        got_block0 = student.projections[0](outs[0].view(*ids.shape, -1))  # blocks see (b * t, hidden) tokens
    real = mask.bool()
    assert (got_block0 - ref_block0)[real].abs().max().item() < 1e-5
    assert (final - ref_final)[real].abs().max().item() < 1e-5


def test_losses_present_and_weighted(teacher):
    student = build_student(ARCH, init="random", space=TINY)
    batch = {k: v for k, v in teacher.tokenizer(["one text", "two texts here"], padding=True, return_tensors="pt").items()}
    base = distill_losses(student, teacher, batch, _cfg(), None)
    assert set(base) == {"hidden", "blocks", "total"}
    assert base["total"].item() == pytest.approx(base["hidden"].item() + base["blocks"].item(), rel=1e-6)
    doubled = distill_losses(student, teacher, batch, _cfg(hidden_weight=2.0, intermediate_weight=0.0), None)
    assert set(doubled) == {"hidden", "total"}
    assert doubled["hidden"].item() == pytest.approx(2 * base["hidden"].item(), rel=1e-5)


def test_distill_reduces_heldout_loss_and_writes_hf_folder(teacher, supernet_dir, texts, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    student = build_student(ARCH, supernet_dir=supernet_dir)
    cfg = _cfg(steps=40)
    before = heldout_losses(student, teacher, texts[:24], cfg)
    report = distill(student, teacher, texts[24:], tmp_path / "out", cfg, valid_corpus=texts[:24])
    assert report["heldout"]["hidden"] < 0.9 * before["hidden"]
    assert report["heldout"]["blocks"] < before["blocks"]
    assert report["heldout"]["hidden_fvu"] < before["hidden_fvu"]
    # fraction of variance unexplained = MSE / teacher variance, the same ratio before and after
    ratio = before["hidden"] / before["hidden_fvu"]
    assert report["heldout"]["hidden"] / report["heldout"]["hidden_fvu"] == pytest.approx(ratio, rel=1e-6)
    assert report["steps"] == 40 and report["params"] == TINY.params(TINY.parse(ARCH))
    model = AutoModel.from_pretrained(tmp_path / "out")
    assert model.config.arch == ARCH
    assert len(AutoTokenizer.from_pretrained(tmp_path / "out")) == 1000
    assert json.loads((tmp_path / "out" / "distill_report.json").read_text())["init"] == "supernet"
    assert not checkpoint_dir(tmp_path / "out").exists()
    with torch.no_grad():  # the saved weights are the trained ones
        a = student.model(torch.tensor([[2, 50, 60, 3]])).last_hidden_state
        b = model(torch.tensor([[2, 50, 60, 3]])).last_hidden_state
    assert torch.allclose(a, b)


def test_interrupted_run_resumes_to_the_same_weights(teacher, texts, tmp_path):
    cfg = _cfg(steps=10, checkpoint_every=4)
    ref = build_student(ARCH, init="random", space=TINY)
    distill(ref, teacher, texts, tmp_path / "ref", cfg)

    def stop_at_7(step, total, values):
        if step == 7:
            raise KeyboardInterrupt

    first = build_student(ARCH, init="random", space=TINY)
    with pytest.raises(KeyboardInterrupt):
        distill(first, teacher, texts, tmp_path / "run", cfg, progress=stop_at_7)
    state = json.loads((checkpoint_dir(tmp_path / "run") / "state.json").read_text())
    assert state["step"] == 7 and not (tmp_path / "run").exists()
    seen = []
    resumed = build_student(ARCH, init="random", space=TINY)
    distill(resumed, teacher, texts, tmp_path / "run", cfg, progress=lambda s, n, v: seen.append(s))
    assert seen == [8, 9, 10]
    for (k, a), b in zip(ref.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k


def test_heldout_curve_is_kept_across_a_resume_and_does_not_change_training(teacher, texts, tmp_path):
    cfg = _cfg(steps=10, checkpoint_every=4)
    plain = build_student(ARCH, init="random", space=TINY)
    distill(plain, teacher, texts, tmp_path / "plain", cfg)
    ref = build_student(ARCH, init="random", space=TINY)
    report = distill(ref, teacher, texts, tmp_path / "ref", cfg, texts[:16], heldout_every=3)
    curve = report["heldout_curve"]
    assert [p["step"] for p in curve] == [0, 3, 6, 9] and report["heldout_curve_batches"] == 20
    assert curve[-1]["hidden"] < curve[0]["hidden"] and all("hidden_fvu" in p for p in curve)
    for (k, a), b in zip(plain.model.state_dict().items(), ref.model.state_dict().values()):
        assert torch.equal(a, b), k  # scoring held-out text in between changes nothing in the run

    def stop_at_7(step, total, values):
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill(build_student(ARCH, init="random", space=TINY), teacher, texts, tmp_path / "run", cfg, texts[:16],
                progress=stop_at_7, heldout_every=3)
    state = json.loads((checkpoint_dir(tmp_path / "run") / "state.json").read_text())
    assert [p["step"] for p in state["heldout_curve"]] == [0, 3, 6]
    resumed = distill(build_student(ARCH, init="random", space=TINY), teacher, texts, tmp_path / "run", cfg, texts[:16],
                      heldout_every=3)
    assert [p["step"] for p in resumed["heldout_curve"]] == [0, 3, 6, 9]
    for a, b in zip(curve, resumed["heldout_curve"]):
        assert a["hidden"] == pytest.approx(b["hidden"], rel=1e-5)


def test_checkpoint_of_another_run_is_refused(teacher, texts, tmp_path):
    student = build_student(ARCH, init="random", space=TINY)
    def interrupt(step, total, values):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill(student, teacher, texts, tmp_path / "o", _cfg(), progress=interrupt)
    with pytest.raises(CheckpointError, match="different run"):
        distill(student, teacher, texts, tmp_path / "o", _cfg(lr=1e-3))


def test_prediction_loss_needs_an_mlm_head(teacher, texts, tmp_path):
    student = build_student(ARCH, init="random", space=TINY)
    with pytest.raises(TeacherError, match="no masked-LM head"):
        distill(student, teacher, texts, tmp_path / "o", _cfg(prediction_weight=1.0))
    mlm_teacher = load_teacher(make_tiny_teacher(tmp_path / "mlm", mlm=True))
    report = distill(student, mlm_teacher, texts, tmp_path / "o2", _cfg(steps=3, prediction_weight=1.0))
    assert report["steps"] == 3

    from nasbert_deploy.student.distill import load_mlm_head

    head = load_mlm_head(mlm_teacher)
    batch = dict(mlm_teacher.tokenizer(["some text"], return_tensors="pt"))
    losses = distill_losses(student, mlm_teacher, batch, _cfg(prediction_weight=1.0), head)
    assert losses["prediction"].item() > 0


def test_student_sources_and_errors(teacher, tmp_path):
    student = build_student(ARCH, init="random", space=TINY)
    student.model.save_pretrained(tmp_path / "exp")
    again = build_student(from_export=tmp_path / "exp")
    assert again.init == "export" and again.model.config.arch == ARCH
    with pytest.raises(CheckpointError, match="exactly one"):
        build_student(ARCH, from_export=tmp_path / "exp")
    with pytest.raises(CheckpointError, match="not a local Hugging Face model folder"):
        build_student(from_export=tmp_path)
    narrow = dataclasses.replace(TINY, output_dim=32)
    with pytest.raises(TeacherError, match="hidden size is 48"):
        distill(build_student(ARCH, init="random", space=narrow), teacher, ["text"], tmp_path / "x", _cfg())
    assert not (tmp_path / "x").exists()
