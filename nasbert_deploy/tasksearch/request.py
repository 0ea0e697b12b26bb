"""What `search-task` is asked, and every check of it before any work (one-line typed errors, exit 2 in the CLI):
output folder, task and valid files, the teacher classifier and its labels (a retrieval task: the teacher encoder), where
the students start (the supernet, or for `--init etd-*` the encoder, which must provide every architecture of
`--space`), the device's latency table (and that it covers the search's space), the device's runtime, the tokenizer,
and that the budget can be met at all (naming the smallest feasible value otherwise).

    prepared = prepare(TaskSearchRequest(task, teacher_dir, load_device("cpu-ort"), Budget(5.0), Path("out")))
"""

from __future__ import annotations

import json
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
from nasbert_deploy.tasksearch import DEFAULT_ETD_SPACE, START_INITS
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
    (default `out`/search/cache.json).

    `rerank_top`, `rerank_seeds`: the best `rerank_top` archs of the search are evaluated again under `rerank_seeds`
    proxy seeds and the best mean reward is distilled (default 4; 0: the search's best as it is); `rerank_agnostic`:
    with a supernet start, NAS-BERT's task-agnostic picks within the budget join the rerank's candidates;
    `rerank_archs`: architectures of the user's (a hand-designed baseline) that join them (each within the budget).

    `corpus`: unlabelled text; the pick is distilled `distill_steps` steps on it from the pre-trained `encoder` (None:
    the offline default teacher) before the final task distillation (`tasksearch.distilled`); with `rerank_distilled`
    every rerank candidate is, and the rerank's proxies start from those encoders; they are kept in `distilled_dir`
    (None: `out`/search/distilled; they do not depend on the task, so searches of several tasks may share one folder,
    running at the same time too: each encoder is distilled once, under a lock). `transfer`: unlabelled in-domain
    text the teacher labels, KD-only rows of the final distillation (`transfer_rows` of them; 0: all).

    `init`: where every student's weights start (`tasksearch.start`): `supernet` (the supernet at `supernet`, in
    its space), or `etd-impt` / `etd-rand`: extracted from the pre-trained `encoder` (None: the offline default
    teacher) in the space named `space` (None: `DEFAULT_ETD_SPACE`)."""

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
    init: str = "supernet"
    space: str | None = None
    encoder: Path | None = None
    rerank_top: int = 4
    rerank_seeds: int = 3
    rerank_agnostic: bool = True
    rerank_archs: tuple[str, ...] = ()
    corpus: Path | None = None
    distill_steps: int = 1000
    rerank_distilled: bool = False
    transfer: Path | None = None
    transfer_rows: int = 0
    distilled_dir: Path | None = None

    @property
    def reranks(self) -> bool:
        """Whether the search's top `rerank_top` archs are scored again under `rerank_seeds` proxy seeds
        (`tasksearch.rerank`) before the final distillation."""
        return self.rerank_top > 0 and self.rerank_seeds > 1

    @property
    def extracts(self) -> bool:
        """Whether the students are extracted from an encoder (ETD) rather than taken from the supernet."""
        return self.init != "supernet"

    def start_key(self) -> dict[str, Any]:
        """The start's part of the search's identity: empty for the supernet (so searches started before `--init`
        existed keep their key and resume), init / space / encoder for ETD."""
        if not self.extracts:
            return {}
        return {"init": self.init, "space": self.space or DEFAULT_ETD_SPACE, "encoder": str(self.encoder)}

    def key(self) -> dict[str, Any]:
        """What a resumed search must agree on."""
        return {"task": str(self.task), "teacher_model": str(self.teacher_model), "device": self.spec.name,
                "budget": self.budget.flags(), "table": str(self.table), "supernet": str(self.supernet),
                "controller": self.controller, "latency_weight": self.latency_weight, "proxy": self.proxy.to_dict(),
                "batch": self.batch, "seq_len": self.seq_len, "seed": self.seed, **self.start_key()}


@dataclass
class Prepared:
    """Everything checked: the splits, labels (teacher order), the space, latency table and its path, the budget
    check with its fastest feasible arch, the tokenizer, and the start: the supernet folder, or (ETD) the encoder
    folder; `start_key` is the start's part of the proxy cache's key (`TaskSearchRequest.start_key`)."""

    train: TaskData
    valid: TaskData
    labels: list[str]
    space: SearchSpace
    table: Any
    table_path: Path
    check: Any
    fastest: Arch
    tokenizer: Any
    supernet_dir: Path | None
    init: str = "supernet"
    encoder_path: Path | None = None
    start_key: dict[str, Any] = field(default_factory=dict)
    distill_teacher: Any = None  # the loaded pre-trained teacher (teacher.Teacher) `corpus_texts` are distilled from
    corpus_texts: list[str] | None = None
    transfer_texts: list[str] | None = None
    retrieval: bool = False  # a retrieval task: train / valid are `RetrievalData`, labels empty (`tasksearch.retrieval`)

    @property
    def metric(self) -> str:
        """What the proxy's "accuracy" is, for notes: accuracy, or MRR on a retrieval task."""
        return "MRR" if self.retrieval else "acc"


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


