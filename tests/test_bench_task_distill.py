"""benchmarks/bench_task_distill.py --time-rows: rows trained on another host (a GPU) are timed here, side by side
with the teacher, keeping where they were trained; benchmarks/plot_task_distill.py draws them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from helpers import run_benchmark

ROOT = Path(__file__).resolve().parent.parent
ARCH = "128:mha,ffn,id|128:mha,ffn,id|128:mha,ffn,id"


def _row(seed: int, share: float) -> dict:
    return {"task": "debian-sections", "arch": ARCH, "init": "supernet", "space": "minilm", "seed": seed,
            "distill_steps": 1000, "transfer_rows": 30000, "epochs": 3, "lr": 1e-4, "speedup": {}, "teacher_ms": {},
            "share_of_teacher": share, "train_s": 1.0, "trained_on": "NVIDIA H200",
            "machine": {"cpu": "the GPU host's CPU", "cores": 16, "python": "3.12.3", "date": "2026-12-04 16:00"},
            "examples": 10, "accuracy": 0.8 * share, "macro_f1": 0.7, "label_loyalty": 0.9, "probability_loyalty": 0.9,
            "teacher_accuracy": 0.8, "teacher_macro_f1": 0.8}


@pytest.mark.slow
def test_rows_trained_elsewhere_are_timed_here_and_plotted(tmp_path):
    rows = tmp_path / "gpu-rows.jsonl"
    rows.write_text("".join(json.dumps(_row(s, share)) + "\n" for s, share in ((0, 0.99), (1, 0.97))))
    out, work = tmp_path / "timed.jsonl", tmp_path / "work"
    res = run_benchmark("bench_task_distill.py", "--time-rows", rows, "--work", work, "--rows", out, "--devices", "cpu-ort",
                 "--rounds", 1)
    assert res.returncode == 0, res.stdout + res.stderr
    timed = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["seed"] for r in timed] == [0, 1]
    for r in timed:
        assert r["speedup"]["cpu-ort"] > 1.0 and r["teacher_ms"]["cpu-ort"] > 0  # a 3-block 128 student vs MiniLM-L6
        assert r["trained_on"] == "NVIDIA H200" and r["train_machine"]["cpu"] == "the GPU host's CPU"
        assert r["machine"]["cpu"] != "the GPU host's CPU" and r["machine"]["cores"] >= 1
    assert timed[0]["speedup"] == timed[1]["speedup"]  # one arch: extracted once, timed once
    assert (work / "time.log").read_text().count("cli.app distill --arch") == 1

    png = tmp_path / "plane.png"
    res = run_benchmark("plot_task_distill.py", out, "--device", "cpu-ort", "--out", png)
    assert res.returncode == 0, res.stdout + res.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "0.980 ± 0.014" in res.stdout and ARCH in res.stdout  # mean ± sd over the two seeds

    res = run_benchmark("plot_task_distill.py", rows, "--device", "cpu-ort", "--out", tmp_path / "none.png")
    assert res.returncode != 0 and "no rows with a cpu-ort speed-up" in res.stderr
    assert not (tmp_path / "none.png").exists()


def test_bad_rows_are_one_line_exit_2_before_any_work(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"task": "debian-sections", "arch": ARCH}) + "\n")
    work = tmp_path / "work"
    res = run_benchmark("bench_task_distill.py", "--time-rows", bad, "--work", work)
    assert res.returncode == 2 and res.stderr.startswith("error: --time-rows") and "lacks seed" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not work.exists()  # nothing made, not even the folder
    res = run_benchmark("plot_task_distill.py", tmp_path / "missing.jsonl", "--out", tmp_path / "p.png")
    assert res.returncode == 2 and "does not exist" in res.stderr and not (tmp_path / "p.png").exists()


def test_the_task_specific_corpus_keeps_the_valid_texts_out(tmp_path):
    import argparse

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_task_distill import task_corpus

    from nasbert_deploy.student.tasks import SAMPLE_DIR, load_task

    files = {s: SAMPLE_DIR / f"pydoc-sections-sample-{s}.jsonl" for s in ("train", "valid")}
    train, valid = load_task(files["train"]), load_task(files["valid"])
    others = [f"an unlabelled paragraph number {i} about the python standard library" for i in range(1200)]
    transfer = tmp_path / "transfer.txt"
    transfer.write_text("\n".join([*others[:600], valid.texts[0], valid.texts[1].upper(), *others[600:]]) + "\n")
    args = argparse.Namespace(transfer={"pydoc": str(transfer)})
    corpus, held = task_corpus(args, "pydoc", files, tmp_path / "w")
    lines, held_lines = corpus.read_text().splitlines(), held.read_text().splitlines()
    assert len(held_lines) == 1000 and len(lines) == len(train.texts) + 200
    assert set(held_lines).isdisjoint(lines) and set(held_lines) | set(lines) >= set(others)
    assert not {valid.texts[0], valid.texts[1].upper()} & set(lines + held_lines)  # valid texts never seen
    assert set(train.texts) <= set(lines)
    again = task_corpus(argparse.Namespace(transfer={"pydoc": str(transfer)}), "pydoc", files, tmp_path / "w2")
    assert again[0].read_text() == corpus.read_text()  # seeded: the same corpus on a rerun elsewhere
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["task-corpus-pydoc.txt", "task-heldout-pydoc.txt"]
    bare = task_corpus(argparse.Namespace(transfer={}), "pydoc", files, tmp_path / "w3")
    assert bare[1] is None and sorted(bare[0].read_text().splitlines()) == sorted(train.texts)


def test_a_finished_student_is_reused_only_by_the_same_recipe():
    import argparse

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_task_distill import recipe_tag

    def tag(kd: str = "kl", epochs: int = 3, lr: float = 1e-4) -> str:
        return recipe_tag(argparse.Namespace(kd=kd, epochs=epochs, lr=lr))

    assert tag() == "" and tag("mse") == "-kdmse"  # the folders of runs made before the tag keep their names
    tags = {tag("mse", 5), tag(epochs=5), tag(lr=5e-5), tag("mse", 5, 5e-5)}
    assert tags == {"-kdmse-e5", "-e5", "-lr5e-05", "-kdmse-e5-lr5e-05"}


@pytest.mark.slow
def test_candidate_students_are_timed_side_by_side_with_the_teacher(tmp_path):
    out, work = tmp_path / "t.json", tmp_path / "work"
    res = run_benchmark("time_students.py", "--archs", f"{ARCH};{ARCH.replace('mha,ffn,id', 'ffn,id,id')}", "--space",
                 "minilm", "--init", "supernet", "--devices", "cpu-ort", "--rounds", 1, "--work", work, "--json", out)
    assert res.returncode == 0, res.stdout + res.stderr
    got = json.loads(out.read_text())
    ort = got["devices"]["cpu-ort"]
    assert list(ort) == ["teacher", ARCH, ARCH.replace("mha,ffn,id", "ffn,id,id")]
    assert ort["teacher"]["speedup"] == pytest.approx(1.0) and ort[ARCH]["speedup"] > 1.0
    assert ort[ARCH]["median_ms"] > 0 and got["machine"]["cores"] >= 1 and "cpu-ort" in res.stdout


def test_candidate_timing_refuses_a_bad_arch_or_device_before_any_work(tmp_path):
    work = tmp_path / "work"
    for args, needle in ((("--archs", "128:mha"), "block(s)"), (("--archs", ARCH, "--devices", "cpu-nope"), "unknown device"),
                         (("--archs", ARCH, "--json", tmp_path / "no" / "t.json"), "folder does not exist")):
        res = run_benchmark("time_students.py", *args, "--space", "minilm", "--work", work)
        assert res.returncode == 2 and needle in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not work.exists()
