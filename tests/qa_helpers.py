"""Tiny, well-formed SQuAD files for the QA tests (hand-made text; no QA data ships with the project)."""

from __future__ import annotations

import json
import random
from pathlib import Path

SUBJECTS = ["python", "debian", "module", "package", "library", "function", "system", "program"]
OBJECTS = ["files", "data", "text", "memory", "network", "process", "string", "version"]


def squad_doc(n_contexts: int = 6, seed: int = 0, version2: bool = False) -> dict:
    """Contexts of three sentences `the S reads the O .`; questions `what does the S read ?` (answer: the O);
    with `version2`, one unanswerable question per context about a subject it does not mention."""
    r = random.Random(seed)
    paragraphs = []
    for c in range(n_contexts):
        subj = r.sample(SUBJECTS, 4)
        objs = r.sample(OBJECTS, 3)
        sentences = [f"the {s} reads the {o} ." for s, o in zip(subj, objs)]
        context = " ".join(sentences)
        qas = []
        for k, (s, o) in enumerate(zip(subj, objs)):
            start = context.index(f"the {s} reads the {o}") + len(f"the {s} reads ")
            qas.append({"id": f"c{c}q{k}", "question": f"what does the {s} read ?",
                        "answers": [{"text": f"the {o}", "answer_start": start}]})
        if version2:
            qas.append({"id": f"c{c}x", "question": f"what does the {subj[3]} read ?", "answers": [],
                        "is_impossible": True})
        paragraphs.append({"context": context, "qas": qas})
    return {"version": "v2.0" if version2 else "1.1", "data": [{"title": "tiny", "paragraphs": paragraphs}]}


def write_squad(path: Path, **kw) -> Path:
    path.write_text(json.dumps(squad_doc(**kw)))
    return path
