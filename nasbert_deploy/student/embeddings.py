"""Frozen sentence embeddings from any encoder, on any runtime, and the two ways they are scored.

An encoder is a local folder: a Hugging Face encoder (the teacher, any BERT-family model), a
NAS-BERT export (`nasbert-deploy export`: transformers folder + `onnx/model.onnx` + OpenVINO IR), or a
distilled student. `Embedder` tokenizes with the folder's tokenizer, runs the model on the chosen
runtime (`torch`, `onnxruntime`, `openvino`, through the same runtime plug-ins as profiling and
export), mean-pools the last hidden state over real tokens and L2-normalises, as
sentence-transformers' all-MiniLM-L6-v2 does.

Scores:
- `linear_probe`: a logistic-regression probe fitted on the training split's embeddings and scored
  on the valid split (accuracy, macro-F1, predictions for loyalty);
- retrieval metrics live in `student.retrieval`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nasbert_deploy.errors import NasBertDeployError, TaskError, TeacherError

RUNTIME_DEVICES = {
    "torch": "cpu-torch",
    "onnxruntime": "cpu-ort",
    "openvino": "cpu-openvino",
    "onnxruntime-int8": "cpu-ort-int8",  # the folder's onnx/model_qint8.onnx
    "openvino-int8": "cpu-openvino-int8",  # the folder's openvino/openvino_model_qint8_quantized.xml
}


def mean_pool(hidden: np.ndarray, mask: np.ndarray, normalize: bool = True) -> np.ndarray:
    """(b, t, d) hidden states, (b, t) mask -> (b, d) mean over real tokens, L2-normalised if asked."""
    m = mask[:, :, None].astype(np.float32)
    pooled = (hidden * m).sum(1) / np.clip(m.sum(1), 1.0, None)
    if normalize:
        pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
    return pooled.astype(np.float32)


def _check_encoder_folder(path: Path) -> None:
    """The one model-folder check (`teacher.read_model_config`): a folder whose config.json is a HF config, of an
    encoder: a task model (a classifier or QA head) outputs logits, not token states to pool."""
    from nasbert_deploy.teacher import read_model_config, task_head

    head = task_head(read_model_config(path, "encoder", TeacherError))
    if head:
        raise TaskError(f"{path} is a task model ({head}), not an encoder: frozen-embedding and retrieval scores "
                        "need an encoder folder (a `distill` output, the teacher); score a classifier on a labelled "
                        "task file instead")


class Embedder:
    """Mean-pooled, L2-normalised sentence embeddings of one encoder on one runtime (CPU, `threads` threads)."""

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        runtime: str = "torch",
        max_len: int = 128,
        batch_size: int = 32,
        threads: int = 1,
        normalize: bool = True,
    ) -> None:
        from dataclasses import replace

        from transformers import AutoTokenizer

        from nasbert_deploy.devices import load_device
        from nasbert_deploy.runtimes.base import get_runtime

        if runtime not in RUNTIME_DEVICES:
            raise TaskError(f"unknown runtime {runtime!r}; valid: {', '.join(RUNTIME_DEVICES)}")
        self.path = Path(model_dir)
        _check_encoder_folder(self.path)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        except Exception as exc:  # a foreign folder: transformers raises many kinds; the user needs one line
            why = (str(exc) or type(exc).__name__).splitlines()[0]
            raise TeacherError(f"{self.path} has no usable tokenizer: {why}") from None
        spec = replace(load_device(RUNTIME_DEVICES[runtime]), threads=threads)
        try:
            self.compiled = get_runtime(spec.runtime).load(self.path, spec)
        except NasBertDeployError:
            raise
        except Exception as exc:  # damaged weights or a config the model class rejects
            raise TeacherError(f"cannot load the encoder in {self.path}: {type(exc).__name__}: {exc}") from None
        self.runtime, self.max_len, self.batch_size, self.normalize = runtime, max_len, batch_size, normalize
        self.model_max = int(getattr(self.tokenizer, "model_max_length", max_len) or max_len)

    def encode(self, texts: Sequence[str], progress: Any = None) -> np.ndarray:
        """(n, d) float32 embeddings of `texts`, in order. Batches are formed by length to waste no padding."""
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        enc = self.tokenizer(list(texts), truncation=True, max_length=min(self.max_len, self.model_max))
        ids = enc["input_ids"]
        order = np.argsort([len(x) for x in ids], kind="stable")
        out: list[np.ndarray] = [np.zeros(0)] * len(ids)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            t = max(len(ids[i]) for i in idx)
            batch = np.zeros((len(idx), t), dtype=np.int64)
            mask = np.zeros((len(idx), t), dtype=np.int64)
            for r, i in enumerate(idx):
                batch[r, : len(ids[i])] = ids[i]
                mask[r, : len(ids[i])] = 1
            inputs = {"input_ids": batch, "attention_mask": mask, "token_type_ids": np.zeros_like(batch)}
            hidden = self.compiled.run(inputs)[0]  # (b, t, d)
            for r, vec in zip(idx, mean_pool(hidden, mask, self.normalize)):
                out[r] = vec
            if progress is not None:
                progress(min(start + self.batch_size, len(order)), len(order))
        return np.stack(out)


@dataclass(frozen=True)
class ProbeResult:
    """A linear probe's scores on the valid split; `pred` holds its class ids (for loyalty)."""

    accuracy: float
    macro_f1: float
    pred: np.ndarray
    probs: np.ndarray

    def to_dict(self) -> dict[str, float]:
        return {"probe_accuracy": self.accuracy, "probe_macro_f1": self.macro_f1}


def linear_probe(
    train_x: np.ndarray, train_y: Sequence[int], valid_x: np.ndarray, valid_y: Sequence[int], c: float = 1.0, seed: int = 0
) -> ProbeResult:
    """Multinomial logistic regression (L2, inverse strength `c`) on frozen embeddings; scored on valid."""
    from sklearn.linear_model import LogisticRegression

    from nasbert_deploy.student.metrics import accuracy, macro_f1

    if len(train_x) == 0 or len(valid_x) == 0:
        raise TaskError("a linear probe needs a non-empty training and valid split")
    clf = LogisticRegression(C=c, max_iter=3000, random_state=seed)
    clf.fit(train_x, np.asarray(train_y))
    probs = clf.predict_proba(valid_x)
    pred = clf.classes_[probs.argmax(1)]
    return ProbeResult(accuracy(valid_y, pred), macro_f1(valid_y, pred), pred, probs)
