"""Question + context -> model windows, and start/end logits -> answer texts (the usual BERT recipe).

Each example becomes one or more windows `[CLS] question [SEP] context-slice [SEP]` of at most `max_len` tokens;
a long context is cut into slices that overlap by `stride` tokens (the question is limited to `max_query_len`
tokens, at most half a window). A window's target is the token span of the first gold answer when the span lies
wholly inside it, else [CLS] (index 0): "no answer in this window", which is also the target of an unanswerable
question. Character offsets come from a fast tokenizer (`return_offsets_mapping`).

Answers: for each example, over its windows, the `n_best` start and end tokens by logit, every span of context
tokens with start <= end and at most `max_answer_len` tokens is scored start + end logit; the best is mapped
back to its characters. v2.0: the null score (start + end logit at [CLS], least over the windows) wins when it
is above the best span's score (threshold 0, as the reference implementation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nasbert_deploy.errors import TaskError
from nasbert_deploy.qa.squad import QAData

MASKED = -1e4  # the logit given to padding positions (probability 0 in float32)


@dataclass(frozen=True)
class QAFeatures:
    """Windows of `QAData`: arrays (n, max_len), targets (n,), and per window its example and token offsets
    (character (start, end) per token; (-1, -1) for tokens outside the context)."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    start_positions: np.ndarray
    end_positions: np.ndarray
    example_index: np.ndarray
    offsets: np.ndarray  # (n, max_len, 2)

    def __len__(self) -> int:
        return len(self.input_ids)

    def batch(self, rows: list[int] | np.ndarray) -> dict[str, np.ndarray]:
        """Model inputs of `rows`, cut to the longest real length among them."""
        idx = np.asarray(rows)
        t = max(1, int(self.attention_mask[idx].sum(1).max()))
        return {"input_ids": self.input_ids[idx, :t], "attention_mask": self.attention_mask[idx, :t],
                "token_type_ids": self.token_type_ids[idx, :t]}


def featurize(tokenizer: object, data: QAData, max_len: int = 256, stride: int = 64, max_query_len: int = 64) -> QAFeatures:
    """The windows of every example of `data` (see the module doc)."""
    if not getattr(tokenizer, "is_fast", False):
        raise TaskError("question answering needs a fast tokenizer (character offsets); this model folder has a slow "
                        "one: save it with transformers' AutoTokenizer(use_fast=True)")
    if max_len < 16:
        raise TaskError(f"--max-len {max_len} leaves no room for a question and a context; use --max-len >= 128")
    max_query_len = min(max_query_len, max_len // 2)
    stride = min(stride, max_len - max_query_len - 4)  # the overlap must stay below a window's context tokens
    questions = [_cut_question(tokenizer, ex.question, max_query_len) for ex in data.examples]
    enc = tokenizer(questions, [ex.context for ex in data.examples], truncation="only_second", max_length=max_len,
                    stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True, padding="max_length")
    n = len(enc["input_ids"])
    starts, ends = np.zeros(n, np.int64), np.zeros(n, np.int64)
    offsets = np.full((n, max_len, 2), -1, np.int64)
    example_index = np.asarray(enc["overflow_to_sample_mapping"], np.int64)
    for i in range(n):
        seq = enc.sequence_ids(i)
        for j, (a, b) in enumerate(enc["offset_mapping"][i]):
            if seq[j] == 1:
                offsets[i, j] = (a, b)
        ex = data.examples[example_index[i]]
        if ex.answers:
            text, s = ex.answers[0]
            starts[i], ends[i] = _span(offsets[i], s, s + len(text))
    ids = np.asarray(enc["input_ids"], np.int64)
    types = np.asarray(enc["token_type_ids"], np.int64) if "token_type_ids" in enc else np.zeros_like(ids)
    return QAFeatures(ids, np.asarray(enc["attention_mask"], np.int64), types, starts, ends, example_index, offsets)


def _cut_question(tokenizer: object, question: str, limit: int) -> str:
    ids = tokenizer(question, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    return question if len(ids) <= limit else tokenizer.decode(ids[:limit])  # type: ignore[attr-defined]


def _span(offsets: np.ndarray, char_start: int, char_end: int) -> tuple[int, int]:
    """Token (start, end) of the characters [char_start, char_end) in one window, or (0, 0) if not wholly inside."""
    inside = np.nonzero(offsets[:, 0] >= 0)[0]
    if len(inside) == 0 or offsets[inside[0], 0] > char_start or offsets[inside[-1], 1] < char_end:
        return 0, 0
    tok_start = int(inside[offsets[inside, 1] > char_start][0])
    tok_end = int(inside[offsets[inside, 0] < char_end][-1])
    return tok_start, tok_end


def answers_from_logits(data: QAData, feats: QAFeatures, start_logits: np.ndarray, end_logits: np.ndarray,
                        n_best: int = 20, max_answer_len: int = 30) -> dict[str, str]:
    """Question id -> predicted answer text (see the module doc); "" means no answer (v2.0)."""
    best: dict[int, tuple[float, str]] = {}
    null: dict[int, float] = {}
    for i in range(len(feats)):
        e = int(feats.example_index[i])
        s_log, e_log, off = start_logits[i], end_logits[i], feats.offsets[i]
        null[e] = min(null.get(e, np.inf), float(s_log[0] + e_log[0]))
        valid = off[:, 0] >= 0
        s_top = [j for j in np.argsort(-np.where(valid, s_log, -np.inf))[:n_best] if valid[j]]
        e_top = [j for j in np.argsort(-np.where(valid, e_log, -np.inf))[:n_best] if valid[j]]
        for a in s_top:
            for b in e_top:
                if b < a or b - a + 1 > max_answer_len:
                    continue
                score = float(s_log[a] + e_log[b])
                if e not in best or score > best[e][0]:
                    ctx = data.examples[e].context
                    best[e] = (score, ctx[off[a, 0] : off[b, 1]])
    out = {}
    for e, ex in enumerate(data.examples):
        score, text = best.get(e, (-np.inf, ""))
        if data.version2 and null.get(e, -np.inf) > score:
            text = ""
        out[ex.id] = text
    return out
