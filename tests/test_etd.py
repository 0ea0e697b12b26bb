"""Extract Then Distill (issue #15): importance scores and students extracted from the teacher."""

from __future__ import annotations

import pytest
import torch
from helpers import SAMPLE, loud_tiny_teacher, make_tiny_teacher

from nasbert_deploy.errors import TeacherError
from nasbert_deploy.model.etd import default_layer_map, describe_map, extract_student
from nasbert_deploy.model.importance import importance_scores
from nasbert_deploy.space import MINILM, TINY, SearchSpace

# the tiny teacher: hidden 48, 2 layers, 4 heads of 12, FFN 96 (ratio 2)
SPACE = SearchSpace(name="etd", num_blocks=2, layers_per_block=2, hidden_sizes=(24, 48), conv_kernels=(3,), head_dim=12,
                    ffn_ratio=2, embed_dim=48, output_dim=48, vocab_size=1000, max_positions=TINY.max_positions)
TEXTS = [t for t in SAMPLE.read_text().splitlines() if t.strip()][:24]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return loud_tiny_teacher(tmp_path_factory.mktemp("t"))


@pytest.fixture(scope="module")
def impt(teacher):
    return importance_scores(teacher.model, teacher.tokenizer, TEXTS, "impt", batch_size=8, seq_len=32)


