"""The export report flags a measured latency more than 10% over the budget or the prediction, or 10% under the
prediction (a pessimistic table wastes the budget)."""

from __future__ import annotations

from nasbert_deploy.export.report import latency_flags


def _lat(device, predicted, measured):
    return {"device": device, "predicted_ms": predicted, "measured": {"median_ms": measured} if measured else None}


def test_flags_budget_and_prediction_overruns():
    flags = latency_flags([_lat("cpu-ort", 2.9, 3.6), _lat("cpu-openvino", 4.0, 4.2)], (3.0, 5.0))
    assert len(flags) == 2  # cpu-ort: 20% over its budget and 24% over its prediction; openvino within both
    assert flags[0].startswith("cpu-ort: measured 3.6 ms is 20% over the 3 ms budget")
    assert "24% over the predicted 2.9 ms" in flags[1]


def test_no_flags_within_ten_percent_or_without_a_measurement():
    assert latency_flags([_lat("cpu-ort", 3.0, 3.29)], (3.0,)) == []
    assert latency_flags([_lat("cpu-ort", 3.0, None)], (1.0,)) == []
    assert latency_flags([_lat("cpu-ort", None, 9.0)]) == []  # no prediction, no budget: nothing to compare


def test_flags_a_prediction_the_measurement_undercuts():
    (flag,) = latency_flags([_lat("cpu-ort", 2.97, 2.36)], (3.0,))  # the README quick start on a 2-vCPU Xeon, 2026-12-07
    assert flag.startswith("cpu-ort: measured 2.36 ms is 21% under the predicted 2.97 ms") and "without --fast" in flag
    assert latency_flags([_lat("cpu-ort", 3.0, 2.71)], (3.0,)) == []  # 9.7% under: within the table's noise
