"""What `search-task` is asked, and every check of it before any work (one-line typed errors, exit 2 in the CLI):
output folder, task and valid files, the teacher classifier and its labels, the supernet, the device's latency
table (and that it covers the supernet's space), the device's runtime, the tokenizer, and that the budget can be
met at all (naming the smallest feasible value otherwise).

    prepared = prepare(TaskSearchRequest(task, teacher_dir, load_device("cpu-ort"), Budget(5.0), Path("out")))
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nasbert_deploy.devices import DeviceSpec
from nasbert_deploy.errors import OutputError, TaskError, TeacherError
from nasbert_deploy.search.problem import Budget
from nasbert_deploy.space import Arch, SearchSpace
from nasbert_deploy.student.finetune import FinetuneConfig
from nasbert_deploy.student.tasks import TaskData
from nasbert_deploy.tasksearch.proxy import ProxyConfig

STATE_DIR = "search"  # out/search/: state.json, cache.json, teacher logits
OUR_ENTRIES = (STATE_DIR, "student", "student.ckpt", "export", "result.json")
DEFAULT_FINAL = FinetuneConfig(epochs=3, batch_size=16, max_len=128, lr=2e-4, lam=0.5, temperature=2.0)


@dataclass(frozen=True)
class TaskSearchRequest:
    """Search `task` for the best student of `teacher_model` within `budget` on `spec` (latency table: `table`, else
    the device's), evaluating at most `evaluations` distinct architectures with `controller`; then (unless
    `search_only`) distil the best on the whole task with `final` and export it to `out`/export.

    `valid`: the file the final student is reported on (default: a stratified 10% of `task`); `latency_weight`:
    w in the reward accuracy * (latency / target) ** w; `cache`: a proxy-result cache file shared between runs
    (default `out`/search/cache.json)."""

    task: str
    teacher_model: Path
    spec: DeviceSpec
    budget: Budget
    out: Path
    valid: Path | None = None
    table: Path | None = None
    supernet: Path | None = None
    controller: str = "reinforce"
    evaluations: int = 30
    latency_weight: float = -0.07
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    final: FinetuneConfig = DEFAULT_FINAL
    batch: int = 1
    seq_len: int = 128
    search_only: bool = False
    force: bool = False
    seed: int = 0
    cache: Path | None = None

    def key(self) -> dict[str, Any]:
        """What a resumed search must agree on."""
        return {"task": str(self.task), "teacher_model": str(self.teacher_model), "device": self.spec.name,
                "budget": self.budget.flags(), "table": str(self.table), "supernet": str(self.supernet),
                "controller": self.controller, "latency_weight": self.latency_weight, "proxy": self.proxy.to_dict(),
                "batch": self.batch, "seq_len": self.seq_len, "seed": self.seed}


@dataclass
class Prepared:
    """Everything checked: the splits, labels (teacher order), the space, latency table and its path, the budget
    check with its fastest feasible arch, the tokenizer, the supernet folder."""

    train: TaskData
    valid: TaskData
    labels: list[str]
    space: SearchSpace
    table: Any
    table_path: Path
    check: Any
    fastest: Arch
    tokenizer: Any
    supernet_dir: Path


def check_out(out: Path, force: bool) -> None:
    """`out` is a writable folder that is empty, or holds a task search to resume; with `force`, our previous
    outputs there are removed (nothing else is touched)."""
    from nasbert_deploy.fileio import check_output

    check_output(out, "dir", force, reuse=True)
    if not out.is_dir():
        return
    ours = (out / STATE_DIR / "state.json").is_file() or (out / "result.json").is_file()
    others = [p.name for p in out.iterdir() if p.name not in OUR_ENTRIES and not p.name.startswith(".")]
    if others:
        raise OutputError(f"--out {out} holds other files ({', '.join(sorted(others)[:3])}); choose an empty or new folder")
    if force:
        for name in OUR_ENTRIES:
            p = out / name
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    elif any(out.iterdir()) and not ours:
        raise OutputError(f"--out {out} is not empty and holds no task search to resume; pass --force or choose another")


def teacher_labels(teacher_model: Path, train: TaskData, valid: TaskData) -> list[str]:
    """The teacher classifier's labels in class order; `TaskError` if the task has labels the teacher lacks."""
    from nasbert_deploy.student.finetune import check_model_folder
    from nasbert_deploy.teacher import read_model_config

    check_model_folder(teacher_model, classifier=True, option="--teacher-model")
    id2label = read_model_config(teacher_model, "--teacher-model", TaskError).get("id2label")
    if not isinstance(id2label, dict) or not id2label:
        raise TaskError(f"--teacher-model {teacher_model} has no label names (id2label) in its config.json")
    try:
        labels = [str(id2label[str(i)]) for i in range(len(id2label))]
    except KeyError:
        raise TaskError(f"--teacher-model {teacher_model}: id2label is not numbered 0..{len(id2label) - 1}") from None
    missing = sorted((set(train.labels) | set(valid.labels)) - set(labels))
    if missing:
        raise TaskError(f"the task has labels the teacher does not cover: {', '.join(missing[:5])}"
                        f"{' ...' if len(missing) > 5 else ''}; the teacher knows: {', '.join(labels[:10])}; fine-tune "
                        "a teacher on this task with `nasbert-deploy finetune-teacher`")
    return labels