def _inputs(teacher):
    enc = teacher.tokenizer(TEXTS[:4], padding=True, truncation=True, max_length=32, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def test_full_width_full_depth_student_is_the_teacher(teacher, impt):
    student, report = extract_student("48:mha,ffn|48:mha,ffn", SPACE, teacher.model, impt)
    ids, mask = _inputs(teacher)
    with torch.no_grad():
        want = teacher.model(input_ids=ids, attention_mask=mask).last_hidden_state
        got = student(input_ids=ids, attention_mask=mask).last_hidden_state
    m = mask[:, :, None].bool()
    assert torch.allclose(got.masked_select(m), want.masked_select(m), atol=1e-4)
    assert describe_map(report) == "48: mha<L1 ffn<L1 | 48: mha<L2 ffn<L2"


def test_importance_ranks_every_unit_and_is_reproducible(teacher, impt):
    assert impt.heads.shape == (2, 4) and impt.neurons.shape == (2, 96) and impt.hidden.shape == (48,)
    assert (impt.heads > 0).all() and (impt.hidden > 0).any() and impt.texts == len(TEXTS)
    again = importance_scores(teacher.model, teacher.tokenizer, TEXTS, "impt", batch_size=8, seq_len=32)
    assert torch.allclose(impt.heads, again.heads)  # seeded token dropping: same scores
    rand = importance_scores(teacher.model, teacher.tokenizer, TEXTS, "rand", seed=1)
    assert rand.method == "rand" and rand.hidden_order() != impt.hidden_order()
    assert not any(p.grad is not None for p in teacher.model.parameters())  # gradients went to the gates only


def test_narrow_student_keeps_the_most_important_units(teacher, impt):
    student, report = extract_student("24:mha,ffn|48:sep3,ffn", SPACE, teacher.model, impt)
    block = report["blocks"][0]["ops"]
    keep = sorted(int(i) + 1 for i in torch.argsort(-impt.heads[0])[:2])
    assert block[0] == {"op": "mha", "teacher_layer": 1, "heads": keep}
    dims = sorted(impt.hidden_order()[:24])
    att = teacher.model.encoder.layer[0].attention
    assert torch.equal(student.blocks[0].layers[0].norm.weight, att.output.LayerNorm.weight[dims])
    assert report["blocks"][1]["ops"][0] == {"op": "sep3", "teacher_layer": None}
    ids, mask = _inputs(teacher)
    with torch.no_grad():
        out = student(input_ids=ids, attention_mask=mask).last_hidden_state
    assert out.shape[-1] == 48 and torch.isfinite(out).all()
    # the boundary embeds the 24 kept dimensions into the 48 of the next block; the head maps back to the teacher's
    assert student.boundaries[0].weight.sum() == 24 and student.head.weight.sum() == 48


def test_grouped_heads_and_projected_embeddings(teacher, impt):
    space = SearchSpace(name="etd2", num_blocks=1, layers_per_block=2, hidden_sizes=(48,), conv_kernels=(3,),
                        head_dim=24, ffn_ratio=2, embed_dim=16, output_dim=48, vocab_size=1000, max_positions=64)
    student, report = extract_student("48:mha,ffn", space, teacher.model, impt)
    assert len(report["blocks"][0]["ops"][0]["heads"]) == 4 and "16 principal" in report["embeddings"]
    ids, mask = _inputs(teacher)
    with torch.no_grad():
        emb = teacher.model.embeddings(input_ids=ids)
        got = student.embed_proj(student.embeddings(ids))
    cos = torch.nn.functional.cosine_similarity(got.flatten(0, 1), emb.flatten(0, 1), dim=-1)
    assert cos.mean() > 0.5  # an approximation of the teacher's embedding output, not noise


def test_layer_map_defaults_and_errors(teacher, impt):
    arch = SPACE.parse("48:mha,ffn|48:mha,mha")
    assert default_layer_map(arch, 2) == [[0, 0], [1, 1]]
    six = MINILM.parse("128:mha,ffn,id|128:mha,ffn,mha|128:ffn,id,id")
    assert default_layer_map(six, 6) == [[0, 0, None], [2, 2, 3], [4, None, None]]  # DistilBERT-like 1, 3, 5
    with pytest.raises(TeacherError, match="teacher layer in 0..1"):
        extract_student(arch, SPACE, teacher.model, impt, layer_map=[[0, 5], [1, 1]])
    with pytest.raises(TeacherError, match="head_dim a multiple"):
        extract_student("32:mha,ffn|32:ffn,id", TINY.__class__(**{**TINY.to_dict(), "hidden_sizes": (32,), "head_dim": 16,
                                                                    "conv_kernels": (3,), "output_dim": 48}), teacher.model, impt)
    with pytest.raises(TeacherError, match="at least 2 non-empty texts"):
        importance_scores(teacher.model, teacher.tokenizer, ["one"], "impt")


def test_distill_starts_from_the_extracted_teacher(tmp_path, teacher):
    from nasbert_deploy.student.distill import DistillConfig, distill
    from nasbert_deploy.student.extraction import etd_student, extraction_summary

    student = etd_student("48:mha,ffn|48:sep3,ffn", SPACE, teacher, TEXTS, "etd-impt", sample=16)
    assert student.init == "etd-impt" and extraction_summary(student)["layer_map"] == "48: mha<L1 ffn<L1 | 48: sep3 ffn<L2"
    # the block projection puts block 1's kept dimensions back where the teacher has them
    assert torch.equal(student.projections[0].weight, torch.eye(48))
    cfg = DistillConfig(steps=3, batch_size=4, seq_len=16, checkpoint_every=2)
    report = distill(student, teacher, TEXTS, tmp_path / "s", cfg, metadata=extraction_summary(student))
    assert report["init"] == "etd-impt" and report["extraction"]["blocks"][1]["ops"][1]["teacher_layer"] == 2
    assert (tmp_path / "s" / "config.json").is_file()


def test_cli_etd_needs_a_space_that_fits_the_teacher(tmp_path):
    from typer.testing import CliRunner

    from nasbert_deploy.cli.app import app

    src = make_tiny_teacher(tmp_path / "t")
    args = ["distill", "--out", str(tmp_path / "o"), "--corpus", str(SAMPLE), "--teacher", str(src), "--init", "etd-impt",
            "--space", "tiny", "--arch", "32:mha,ffn|64:sep3,id", "--steps", "1"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and "head_dim a multiple of the teacher's head size 12" in r.stderr, r.output
    assert not (tmp_path / "o").exists()
    r = CliRunner().invoke(app, [*args[:-4], "--from-export", str(src), "--steps", "1"])
    assert r.exit_code == 2 and "give --arch, not --from-export" in r.stderr, r.output


def test_teacher_converts_exactly_and_fine_tunes_mean_pooled(tmp_path, teacher):
    from nasbert_deploy.model.etd import convert_teacher
    from nasbert_deploy.student.finetune import FinetuneConfig, finetune_teacher, load_classifier
    from nasbert_deploy.student.tasks import load_task, sample_task_path

    model = convert_teacher(teacher.model)
    ids, mask = _inputs(teacher)
    with torch.no_grad():
        want = teacher.model(input_ids=ids, attention_mask=mask).last_hidden_state
        got = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.allclose(got[mask.bool()], want[mask.bool()], atol=1e-4)
    # no square projections left: the converted encoder has the teacher's parameters (less its unused pooler)
    assert model.config.identity_projections and not hasattr(model.embed_proj, "weight")
    assert not any(hasattr(b, "weight") for b in model.boundaries) and not hasattr(model.head, "weight")
    pooler = sum(p.numel() for n, p in teacher.model.named_parameters() if n.startswith("pooler."))
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in teacher.model.parameters()) - pooler
    src = tmp_path / "t"
    teacher.model.save_pretrained(src)
    teacher.tokenizer.save_pretrained(src)
    train = load_task(sample_task_path("train")).subset(range(32))
    valid = load_task(sample_task_path("valid")).subset(range(16))
    report = finetune_teacher(src, train, valid, tmp_path / "ft", FinetuneConfig(epochs=1, batch_size=8, max_len=32),
                              pooling="mean")
    clf, _ = load_classifier(tmp_path / "ft")
    assert type(clf).__name__ == "NasBertForSequenceClassification" and report["pooling"] == "mean"
    assert clf.config.identity_projections and not hasattr(clf.nasbert.head, "weight")
    assert report["best"]["epoch"] == 1


def test_auto_pooling_is_mean_for_bert_encoders_only(tmp_path, teacher):
    import json

    from nasbert_deploy.student.finetune import FinetuneConfig, finetune_teacher, resolve_pooling
    from nasbert_deploy.student.tasks import load_task, sample_task_path

    src = tmp_path / "t"
    teacher.model.save_pretrained(src)
    teacher.tokenizer.save_pretrained(src)
    assert resolve_pooling(src) == "mean"
    other = tmp_path / "roberta"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "roberta"}))
    assert resolve_pooling(other) == "cls"
    train = load_task(sample_task_path("train")).subset(range(16))
    valid = load_task(sample_task_path("valid")).subset(range(8))
    notes: list[str] = []
    report = finetune_teacher(src, train, valid, tmp_path / "ft", FinetuneConfig(epochs=1, batch_size=8, max_len=32),
                              note=notes.append)  # pooling="auto", the default
    assert report["pooling"] == "mean" and any("pooling: mean (auto" in n for n in notes)


