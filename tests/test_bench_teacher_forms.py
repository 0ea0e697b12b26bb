"""benchmarks/bench_teacher_forms.py writes the teacher's three forms, with the same outputs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from helpers import make_tiny_teacher

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

pytestmark = pytest.mark.usefixtures("one_thread")


def test_three_forms_compute_the_same_hidden_states(tmp_path):
    from bench_teacher_forms import write_forms
    from transformers import AutoModel

    from nasbert_deploy.model import modeling  # noqa: F401  (registers model_type "nasbert")

    folders = write_forms(str(make_tiny_teacher(tmp_path / "bert")), tmp_path)
    ids = torch.randint(5, 1000, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    outs = {}
    for name, folder in folders.items():
        model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
        with torch.no_grad():
            outs[name] = model(input_ids=ids, attention_mask=mask).last_hidden_state
        n_linear = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
        outs[name + " linears"] = n_linear
    torch.testing.assert_close(outs["NAS-BERT, projections"], outs["BERT encoder"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(outs["NAS-BERT, no projections"], outs["BERT encoder"], atol=1e-4, rtol=1e-4)
    # 2 layers: embedding projection, one boundary, head = 3 Linears more than the 2 x 6 of the layers
    assert outs["NAS-BERT, projections linears"] == 2 * 6 + 3 and outs["NAS-BERT, no projections linears"] == 2 * 6