def read_json(path: Path) -> Any:
    """A state or cache file of the search; `OutputError` when it cannot be read."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise OutputError(f"{path} is unreadable or damaged; pass --force to start the search over") from None


def resumed_state(request: TaskSearchRequest) -> dict[str, Any] | None:
    """The state of the search in `request.out` to resume (None when there is none); `OutputError` naming what
    differs when it is a search with other settings (another start included)."""
    path = request.out / STATE_DIR / "state.json"
    if not path.is_file():
        return None
    st = read_json(path)
    key = request.key()
    old = st.get("key") if isinstance(st, dict) and isinstance(st.get("key"), dict) else {}
    if old != key:
        diff = sorted(k for k in set(key) | set(old) if old.get(k) != key.get(k))
        raise OutputError(f"{request.out} holds a task search with other settings ({', '.join(diff)} differ); "
                          "pass --force to start over or choose another --out")
    return st  # type: ignore[no-any-return]


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
        raise TeacherError(f"the teacher's tokenizer has {len(tok)} tokens but the students' vocabulary (space "
                           f"{space.name!r}) has {space.vocab_size}; use a teacher with the supernet's tokenizer")
    return tok


def check_start(request: TaskSearchRequest) -> None:
    """The start options agree with each other (`TaskError`; no file read)."""
    from nasbert_deploy.space import get_space

    if request.init not in START_INITS:
        raise TaskError(f"unknown --init {request.init!r}; valid: {', '.join(START_INITS)}")
    if request.extracts and request.supernet is not None:
        raise TaskError(f"--init {request.init} extracts every student from --encoder; --supernet is for --init "
                        "supernet: give one or the other")
    if request.distill_steps < 1 or request.transfer_rows < 0:
        raise TaskError(f"--distill-steps must be >= 1 and --transfer-rows >= 0, got {request.distill_steps} and "
                        f"{request.transfer_rows}")
    if request.rerank_distilled and (request.corpus is None or not request.reranks):
        raise TaskError("--rerank-distilled distils every rerank candidate on --corpus: give --corpus, and a rerank "
                        "(--rerank-top >= 1, --rerank-seeds >= 2)")
    if request.search_only and (request.corpus is not None and not request.rerank_distilled
                                or request.transfer is not None):
        raise TaskError("--corpus and --transfer train the final student; --search-only stops before it")
    if request.distilled_dir is not None and request.corpus is None:
        raise TaskError("--distilled-dir keeps the encoders --corpus distils: give --corpus too")
    if not request.extracts and request.encoder is not None and request.corpus is None:
        raise TaskError("--encoder is the encoder --init etd-impt / etd-rand extracts from (and --corpus distils "
                        "from); a supernet search takes its students from --supernet")
    if request.space is not None:
        get_space(request.space)  # SpaceError naming the valid spaces


def resolve_start(request: TaskSearchRequest) -> tuple[SearchSpace, Path | None, Path | None]:
    """(space, supernet folder, encoder folder) of the search; for ETD, `TeacherError` unless the encoder (its
    config only) provides every architecture of the space."""
    from nasbert_deploy.space import get_space

    if request.extracts:
        from nasbert_deploy.tasksearch.start import check_encoder
        from nasbert_deploy.teacher import default_teacher_path, read_model_config

        space = get_space(request.space or DEFAULT_ETD_SPACE)
        if request.encoder is None:
            encoder = default_teacher_path()
        else:
            read_model_config(request.encoder, "--encoder")
            encoder = request.encoder
        check_encoder(space, encoder)
        return space, None, encoder
    from nasbert_deploy.supernet.default import resolve_supernet_dir
    from nasbert_deploy.supernet.network import read_meta

    supernet_dir = resolve_supernet_dir(request.supernet)
    space = SearchSpace.from_dict(read_meta(supernet_dir)["space"])
    if request.space is not None and get_space(request.space).space_hash() != space.space_hash():
        raise TaskError(f"--space {request.space} is not the space of the supernet {supernet_dir} ({space.name!r}); a "
                        "supernet search runs in its supernet's space: drop --space, or extract with --init etd-impt")
    return space, supernet_dir, None


def prepare(request: TaskSearchRequest) -> Prepared:
    """Every check before work, cheapest first; raises a `NasBertDeployError` subclass; writes nothing."""
    from nasbert_deploy.profiling.table import LatencyTable
    from nasbert_deploy.search.run import latency_table_path
    from nasbert_deploy.student.retrieval import is_retrieval_file
    from nasbert_deploy.student.tasks import task_splits
    from nasbert_deploy.tasksearch.budget import BudgetCheck
    from nasbert_deploy.tasksearch.controllers import CONTROLLERS

    if request.controller not in CONTROLLERS:
        raise TaskError(f"unknown controller {request.controller!r}; valid: {', '.join(CONTROLLERS)}")
    if request.evaluations < 1:
        raise TaskError(f"--evaluations must be >= 1, got {request.evaluations}")
    if request.rerank_top < 0 or request.rerank_seeds < 1:
        raise TaskError(f"--rerank-top must be >= 0 and --rerank-seeds >= 1, got {request.rerank_top} and "
                        f"{request.rerank_seeds}")
    check_start(request)
    check_out(request.out, False)  # --force removes our old outputs only after every other check passed
    retrieval = is_retrieval_file(request.task)
    if retrieval:
        train, valid, labels = retrieval_task(request)
    else:
        train, valid = task_splits(request.task, request.valid, 0.1)
        labels = teacher_labels(request.teacher_model, train, valid)
    if len(train) < 4:
        raise TaskError(f"{request.task}: {len(train)} training rows are too few for a proxy split; give at least 4")
    space, supernet_dir, encoder_path = resolve_start(request)
    table_path = latency_table_path(request.spec, request.table)
    table = LatencyTable.load(table_path, space)  # SpaceError: a table for another space
    if not request.search_only:
        from nasbert_deploy.runtimes.base import require_available

        require_available(request.spec)  # the export measures the student on the device
    tokenizer = load_tokenizer(request.teacher_model, space)
    if encoder_path is not None:
        from nasbert_deploy.tasksearch.start import check_same_vocabulary

        check_same_vocabulary(encoder_path, tokenizer, request.teacher_model)
    check = BudgetCheck(space, table, request.budget, request.batch, request.seq_len)
    fastest = check.fastest()  # InfeasibleBudgetError with the smallest feasible value
    check_rerank_archs(request, space, check)
    transfer = None if request.transfer is None else final_transfer(request, train, valid)
    corpus_texts, distill_teacher = corpus_stage(request, space, tokenizer) if request.corpus else (None, None)
    if request.distilled_dir is not None:
        from nasbert_deploy.fileio import check_output

        check_output(request.distilled_dir, "dir", False, "--distilled-dir", reuse=True)  # earlier encoders are reused
    if request.cache is not None:
        from nasbert_deploy.tasksearch.cache import check_cache

        check_cache(request.cache)
    if not request.force:
        resumed_state(request)  # a search of other settings in --out: said now, not after the importance or logits
    check_out(request.out, request.force)
    start_key = request.start_key()
    if encoder_path is not None:  # the folder the default stands for, and the space's shape, not only its name
        start_key.update(encoder=str(encoder_path), space_hash=space.space_hash())
    return Prepared(train, valid, labels, space, table, table_path, check, fastest, tokenizer, supernet_dir, request.init,
                    encoder_path, start_key, distill_teacher, corpus_texts, transfer, retrieval)


def retrieval_task(request: TaskSearchRequest) -> tuple[Any, Any, list[str]]:
    """(train pairs, valid pairs, no labels) of a retrieval search; `TaskError` for options without a meaning there,
    a bad pair file, or a teacher that is not an encoder (`tasksearch.retrieval`)."""
    from nasbert_deploy.student.retrieval import retrieval_splits
    from nasbert_deploy.student.retrieval_training import encoder_config
    from nasbert_deploy.tasksearch.retrieval import final_config

    if request.transfer is not None:
        raise TaskError("--transfer is for classification; a retrieval search distils on the task's own pairs")
    final_config(request.final)  # TaskError for a KD term retrieval does not have
    train, valid = retrieval_splits(request.task, request.valid, 0.1)
    encoder_config(request.teacher_model, "--teacher-model")
    return train, valid, []


def check_rerank_archs(request: TaskSearchRequest, space: SearchSpace, check: Any) -> None:
    """Every `--rerank-arch` is an architecture of the search's space within the budget (`ArchError`, `TaskError`)."""
    if request.rerank_archs and not request.reranks:
        raise TaskError("--rerank-arch joins the rerank's candidates: give a rerank too (--rerank-top >= 1, "
                        "--rerank-seeds >= 2)")
    for a in request.rerank_archs:
        arch = space.parse(a)
        costs = check.costs(arch)
        if not check.fits(arch):
            raise TaskError(f"--rerank-arch {a}: {costs.latency_ms:.3f} ms and {costs.params:,} params on this table, "
                            f"over the budget {request.budget.flags()}")