def test_supernet_starts_from_the_teacher(teacher, impt):
    from nasbert_deploy.supernet.etd_init import check_space_extractable, init_supernet_from_teacher
    from nasbert_deploy.supernet.network import Supernet

    net = Supernet(SPACE)
    mapping = init_supernet_from_teacher(net, teacher.model, impt)
    assert mapping == [[1, 1], [2, 2]]  # one teacher layer per block, both positions
    ids, mask = _inputs(teacher)
    with torch.no_grad():
        want = teacher.model(input_ids=ids, attention_mask=mask).last_hidden_state
        got = net.extract("48:mha,ffn|48:mha,ffn")(input_ids=ids, attention_mask=mask).last_hidden_state
        narrow = net.extract("24:mha,ffn|24:ffn,sep3")(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.allclose(got[mask.bool()], want[mask.bool()], atol=1e-4)  # the full-width path is the teacher
    assert torch.isfinite(narrow).all()
    with pytest.raises(TeacherError, match="use --init random"):
        check_space_extractable(TINY, teacher.model)


def test_a_projection_that_is_not_an_identity_is_not_dropped(teacher):
    from nasbert_deploy.model.etd import convert_teacher, extract_student, teacher_space, without_projections
    from nasbert_deploy.model.importance import Importance, teacher_shape

    L, H, inner, D = teacher_shape(teacher.model)
    keep_all = Importance(torch.ones(L, H), torch.ones(L, inner), torch.ones(D), "all", 0)
    model, _ = extract_student("|".join([f"{D}:mha,ffn"] * L), teacher_space(teacher.model), teacher.model, keep_all)
    with torch.no_grad():
        model.boundaries[0].weight[0, 1] = 1e-3  # what fine-tuning does to an identity Linear
    with pytest.raises(ValueError, match="boundaries.0 is not an identity projection"):
        without_projections(model)
    assert convert_teacher(teacher.model).config.to_dict()["identity_projections"] is True
