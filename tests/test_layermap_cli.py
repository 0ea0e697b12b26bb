"""`layer-map` and `distill --layer-map` on the command line: a tiny search end to end, its result taken by
`distill`, and the one-line errors (exit 2) before any work, with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import SAMPLE, make_sample_teacher
from typer.testing import CliRunner

from nasbert_deploy.cli.app import app
from nasbert_deploy.student.tasks import SAMPLE_DIR

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
ARCH = "64:mha,ffn|32:sep3,id"
RETRIEVAL = str(SAMPLE_DIR / "debian-retrieval-sample.jsonl")
CLASSES = str(SAMPLE_DIR / "debian-sections-sample-train.jsonl")
FAST = ["--steps", "3", "--batch-size", "4", "--seq-len", "16", "--corpus-limit", "40", "--task-limit", "40"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return make_sample_teacher(tmp_path_factory.mktemp("teacher") / "t", layers=4)


def _args(teacher_dir: Path, out: Path, /, *extra: str, **change: str) -> list[str]:
    """The tiny search's arguments; `change` replaces an option's value (`tasks` replaces both task files)."""
    opts = {
        "--student": ARCH,
        "--init": "random",
        "--space": "tiny",
        "--teacher": str(teacher_dir),
        "--corpus": str(SAMPLE),
        "--out": str(out),
    }
    opts.update({f"--{k}": v for k, v in change.items() if k != "tasks"})
    tasks = [change["tasks"]] if "tasks" in change else [RETRIEVAL, CLASSES]
    return ["layer-map", *(t for kv in opts.items() for t in kv), *(t for f in tasks for t in ("--tasks", f)), *FAST, *extra]


def _run(args: list[str]):
    return runner.invoke(app, args, env={"COLUMNS": "80"})


def test_search_then_distill_with_the_found_map(teacher, tmp_path):
    out = tmp_path / "map.json"
    r = _run(_args(teacher, out, "--population", "3", "--generations", "1", "--crossover", "one-point"))
    assert r.exit_code == 0, r.output
    assert "generation 0/1, evaluation 1: map 2,4" in r.output and "best map" in r.output and "resuming" not in r.output
    res = json.loads(out.read_text())
    assert set(res["heuristics"]) == {"uniform", "last-layers", "first-layers"}
    assert res["teacher_layers"] == 4 and res["student_blocks"] == 2 and len(res["layer_map"]) == 2
    assert set(res["scores"]) == {"debian-retrieval-sample", "debian-sections-sample-train"}
    assert res["fitness"] == pytest.approx(sum(res["scores"].values()) / 2)
    assert res["settings"]["ga"]["crossover"] == "one-point" and res["machine"]["cpu_model"]
    assert len(res["evaluated"]) >= 3 and res["cpu_hours"] > 0 and res["wall_s"] > 0
    assert (tmp_path / "map.json.cache.json").is_file()

    r = _run(_args(teacher, out, "--population", "3", "--generations", "1", "--crossover", "one-point"))
    assert r.exit_code == 2 and "--out" in r.stderr and "pass --force" in r.stderr  # a finished result is kept
    r = _run(_args(teacher, out, "--population", "3", "--generations", "1", "--crossover", "one-point", "--force"))
    assert r.exit_code == 0, r.output
    assert f"resuming: {len(res['evaluated'])} maps already evaluated" in r.output
    assert json.loads(out.read_text())["layer_map"] == res["layer_map"]

    student = tmp_path / "student"
    r = _run(
        [
            "distill",
            "--arch",
            ARCH,
            "--init",
            "random",
            "--space",
            "tiny",
            "--teacher",
            str(teacher),
            "--corpus",
            str(SAMPLE),
            "--out",
            str(student),
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--seq-len",
            "16",
            "--layer-map",
            str(out),
        ]
    )
    assert r.exit_code == 0, r.output
    report = json.loads((student / "distill_report.json").read_text())
    assert report["distill_layer_map"] == res["layer_map"] and report["config"]["intermediate_weight"] == 1.0
    r = _run(
        [
            "distill",
            "--arch",
            ARCH,
            "--init",
            "random",
            "--space",
            "tiny",
            "--teacher",
            str(teacher),
            "--corpus",
            str(SAMPLE),
            "--out",
            str(tmp_path / "s2"),
            "--steps",
            "1",
            "--batch-size",
            "4",
            "--layer-map",
            "0,3",
        ]
    )
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "s2" / "distill_report.json").read_text())["distill_layer_map"] == [0, 3]
    r = _run(
        [
            "distill",
            "--from-export",
            str(student),
            "--teacher",
            str(teacher),
            "--corpus",
            str(SAMPLE),
            "--out",
            str(tmp_path / "s3"),
            "--layer-map",
            "1,2,3",
        ]
    )  # the blocks come from the folder's config
    assert r.exit_code == 2 and "has 2 entries (one per block)" in " ".join(r.stderr.split()), r.output


def test_refine_stage_scores_the_best_maps_longer_and_resumes(teacher, tmp_path):
    out = tmp_path / "map.json"
    refine = ["--refine-top", "1", "--refine-steps", "5", "--refine-seeds", "0,1"]
    r = _run(_args(teacher, out, "--population", "3", "--generations", "0", *refine))
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    rr = res["refine"]
    ga_best, uniform = res["ga_best"]["layer_map"], res["heuristics"]["uniform"]["map"]
    assert ga_best == max(res["evaluated"], key=lambda e: e["fitness"])["map"]
    assert sorted(map(tuple, (c["map"] for c in rr["candidates"]))) == sorted({tuple(ga_best), tuple(uniform)})
    assert rr["settings"] == {"top": 1, "steps": 5, "seeds": [0, 1]}
    assert rr["new_evaluations"] == 2 * len(rr["candidates"]) and res["layer_map"] == rr["pick"]
    best = rr["candidates"][0]
    assert best["map"] == rr["pick"] and best["fitness"] == max(c["fitness"] for c in rr["candidates"])
    assert best["fitness"] == pytest.approx(sum(best["per_seed"].values()) / 2) and set(best["per_seed"]) == {"0", "1"}
    assert res["fitness"] == next(e["fitness"] for e in res["evaluated"] if e["map"] == res["layer_map"])
    assert f"refine 1/{rr['new_evaluations']}: map" in r.output and "refined " in r.output
    cache = json.loads((tmp_path / "map.json.cache.json").read_text())
    assert set(cache["refined"]) == {"steps=5,seed=0", "steps=5,seed=1"}

    r = _run(_args(teacher, out, "--population", "3", "--generations", "0", *refine, "--force"))
    assert r.exit_code == 0, r.output
    again = json.loads(out.read_text())
    assert "refine: resuming" in r.output and again["refine"]["new_evaluations"] == 0
    assert again["refine"]["candidates"] == rr["candidates"] and again["layer_map"] == res["layer_map"]


@pytest.fixture
def tripwires(monkeypatch):
    """A command that loads the teacher's weights or starts a search/distillation fails the test."""
    import nasbert_deploy.layermap.run as run
    import nasbert_deploy.student.distill as distill
    import nasbert_deploy.teacher as teacher_mod

    def trip(*_a, **_k):
        raise AssertionError("heavy work started")

    for module, name in [
        (teacher_mod, "load_teacher"),
        (run, "search_layer_map"),
        (distill, "distill"),
        (distill, "build_student"),
    ]:
        monkeypatch.setattr(module, name, trip)


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