def final_transfer(request: TaskSearchRequest, train: TaskData, valid: TaskData) -> list[str]:
    """The transfer set of the final distillation (`student.finetune.transfer_texts`: the task's own texts left out);
    `TaskError` for a text-pair task, `CorpusError` for an empty or binary file."""
    from nasbert_deploy.student.finetune import transfer_texts

    if train.pairs is not None:
        raise TaskError(f"--transfer is for single-text classification; {request.task} has text pairs")
    return transfer_texts(request.transfer or "", train, valid, request.transfer_rows, request.seed)


def corpus_stage(request: TaskSearchRequest, space: SearchSpace, tokenizer: Any) -> tuple[list[str], Any]:
    """(paragraphs of `request.corpus`, the loaded pre-trained teacher they are distilled from): `CorpusError` for an
    empty or binary corpus, `TeacherError` for a teacher of another vocabulary or width than the students'."""
    from nasbert_deploy.supernet.teacher_cache import read_paragraphs
    from nasbert_deploy.tasksearch.start import check_same_vocabulary
    from nasbert_deploy.teacher import check_compatible, load_teacher, resolve_teacher_path

    texts = read_paragraphs(request.corpus or "")
    path = resolve_teacher_path(request.encoder)
    check_same_vocabulary(path, tokenizer, request.teacher_model)
    teacher = load_teacher(path)
    check_compatible(space, teacher)
    return texts, teacher


def request_dict(request: TaskSearchRequest) -> dict[str, Any]:
    """The request for the result file (paths as strings)."""
    d = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(request).items() if k not in ("spec", "budget")}
    d["device"], d["budget"] = request.spec.name, request.budget.flags()
    return d
