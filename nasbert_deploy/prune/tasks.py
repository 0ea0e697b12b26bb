"""What `prune` needs to know about the task: sequence classification or extractive question answering.

Each adapter loads the model, computes the distillation targets (the teacher's logits) once, builds the
gate-training data, scores a model on the valid split (with loyalty to the unpruned model) and fine-tunes
the pruned model. `prune.run` is written against this interface only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nasbert_deploy.errors import TaskError
from nasbert_deploy.model.loop import NoteFn, ProgressFn
from nasbert_deploy.prune.train import ClassifierGateData, GateConfig
from nasbert_deploy.qa.squad import QAData
from nasbert_deploy.student.tasks import TaskData


class ClassificationTask:
    kind = "sequence-classification"

    def __init__(self, train: TaskData, valid: TaskData) -> None:
        self.train, self.valid = train, valid
        self.labels: list[str] = []

    def load(self, path: Path) -> tuple[Any, Any]:
        from nasbert_deploy.student.finetune import load_classifier

        return load_classifier(path)

    def bind(self, model: Any, tokenizer: Any, teacher: Any, teacher_tokenizer: Any) -> None:
        """Fix the label order (the model's) and check that the teacher knows the same labels."""
        from nasbert_deploy.student.finetune import model_labels

        self.labels = model_labels(model)
        if sorted(model_labels(teacher)) != sorted(self.labels):
            raise TaskError(f"--teacher-model labels {model_labels(teacher)} differ from the model's {self.labels}")
        self._perm = [model_labels(teacher).index(n) for n in self.labels]

    def logits(self, model: Any, tokenizer: Any, rows: str, max_len: int, teacher: bool = False) -> Any:
        from nasbert_deploy.student.finetune import predict_logits

        out = predict_logits(model, tokenizer, self.train if rows == "train" else self.valid, max_len=max_len)
        return out[:, self._perm] if teacher else out

    def gate_data(self, tokenizer: Any, teacher_logits: Any, cfg: GateConfig) -> ClassifierGateData:
        y = torch.tensor(self.train.label_ids({n: i for i, n in enumerate(self.labels)}))
        return ClassifierGateData(tokenizer, self.train, y, torch.as_tensor(teacher_logits, dtype=torch.float32), cfg.max_len)

    def score(self, logits: Any, reference: Any | None = None) -> dict[str, Any]:
        from nasbert_deploy.student.metrics import evaluate_logits

        y = self.valid.label_ids({n: i for i, n in enumerate(self.labels)})
        return evaluate_logits(y, logits, reference).to_dict()

    def finetune(self, model: Any, tokenizer: Any, out: Path, cfg: Any, teacher_logits: Any, progress: ProgressFn | None,
                 key: dict[str, Any], note: NoteFn | None) -> None:
        from nasbert_deploy.student.finetune import train_classifier

        train_classifier(model, tokenizer, self.train, self.valid, out, cfg, teacher_logits, progress, key, note)


@dataclass(frozen=True)
class QAGateData:
    """Extractive QA windows: `(1 - a) (CE(start) + CE(end)) / 2 + a (KL(start) + KL(end)) / 2` to the teacher."""

    feats: Any  # qa.features.QAFeatures
    teacher_start: torch.Tensor
    teacher_end: torch.Tensor

    def __len__(self) -> int:
        return len(self.feats)

    def batch(self, rows: list[int]) -> tuple[list[int], dict[str, torch.Tensor]]:
        return list(rows), {k: torch.from_numpy(v) for k, v in self.feats.batch(rows).items()}

    def loss(self, out: Any, rows: list[int], batch: dict[str, torch.Tensor], cfg: GateConfig) -> torch.Tensor:
        from nasbert_deploy.qa.train import span_kd

        r = torch.tensor(rows)
        sp, ep = torch.from_numpy(self.feats.start_positions[rows]), torch.from_numpy(self.feats.end_positions[rows])
        ce = (torch.nn.functional.cross_entropy(out.start_logits, sp) + torch.nn.functional.cross_entropy(out.end_logits, ep)) / 2
        m = batch["attention_mask"].bool()
        kd = (span_kd(out.start_logits, self.teacher_start[r], m, cfg.temperature)
              + span_kd(out.end_logits, self.teacher_end[r], m, cfg.temperature)) / 2
        return (1 - cfg.distill_weight) * ce + cfg.distill_weight * kd


class QATask:
    kind = "extractive-qa"
    labels: list[str] = []

    def __init__(self, train: QAData, valid: QAData) -> None:
        self.train, self.valid = train, valid
        self._feats: dict[tuple[str, int], Any] = {}

    def load(self, path: Path) -> tuple[Any, Any]:
        from nasbert_deploy.qa.train import load_qa

        return load_qa(path)

    def bind(self, model: Any, tokenizer: Any, teacher: Any, teacher_tokenizer: Any) -> None:
        """The windows are cut once, with the model's tokenizer: the teacher must share its vocabulary."""
        if teacher_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise TaskError("--teacher-model has another vocabulary than --model; QA distillation compares the two "
                            "models' start/end logits token by token, so they must share one tokenizer")

    def features(self, tokenizer: Any, rows: str, max_len: int) -> Any:
        from nasbert_deploy.qa.features import featurize

        if (rows, max_len) not in self._feats:
            self._feats[(rows, max_len)] = featurize(tokenizer, self.train if rows == "train" else self.valid, max_len)
        return self._feats[(rows, max_len)]

    def logits(self, model: Any, tokenizer: Any, rows: str, max_len: int, teacher: bool = False) -> Any:
        from nasbert_deploy.qa.train import predict_spans

        return predict_spans(model, self.features(tokenizer, rows, max_len))

    def gate_data(self, tokenizer: Any, teacher_logits: Any, cfg: GateConfig) -> QAGateData:
        start, end = (torch.from_numpy(np.ascontiguousarray(x)) for x in teacher_logits)
        return QAGateData(self.features(tokenizer, "train", cfg.max_len), start, end)

    def score(self, logits: Any, reference: Any | None = None) -> dict[str, Any]:
        from nasbert_deploy.qa.train import score

        feats = next(f for (rows, _), f in self._feats.items() if rows == "valid")
        return score(self.valid, feats, logits, reference)

    def finetune(self, model: Any, tokenizer: Any, out: Path, cfg: Any, teacher_logits: Any, progress: ProgressFn | None,
                 key: dict[str, Any], note: NoteFn | None) -> None:
        from nasbert_deploy.qa.train import train_qa

        train_qa(model, tokenizer, self.train, self.valid, out, cfg, teacher_logits, progress, key, note)


def task_adapter(train: TaskData | QAData, valid: TaskData | QAData) -> ClassificationTask | QATask:
    if isinstance(train, QAData) != isinstance(valid, QAData):
        raise TaskError("--task and --valid must both be SQuAD files (.json) or both classification files")
    return QATask(train, valid) if isinstance(train, QAData) else ClassificationTask(train, valid)  # type: ignore[arg-type]