LAYER_MAP_ERRORS = [
    ("missing corpus", {"corpus": "nope.txt"}, "corpus nope.txt does not exist"),
    ("empty corpus", {"corpus": "empty.txt"}, "has no paragraph"),
    ("task without labels", {"tasks": "nolabel.jsonl"}, "missing label"),
    ("task of one label", {"tasks": "onelabel.jsonl"}, "classification needs at least 2"),
    ("unknown arch", {"student": "999:mha,ffn|32:sep3,id"}, "hidden 999 not in"),
    ("not an arch or folder", {"student": "somewhere/model"}, "neither an existing folder nor an arch string"),
    ("teacher a NAS-BERT model", {"teacher": "nb"}, "is a NAS-BERT model: it teaches only as `distill"),
    ("population 1", {"population": "1"}, "'--population': Input should be greater than or equal to 2"),
    ("elite >= population", {"population": "3", "elite": "3"}, "elite 3: give 0..2"),
    ("too many generations", {"generations": "1000"}, "less than or equal to 100"),
    ("out is a folder", {"out": "adir"}, "is a folder"),
    ("cache of other settings", {}, "other settings (proxy differ)"),
    ("refine not longer", {"refine-top": "2", "refine-steps": "3"}, "give more than the search's --steps 3"),
    ("refine seeds not integers", {"refine-top": "2", "refine-seeds": "a,b"}, "refine-seeds 'a,b'"),
    ("refine seeds repeated", {"refine-top": "2", "refine-seeds": "1,1"}, "distinct seeds"),
    ("refine seeds bad without refine", {"refine-seeds": "x"}, "refine-seeds 'x'"),  # checked even when unused
]  # fmt: skip


