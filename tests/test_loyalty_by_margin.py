"""benchmarks/loyalty_by_margin.py: the banding of label loyalty by the teacher's margin, and its bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from loyalty_by_margin import band_figures, margins  # noqa: E402


def test_rows_fall_in_the_band_of_the_teachers_margin_and_loyalty_is_counted_there():
    t = np.array([[0.52, 0.48, 0.0], [0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.2, 0.35, 0.45]])
    assert np.allclose(margins(t), [0.04, 0.85, 0.7, 0.10])
    gold = np.array([1, 0, 1, 2])
    student = np.array([1, 0, 0, 2])  # flips the near tie and one sure row
    figs = {f["band"]: f for f in band_figures(t, gold, {"s": student})}
    assert figs["0.0-0.1"]["rows"] == 1 and figs["0.0-0.1"]["loyalty"]["s"] == 0.0
    assert figs["0.0-0.1"]["teacher_accuracy"] == 0.0  # the teacher picked 0, gold is 1
    assert figs["0.1-0.3"]["rows"] == 1 and figs["0.1-0.3"]["loyalty"]["s"] == 1.0  # margin 0.10 is in [0.1, 0.3)
    assert figs["0.6-1.0"]["rows"] == 2 and figs["0.6-1.0"]["loyalty"]["s"] == 0.5
    assert figs["0.3-0.6"]["rows"] == 0 and figs["0.3-0.6"]["loyalty"]["s"] is None
    assert figs["all"]["rows"] == 4 and figs["all"]["loyalty"]["s"] == 0.5 and figs["all"]["share"] == 1.0


def test_a_model_argument_without_a_folder_is_one_line_exit_2(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "loyalty_by_margin.py"), "--teacher-model", str(tmp_path),
                        "--task", "x.jsonl", "--model", f"s0={tmp_path / 'nope'}"], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "NAME=DIR" in r.stderr
