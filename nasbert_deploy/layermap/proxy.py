"""A layer map's fitness (the paper's proxy setting): a short distillation on a small sample of the corpus, then the
student's frozen mean-pooled embeddings scored on a few proxy tasks; fitness = the mean score.

- classification files (text, label): a linear probe fitted on a stratified train part of the file and scored on
  the rest (`student.quality.probe_scores`): accuracy;
- retrieval files (query, document): MRR in the pool of the file's documents (`student.quality.retrieval_quality`).

Every map starts from the same weights (`copy.deepcopy` of one start student) and distils with the same seed, batch
order and settings (`DistillConfig` with the map), so maps are compared fairly. The student is written to a
temporary folder and scored through `student.embeddings.Embedder` (the code path `evaluate` uses), then removed.
"""

from __future__ import annotations

import copy
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nasbert_deploy.errors import CheckpointError, LayerMapError, TaskError
from nasbert_deploy.fileio import file_digest
from nasbert_deploy.layermap.maps import LayerMap
from nasbert_deploy.model.loop import ProgressFn
from nasbert_deploy.student.distill import DistillConfig, Student, distill
from nasbert_deploy.student.retrieval import is_retrieval_file, load_retrieval
from nasbert_deploy.student.tasks import SAMPLE_DIR, TaskData, load_task
from nasbert_deploy.teacher import Teacher

SPLIT_NAMES = ("train", "valid", "dev", "test")
DEFAULT_TASKS: tuple[Path, ...] = tuple(
    SAMPLE_DIR / f
    for f in ("debian-sections-sample-train.jsonl", "wordnet-supersense-sample-train.jsonl", "debian-retrieval-sample.jsonl")
)


@dataclass(frozen=True)
class ProxySettings:
    """Each map's short distillation (`steps` of `batch_size` x `seq_len` tokens, AdamW `lr`, hidden and block loss
    weights) on `corpus_limit` paragraphs sampled from the corpus; each task file's first `task_limit` rows (a seeded
    sample for classification), classification files split `valid_fraction` for the probe; embeddings of at most
    `max_len` tokens; one `seed` for the sample, the split, the distillation and the probes."""

    steps: int = 100
    batch_size: int = 16
    seq_len: int = 64
    lr: float = 3e-4
    hidden_weight: float = 1.0
    block_weight: float = 1.0
    corpus_limit: int = 2000
    task_limit: int = 400
    valid_fraction: float = 0.3
    max_len: int = 128
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check(self) -> None:
        for name in ("steps", "batch_size", "corpus_limit", "task_limit"):
            if getattr(self, name) < 1:
                raise LayerMapError(f"{name.replace('_', '-')} {getattr(self, name)}: give 1 or more")
        if self.seq_len < 2 or self.max_len < 2:
            raise LayerMapError(f"seq-len {self.seq_len} / max-len {self.max_len}: give 2 or more tokens")
        if not 0.0 < self.valid_fraction < 1.0:
            raise LayerMapError(f"valid fraction {self.valid_fraction}: give a share in (0, 1)")
        if self.block_weight <= 0 or self.hidden_weight < 0 or self.lr <= 0:
            raise LayerMapError(
                "the block weight and lr must be > 0 and the hidden weight >= 0: a map is scored by the block losses it sets"
            )

    def distill_config(self, layer_map: LayerMap) -> DistillConfig:
        """The distillation every map gets; no checkpoints (the run is short and its folder temporary)."""
        return DistillConfig(
            steps=self.steps,
            batch_size=self.batch_size,
            seq_len=self.seq_len,
            lr=self.lr,
            hidden_weight=self.hidden_weight,
            intermediate_weight=self.block_weight,
            checkpoint_every=self.steps,
            seed=self.seed,
            layer_map=tuple(layer_map),
        )


@dataclass(frozen=True)
class ProxyTask:
    """One proxy task: a classification file split into probe train/valid, or a retrieval file."""

    name: str
    path: Path
    kind: str  # "classification" | "retrieval"
    train: TaskData | None = None
    valid: TaskData | None = None


def task_digest(path: Path) -> str:
    return file_digest(path)[:16]


