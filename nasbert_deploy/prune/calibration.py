"""Pruning aimed at the machine it runs on, not the one its latency table was made on.

- `device_scale`: before the gates train, the unpruned model is timed once on the device and the table's predictions
  are scaled by measured / predicted, so the gates' Lagrangian aims at the budget in this machine's milliseconds (a
  table made on an AMD EPYC predicted 1.26x what an Intel Xeon measured, and the gates were trained for a model
  smaller than the budget allowed; only the calibration after training corrected the selection, from gates trained
  for the wrong size). `export --calibrate` scales NAS tables the same way, from one whole model.
- `calibrated_selection`: after training, the selected model is timed and selected again while it is over the budget
  or well under it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nasbert_deploy.errors import InfeasibleBudgetError
from nasbert_deploy.fileio import write_json_atomic
from nasbert_deploy.prune.gates import Selection
from nasbert_deploy.prune.latency import PruneLatencyTable
from nasbert_deploy.prune.train import fit_selection

CALIBRATION_ROUNDS = 3
CALIBRATION_SLACK = 1.05  # a measured latency this far over the budget is accepted (half the ±10% a user allows;
# single timings on a shared host move by ±5%, and chasing them shrinks the model for nothing)
CALIBRATION_UNDER = 0.90  # a model measured under this share of the budget gives capacity away: select a larger one
SCALE_NAME = "device_scale.json"


def timing_kwargs(req: Any) -> dict[str, Any]:
    """`time_compiled` options of a prune request: its timing settings with the table's clock."""
    return {**req.timing_kwargs, "clock": req.profile.timing_kwargs()["clock"]}


def device_scale(model: Any, table: PruneLatencyTable, req: Any, layers: int, qa: bool, work: Path,
                 say: Any) -> dict[str, Any]:
    """The table's error on this machine, from one timing of the unpruned `model` on `req.spec`. Returns
    {"unpruned_predicted_ms", "unpruned_measured_ms", "factor", "target_ms", ...}: `target_ms` is the budget in the
    table's units (budget / factor, below the unpruned model's), which the gates train toward. Saved in `work`, so a
    resumed run trains toward the same target. `InfeasibleBudgetError` when the budget is below the smallest model
    pruning can make on this machine."""
    path = work / SCALE_NAME
    if path.is_file():
        scale = json.loads(path.read_text())
        if scale.get("budget_ms") == req.max_latency_ms and scale.get("table") == table.manifest["name"]:
            say(f"resuming with the table scaled x{scale['factor']:.3f} to this machine ({path})")
            return scale
    from nasbert_deploy.prune.artefacts import measure_side_by_side

    low, full = table.bounds_ms(layers)
    say(f"timing the unpruned model on {req.spec.name} to scale the latency table to this machine "
        f"(table: {full:.2f} ms)")
    s = req.profile
    measured = measure_side_by_side({"unpruned": model}, req.spec, s.batch, s.seq_len, timing_kwargs(req),
                                    qa=qa)["unpruned"]["median_ms"]
    factor = measured / full
    target = min(req.max_latency_ms / factor, full * 0.999)  # the unpruned model within budget: prune the least
    scale = {"budget_ms": req.max_latency_ms, "table": table.manifest["name"], "unpruned_predicted_ms": full,
             "unpruned_measured_ms": measured, "factor": factor, "target_ms": target}
    if target < low:
        raise InfeasibleBudgetError(
            f"--max-latency-ms {req.max_latency_ms:g} is below the smallest model pruning can make on {req.spec.name} "
            f"here: one head and one FFN neuron per layer predicts {low:.2f} ms, x{factor:.3f} on this machine "
            f"(the unpruned model measured {measured:.2f} ms, the table says {full:.2f}) = {low * factor:.2f} ms; "
            f"give at least {low * factor:.2f}")
    write_json_atomic(path, scale)
    return scale


def calibrated_selection(gated: Any, sel: Selection, table: PruneLatencyTable, req: Any, qa: bool,
                         say: Any, target_ms: float | None = None) -> tuple[Selection, list[dict[str, float]]]:
    """Measure the model `sel` selects on the device and, while it is over the budget, or well under it (a table
    made on a faster or slower machine: a 2.4x cut measured 3.4x on another host), select again from the same gates
    under the target scaled by budget / measured (at most `CALIBRATION_ROUNDS` measurements; never the unpruned
    model). `target_ms`: the table-units target `sel` was selected under (default the budget). The largest measured
    model within the budget wins; if none is, the last. The table's error on one model is what `export --calibrate`
    corrects for NAS models; here it is ±10-15% on a shared host."""
    from nasbert_deploy.prune.apply import prune_model
    from nasbert_deploy.prune.artefacts import measure_side_by_side

    s = req.profile
    budget = req.max_latency_ms
    target = budget if target_ms is None else target_ms
    rounds: list[dict[str, float]] = []
    low, full = table.bounds_ms(len(sel.head_counts))
    best: tuple[Selection, float] | None = None
    for i in range(CALIBRATION_ROUNDS):
        predicted = table.predict_ms(sel.head_counts, sel.widths)
        say(f"calibration: timing the selected model on {req.spec.name} (predicted {predicted:.2f} ms)")
        measured = measure_side_by_side({"pruned": prune_model(gated.model, sel)}, req.spec, s.batch, s.seq_len,
                                        timing_kwargs(req), qa=qa)["pruned"]["median_ms"]
        rounds.append({"target_ms": target, "predicted_ms": predicted, "measured_ms": measured})
        fits = measured <= CALIBRATION_SLACK * budget
        if fits and (best is None or measured > best[1]):
            best = (sel, measured)
        if fits and (measured >= CALIBRATION_UNDER * budget or predicted >= full):
            break
        target = min(target * budget / measured, full * 0.999)  # below the unpruned model: something is pruned
        if i + 1 == CALIBRATION_ROUNDS or target < low:
            break
        nxt = fit_selection(gated, table, target)
        layers = len(nxt.head_counts)
        if nxt == sel or (sum(nxt.head_counts), sum(nxt.widths)) == (table.heads * layers, table.ffn * layers):
            break  # the gates give nothing else at this target, or nothing pruned: keep the last pruned model
        sel = nxt
    return (sel if best is None else best[0]), rounds