@pytest.mark.parametrize(("case", "change", "fragment"), LAYER_MAP_ERRORS, ids=[c[0] for c in LAYER_MAP_ERRORS])
def test_layer_map_errors_are_one_line_before_any_work(case, change, fragment, teacher, tmp_path, monkeypatch, tripwires):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.txt").write_text("\n \n")
    (tmp_path / "nolabel.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n')
    (tmp_path / "onelabel.jsonl").write_text("".join(json.dumps({"text": f"t {i}", "label": "x"}) + "\n" for i in range(9)))
    (tmp_path / "adir").mkdir()
    (tmp_path / "nb").mkdir()
    (tmp_path / "nb" / "config.json").write_text(json.dumps({"model_type": "nasbert", "arch": ARCH, "hidden_size": 48}))
    if case == "cache of other settings":  # the command's own settings, but 7 proxy steps instead of 3
        from nasbert_deploy.layermap.proxy import ProxySettings
        from nasbert_deploy.layermap.request import LayerMapRequest, prepare

        proxy = ProxySettings(steps=7, batch_size=4, seq_len=16, corpus_limit=40, task_limit=40)
        key = prepare(
            LayerMapRequest(
                ARCH, SAMPLE, Path("m.json"), (Path(RETRIEVAL), Path(CLASSES)), teacher, "random", "tiny", proxy=proxy
            )
        ).key
        (tmp_path / "m.json.cache.json").write_text(json.dumps({"kind": "nasbert-layer-map-cache", "key": key, "maps": {}}))
    before = _listing(tmp_path)
    r = _run(_args(teacher, Path("m.json"), **change))
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert fragment in " ".join(r.stderr.split()), r.stderr
    assert _listing(tmp_path) == before  # nothing written, nothing half-written


DISTILL_ERRORS = [
    ("wrong length", "1,2,4", "layer map 1,2,4 does not fit: a layer map for this student has 2 entries"),
    ("out of range", "1,5", "each 0..4"),
    ("last entry 0", "3,0", "the last 1..4"),
    ("not a map", "3,x", "neither a file nor a list"),
    ("file without a map", "bad.json", "holds no layer map"),
    ("missing file", "nomap.json", "layer map nomap.json does not exist"),
]


@pytest.mark.parametrize(("case", "value", "fragment"), DISTILL_ERRORS, ids=[c[0] for c in DISTILL_ERRORS])
def test_distill_layer_map_is_checked_before_any_work(case, value, fragment, teacher, tmp_path, monkeypatch, tripwires):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.json").write_text('{"fitness": 0.5}')
    before = _listing(tmp_path)
    r = _run(
        [
            "distill",
            "--arch",
            ARCH,
            "--init",
            "random",
            "--space",
            "tiny",
            "--teacher",
            str(teacher),
            "--corpus",
            str(SAMPLE),
            "--out",
            "student",
            "--layer-map",
            value,
        ]
    )
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert fragment in " ".join(r.stderr.split()), r.stderr
    assert _listing(tmp_path) == before