def load_proxy_tasks(paths: Sequence[Path], settings: ProxySettings) -> list[ProxyTask]:
    """Read and check every task file (`TaskError` naming the file and row); classification files are sampled and
    split here, once, so every map is probed on the same rows."""
    if not paths:
        raise TaskError(
            "give at least one proxy task file (--tasks): classification (text, label) or retrieval (query, document) JSON lines"
        )
    tasks: list[ProxyTask] = []
    for p in map(Path, paths):
        name = f"{p.parent.name}-{p.stem}" if p.stem in SPLIT_NAMES else p.stem  # tasks/NAME/train.jsonl -> NAME-train
        name = name if name not in {t.name for t in tasks} else f"{name}-{len(tasks) + 1}"
        if is_retrieval_file(p):
            data = load_retrieval(p, settings.task_limit)
            if len(data.documents) < 2:
                raise TaskError(f"retrieval file {p} has {len(data.documents)} distinct document(s); MRR needs at least 2")
            tasks.append(ProxyTask(name, p, "retrieval"))
            continue
        data = load_task(p)
        if len(data) > settings.task_limit:
            data = data.subset(sorted(random.Random(settings.seed).sample(range(len(data)), settings.task_limit)))
        train, valid = data.split(settings.valid_fraction, settings.seed)
        tasks.append(ProxyTask(name, p, "classification", train, valid))
    return tasks


def score_encoder(model_dir: Path, tasks: Sequence[ProxyTask], settings: ProxySettings, max_len: int) -> dict[str, float]:
    """Per task: probe accuracy (classification) or MRR (retrieval) of the encoder's frozen embeddings (texts cut to
    `max_len` tokens)."""
    import torch

    from nasbert_deploy.student.embeddings import Embedder
    from nasbert_deploy.student.quality import probe_scores, retrieval_quality

    emb = Embedder(model_dir, "torch", max_len=max_len, threads=torch.get_num_threads())
    out: dict[str, float] = {}
    for t in tasks:
        if t.kind == "retrieval":
            out[t.name] = float(retrieval_quality(emb, t.path, limit=settings.task_limit)["mrr"])
        else:
            assert t.train is not None and t.valid is not None
            out[t.name] = float(probe_scores(emb, t.train, t.valid, seed=settings.seed)["probe_accuracy"])
    return out


def mean_score(scores: dict[str, float]) -> float:
    return sum(scores.values()) / len(scores)


class ProxyEvaluator:
    """`evaluate(map)`: distil a copy of `start` under the map, score it; `teacher_scores()`: the teacher's own."""

    def __init__(
        self,
        start: Student,
        teacher: Teacher,
        corpus: Sequence[str],
        tasks: Sequence[ProxyTask],
        settings: ProxySettings,
        progress: ProgressFn | None = None,
    ) -> None:
        self.start, self.teacher, self.corpus, self.tasks = start, teacher, list(corpus), list(tasks)
        self.settings, self.progress = settings, progress
        positions = [start.model.config.search_space.max_positions, getattr(teacher.model.config, "max_position_embeddings", 0)]
        self.max_len = min([settings.max_len] + [p for p in positions if p])  # both encoders read every text whole

    def evaluate(self, layer_map: LayerMap) -> dict[str, Any]:
        """{'fitness', 'scores' (per task), 'train_loss_last', 'seconds', 'cpu_s', 'diverged'} of one map. A map whose
        distillation diverges scores 0 (recorded as diverged) instead of stopping the search."""
        t0, c0 = time.perf_counter(), time.process_time()
        student = copy.deepcopy(self.start)
        cfg = self.settings.distill_config(layer_map)
        record: dict[str, Any] = {"diverged": False}
        with tempfile.TemporaryDirectory(prefix="nasbert-layermap-") as d:
            out = Path(d) / "student"
            try:
                report = distill(student, self.teacher, self.corpus, out, cfg, progress=self.progress)
            except CheckpointError as exc:
                if "diverged" not in str(exc):
                    raise
                record.update(diverged=True, scores={t.name: 0.0 for t in self.tasks}, train_loss_last=None)
            else:
                record.update(
                    scores=score_encoder(out, self.tasks, self.settings, self.max_len), train_loss_last=report["train_loss_last"]
                )
        record["fitness"] = mean_score(record["scores"])
        record["seconds"] = round(time.perf_counter() - t0, 3)
        record["cpu_s"] = round(time.process_time() - c0, 3)
        return record

    def teacher_scores(self) -> dict[str, float]:
        """The teacher's scores on the same tasks: the ceiling a student's fitness is read against."""
        return score_encoder(self.teacher.path, self.tasks, self.settings, self.max_len)


def sample_corpus(texts: Sequence[str], limit: int, seed: int) -> list[str]:
    """At most `limit` paragraphs, a seeded sample in corpus order (all of them when the corpus is smaller)."""
    if len(texts) <= limit:
        return list(texts)
    return [texts[i] for i in sorted(random.Random(seed).sample(range(len(texts)), limit))]
