"""quantize's logit check averages over enough sequences per grid shape that one tail row cannot decide it."""

from __future__ import annotations

import numpy as np

from nasbert_deploy.quantize.check import MIN_ROWS, check_logits


def _logits(inputs: dict[str, np.ndarray]) -> np.ndarray:
    ids = inputs["input_ids"].astype(np.float64)
    return np.stack([ids.mean(1), ids.std(1) + 1.0, np.ones(len(ids))], axis=1).astype(np.float32)


def test_every_shape_pools_at_least_min_rows_and_one_bad_row_does_not_fail_it() -> None:
    seen: list[tuple[int, int]] = []

    def target(inputs: dict[str, np.ndarray]) -> np.ndarray:
        out = _logits(inputs)
        seen.append(inputs["input_ids"].shape)
        if len(seen) == 1:  # the first sequence of the first batch is off by a tail row's error: cosine ~0.9
            out[0, 2] += 0.5 * float(np.linalg.norm(out[0]))
        return out

    checks = check_logits(_logits, {"rt": target}, 64, 1000)
    shapes = {(c.batch, c.seq_len) for c in checks}
    for b, t in shapes:
        assert sum(1 for s in seen if s == (b, t)) * b >= MIN_ROWS
    first = next(c for c in checks if (c.batch, c.seq_len) == seen[0])
    assert first.cosine_min < 0.95 and first.passed  # alone it would fail; 1 row in >= 16 does not decide the mean
    assert all(c.passed for c in checks)


def test_a_systematic_gap_still_fails() -> None:
    checks = check_logits(_logits, {"rt": lambda x: _logits(x)[:, ::-1].copy()}, 64, 1000)
    assert not any(c.passed for c in checks)
