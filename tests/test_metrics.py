from __future__ import annotations

import math

import numpy as np
import pytest

from nasbert_deploy.errors import NasBertDeployError
from nasbert_deploy.student.metrics import (
    accuracy,
    evaluate_logits,
    js_divergence,
    label_loyalty,
    macro_f1,
    per_class_f1,
    probability_loyalty,
    softmax,
)


def test_accuracy_and_macro_f1_by_hand():
    y = [0, 0, 0, 1, 1, 2]
    p = [0, 0, 1, 1, 2, 2]
    assert accuracy(y, p) == pytest.approx(4 / 6)
    f = per_class_f1(y, p)
    # class 0: tp 2 fp 0 fn 1 -> 4/5; class 1: tp 1 fp 1 fn 1 -> 1/2; class 2: tp 1 fp 1 fn 0 -> 2/3
    assert f == pytest.approx({0: 0.8, 1: 0.5, 2: 2 / 3})
    assert macro_f1(y, p) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)


def test_macro_f1_counts_a_class_only_predicted():
    # class 3 never in gold but predicted once: F1 0 and it drags the mean down
    assert macro_f1([0, 0, 1], [0, 3, 1]) == pytest.approx((2 / 3 + 1.0 + 0.0) / 3)
    assert macro_f1([0, 1], [0, 1], labels=[0, 1, 2]) == pytest.approx(2 / 3)


def test_label_loyalty_is_agreement():
    assert label_loyalty([1, 2, 3, 4], [1, 2, 0, 4]) == 0.75


def test_js_divergence_known_values():
    p = np.array([[0.5, 0.5], [1.0, 0.0], [0.2, 0.8]])
    q = np.array([[1.0, 0.0], [0.0, 1.0], [0.2, 0.8]])
    js = js_divergence(p, q)
    # row 0: 0.5*KL(p||m) + 0.5*KL(q||m) with m = (0.75, 0.25)
    expected0 = 0.5 * (0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)) + 0.5 * math.log(1 / 0.75)
    assert js[0] == pytest.approx(expected0, rel=1e-12)
    assert js[1] == pytest.approx(math.log(2))  # disjoint supports: the maximum, ln 2
    assert js[2] == pytest.approx(0.0, abs=1e-15)
    assert np.allclose(js, js_divergence(q, p))  # symmetric


def test_probability_loyalty_range_and_mean():
    p = np.array([[1.0, 0.0], [0.3, 0.7]])
    q = np.array([[0.0, 1.0], [0.3, 0.7]])
    # mean of (1 - sqrt(ln 2)) and 1
    assert probability_loyalty(p, q) == pytest.approx(((1 - math.sqrt(math.log(2))) + 1) / 2)


def test_softmax_is_stable_and_tempered():
    s = softmax(np.array([[1000.0, 1000.0, 0.0]]))
    assert s[0, :2] == pytest.approx([0.5, 0.5]) and s[0, 2] == pytest.approx(0.0)
    hot = softmax(np.array([[2.0, 0.0]]), temperature=2.0)
    assert hot[0, 0] == pytest.approx(math.e / (math.e + 1))


def test_evaluate_logits_with_teacher():
    labels = [0, 1, 1, 0]
    student = np.array([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [2.0, 0.0]])
    teacher = np.array([[3.0, 0.0], [0.0, 3.0], [0.0, 3.0], [0.0, 3.0]])
    r = evaluate_logits(labels, student, teacher)
    assert r.accuracy == 0.75 and r.teacher_accuracy == 0.75
    assert r.label_loyalty == 0.5
    assert 1 - math.sqrt(math.log(2)) < r.probability_loyalty < 1.0
    assert evaluate_logits(labels, student).label_loyalty is None


def test_errors_are_typed_and_say_what_is_valid():
    with pytest.raises(NasBertDeployError, match="differ in length"):
        accuracy([0, 1], [0])
    with pytest.raises(NasBertDeployError, match="no examples"):
        accuracy([], [])
    with pytest.raises(NasBertDeployError, match=r"\(examples, classes\)"):
        js_divergence(np.ones((2, 3)) / 3, np.ones((2, 2)) / 2)


def test_probability_loyalty_matches_the_authors_reference_scipy():
    """The loyalty paper's repository recommends 1 - scipy.spatial.distance.jensenshannon (natural log)."""
    distance = pytest.importorskip("scipy.spatial.distance")
    rng = np.random.default_rng(0)
    p, q = softmax(rng.normal(size=(20, 6)) * 2), softmax(rng.normal(size=(20, 6)) * 2)
    ref = np.mean([1 - distance.jensenshannon(a, b) for a, b in zip(p, q)])
    assert probability_loyalty(p, q) == pytest.approx(ref, rel=1e-9)