def load_tokenizer(teacher_model: Path, space: SearchSpace) -> Any:
    """The teacher's tokenizer; its ids must fit the supernet's vocabulary."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(teacher_model), local_files_only=True)
    except Exception as exc:  # a foreign folder: transformers raises many kinds; the user needs one line
        raise TeacherError(f"cannot load a tokenizer from --teacher-model {teacher_model}: {type(exc).__name__}") from None
    if len(tok) > space.vocab_size:
        raise TeacherError(f"the teacher's tokenizer has {len(tok)} tokens but the supernet's vocabulary has "
                           f"{space.vocab_size}; use a teacher with the supernet's tokenizer")
    return tok


def prepare(request: TaskSearchRequest) -> Prepared:
    """Every check before work, cheapest first; raises a `NasBertDeployError` subclass; writes nothing."""
    from nasbert_deploy.profiling.table import LatencyTable
    from nasbert_deploy.search.run import latency_table_path
    from nasbert_deploy.student.tasks import task_splits
    from nasbert_deploy.supernet.default import resolve_supernet_dir
    from nasbert_deploy.supernet.network import read_meta
    from nasbert_deploy.tasksearch.budget import BudgetCheck
    from nasbert_deploy.tasksearch.controllers import CONTROLLERS

    if request.controller not in CONTROLLERS:
        raise TaskError(f"unknown controller {request.controller!r}; valid: {', '.join(CONTROLLERS)}")
    if request.evaluations < 1:
        raise TaskError(f"--evaluations must be >= 1, got {request.evaluations}")
    check_out(request.out, False)  # --force removes our old outputs only after every other check passed
    train, valid = task_splits(request.task, request.valid, 0.1)
    labels = teacher_labels(request.teacher_model, train, valid)
    if len(train) < 4:
        raise TaskError(f"{request.task}: {len(train)} training rows are too few for a proxy split; give at least 4")
    supernet_dir = resolve_supernet_dir(request.supernet)
    space = SearchSpace.from_dict(read_meta(supernet_dir)["space"])
    table_path = latency_table_path(request.spec, request.table)
    table = LatencyTable.load(table_path, space)  # SpaceError: a table for another space
    if not request.search_only:
        from nasbert_deploy.runtimes.base import require_available

        require_available(request.spec)  # the export measures the student on the device
    tokenizer = load_tokenizer(request.teacher_model, space)
    check = BudgetCheck(space, table, request.budget, request.batch, request.seq_len)
    fastest = check.fastest()  # InfeasibleBudgetError with the smallest feasible value
    check_out(request.out, request.force)
    return Prepared(train, valid, labels, space, table, table_path, check, fastest, tokenizer, supernet_dir)


def request_dict(request: TaskSearchRequest) -> dict[str, Any]:
    """The request for the result file (paths as strings)."""
    d = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(request).items() if k not in ("spec", "budget")}
    d["device"], d["budget"] = request.spec.name, request.budget.flags()
    return d
