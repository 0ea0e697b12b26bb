"""Students that start from the teacher (`distill --init etd-impt|etd-rand`, issue #15).

Scores the teacher's units on a seeded sample of the distillation corpus (`model.importance`),
extracts the student (`model.etd`) and wraps it for `distill`: the block projections used by the
block-boundary losses start as the selections that put each block's kept dimensions back into the
teacher's width, so those losses start where the extracted weights are.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from nasbert_deploy.errors import TeacherError
from nasbert_deploy.space import SearchSpace
from nasbert_deploy.student.build import Student
from nasbert_deploy.teacher import Teacher, check_compatible

ETD_INITS: tuple[str, ...] = ("etd-impt", "etd-rand")


def etd_student(
    arch: str,
    space: SearchSpace,
    teacher: Teacher,
    texts: Sequence[str],
    init: str = "etd-impt",
    sample: int = 512,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> Student:
    """`arch` extracted from `teacher` (importance from `sample` corpus paragraphs for etd-impt)."""
    from nasbert_deploy.model.etd import check_extractable, extract_student
    from nasbert_deploy.model.importance import importance_scores

    if init not in ETD_INITS:
        raise TeacherError(f"unknown extraction {init!r}; valid: {', '.join(ETD_INITS)}")
    parsed = space.parse(str(arch))  # ArchError before the teacher is scored
    check_compatible(space, teacher)
    check_extractable(parsed, space, teacher.model)
    chosen = random.Random(seed).sample(list(texts), min(sample, len(texts)))
    imp = importance_scores(teacher.model, teacher.tokenizer, chosen, init.removeprefix("etd-"), seed=seed,
                            progress=progress)
    model, report = extract_student(parsed, space, teacher.model, imp)
    T = space.output_dim
    order = imp.hidden_order()
    projections = nn.ModuleList(nn.Linear(b.hidden, T) for b in parsed.blocks[:-1])
    with torch.no_grad():
        for proj, b in zip(projections, parsed.blocks[:-1]):
            proj.weight.zero_()
            proj.bias.zero_()
            for j, dim in enumerate(sorted(order[: b.hidden])):
                proj.weight[dim, j] = 1.0
    return Student(model, projections, init, extraction=report)


def extraction_summary(student: Student) -> dict[str, Any]:
    """The report fields `distill` records for an extracted student (empty for other starts)."""
    if not student.extraction:
        return {}
    from nasbert_deploy.model.etd import describe_map

    return {"extraction": student.extraction, "layer_map": describe_map(student.extraction)}
