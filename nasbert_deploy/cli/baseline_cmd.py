"""`truncate`: the baseline a user builds first, the teacher's first k layers, as a folder the other commands take.

Thin shell over `nasbert_deploy.student.baselines.truncate_encoder`; heavy imports happen inside the command.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from nasbert_deploy.cli.common import console, print_report

app = typer.Typer()


@app.command("truncate")
def truncate_cmd(
    layers: Annotated[int, typer.Option("--layers", help="Transformer layers kept, from the bottom (1..the teacher's).")],
    out: Annotated[Path, typer.Option("--out", help="Output encoder folder (weights as safetensors, tokenizer).")],
    teacher: Annotated[Path | None, typer.Option("--teacher", help="BERT-family encoder folder (default: offline "
                                                 "MiniLM-L6).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output folder.")] = False,
) -> None:
    """The teacher's first --layers layers (embeddings and layers copied): a baseline to fine-tune, task-distil,
    evaluate and time beside a searched student (`finetune --model OUT`, `evaluate --model OUT`)."""
    from safetensors import safe_open

    from nasbert_deploy.errors import TeacherError
    from nasbert_deploy.fileio import check_output
    from nasbert_deploy.student.baselines import truncate_encoder
    from nasbert_deploy.teacher import resolve_teacher_path, teacher_layers

    check_output(out, "dir", force)
    src = resolve_teacher_path(teacher)
    total = teacher_layers(src)
    if not 1 <= layers <= total:
        raise TeacherError(f"--layers {layers}: {src} has {total} layers; valid: 1..{total}")
    console.print(f"keeping {layers} of {total} layers of {src}")
    truncate_encoder(src, layers, out)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    print_report(f"truncated teacher -> {out}", {"teacher": str(src), "layers": f"{layers} of {total}",
                                                   "parameters": f"{params / 1e6:.1f}M"})
