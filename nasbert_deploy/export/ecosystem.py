"""The files that make an export folder load in the tools people already use, without this package.

- transformers custom code (`model.remote_code`): `configuration_nasbert.py`, `modeling_nasbert.py` and
  `auto_map` in `config.json`, so `AutoModel` / `AutoModelForSequenceClassification` / `pipeline(...)` and
  optimum's `ORTModelForFeatureExtraction` load it with `trust_remote_code=True`;
- sentence-transformers, laid out as the teacher's folder is: `modules.json` (Transformer -> Pooling ->
  Normalize), `sentence_bert_config.json`, `config_sentence_transformers.json`, `1_Pooling/config.json`
  (mean pooling over real tokens) -- so `SentenceTransformer(folder, trust_remote_code=True)` returns the
  toolkit's embeddings (`student.embeddings.Embedder`: mean-pooled, L2-normalised), on torch or, with
  `backend="onnx"` / `"openvino"`, from `onnx/model.onnx` / `openvino/openvino_model.xml`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nasbert_deploy.fileio import write_json_atomic

ST_MIN_VERSION = "3.2.0"  # the first sentence-transformers with backend="onnx" | "openvino"
ST_MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
]
NO_MAX_LENGTH = 10**6  # tokenizers without a model_max_length report ~1e30


def _version(dist: str, default: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return default


def max_seq_length(tokenizer: Any, seq_len: int) -> int:
    """The longest input sentence-transformers feeds: `seq_len`, or the tokenizer's limit if lower."""
    limit = int(getattr(tokenizer, "model_max_length", 0) or 0)
    return min(seq_len, limit) if 0 < limit < NO_MAX_LENGTH else seq_len


def pooling_config(dim: int) -> dict[str, Any]:
    """`1_Pooling/config.json`: mean over real tokens, as `Embedder` and the teacher pool."""
    return {
        "word_embedding_dimension": dim,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }


def write_sentence_transformers_files(folder: Path, dim: int, max_length: int) -> list[Path]:
    """The sentence-transformers configuration of a folder holding a transformers model of output width `dim`."""
    folder = Path(folder)
    files = {
        "modules.json": ST_MODULES,
        "sentence_bert_config.json": {"max_seq_length": max_length, "do_lower_case": False},
        "config_sentence_transformers.json": {
            "__version__": {
                "sentence_transformers": _version("sentence-transformers", ST_MIN_VERSION),
                "transformers": _version("transformers", "unknown"),
                "pytorch": _version("torch", "unknown"),
            },
            "prompts": {},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
        "1_Pooling/config.json": pooling_config(dim),
    }
    written = []
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        written.append(write_json_atomic(folder / name, data))
    return written


def write_ecosystem_files(folder: Path, tokenizer: Any, dim: int, seq_len: int) -> list[Path]:
    """Custom model code + `auto_map`, and the sentence-transformers files, into a saved model folder.

    sentence-transformers truncates at `seq_len` (export passes its --seq-len clipped to the model's positions:
    the length latency is reported at, and by default the toolkit's `Embedder` length, 128), so its embeddings
    equal the toolkit's; `model.max_seq_length` can be raised up to the model's positions for longer text."""
    from nasbert_deploy.model.remote_code import write_remote_code

    written = write_remote_code(folder)
    return written + write_sentence_transformers_files(folder, dim, max_seq_length(tokenizer, seq_len))
