"""Why a budget binds or fails: the constraints whose removal lowers the loss, and, for an infeasible budget, the
binding constraint with the smallest feasible value -- each computed exactly with the problem's solver.

Used by `SearchProblem.binding` / `SearchProblem.diagnose` (`problem` is a `SearchProblem`, `budget` a `Budget`;
typed `Any` because `problem` imports this module).
"""

from __future__ import annotations

from typing import Any

from nasbert_deploy.model.memory import MIB
from nasbert_deploy.search.solver import Limits
from nasbert_deploy.space import format_params


def binding(problem: Any, budget: Any, best_loss: float) -> dict[str, float]:
    """Constraints that bind: {name: least loss without that constraint}, for each one whose removal lowers the loss."""
    out: dict[str, float] = {}
    lim = budget.limits()
    relaxed: dict[str, Limits | None] = {"latency": Limits(None, lim.params, lim.memory_bytes)}
    if len(problem.devices) > 1:  # one latency budget relaxed at a time: "latency on NAME"
        lats = budget.latencies_ms
        relaxed = {
            f"latency on {name}": Limits(lats[:d] + (None,) + lats[d + 1 :], lim.params, lim.memory_bytes)
            for d, name in enumerate(problem.devices)
        }
    relaxed |= {
        "params": Limits(lim.latency_ms, None, lim.memory_bytes) if lim.params is not None else None,
        "memory": Limits(lim.latency_ms, lim.params, None) if lim.memory_bytes is not None else None,
    }
    for name, rl in relaxed.items():
        if rl is None:
            continue
        found = problem.solver.best(rl, "loss", 1)
        if found and found[0][0] < best_loss:
            out[name] = found[0][0]
    return out


def diagnose(problem: Any, budget: Any) -> str:
    """Explain an infeasible budget: the binding constraint(s) and the smallest feasible value, computed exactly."""
    where = f"at batch {problem.batch}, seq {problem.seq_len}"
    if len(problem.devices) > 1:
        return _diagnose_devices(problem, budget, where)
    problems = []
    min_lat = problem.minimum("latency")
    assert min_lat is not None  # every block has a candidate, so some architecture exists
    if budget.max_latency_ms < min_lat:
        problems.append(f"no architecture within {budget.max_latency_ms:g} ms {where}: the fastest takes {min_lat:.3f} ms")
    if budget.max_params is not None:
        min_p = problem.minimum("params")
        if min_p is not None and budget.max_params < min_p:
            problems.append(
                f"no architecture within {format_params(budget.max_params)} params: "
                f"the smallest has {format_params(int(min_p))}"
            )
    if budget.max_memory_mb is not None:
        min_m = problem.minimum("memory")
        if min_m is not None and budget.max_memory_mb * MIB < min_m:
            problems.append(
                f"no architecture within {budget.max_memory_mb:g} MB {where} ({problem.precision}): "
                f"the smallest needs {min_m / MIB:.2f} MB"
            )
    if problems:
        return "; ".join(problems)
    lim = budget.limits()
    others = Limits(None, lim.params, lim.memory_bytes)
    flags = []
    if budget.max_params is not None:
        flags.append(f"--max-params {format_params(budget.max_params)}")
    if budget.max_memory_mb is not None:
        flags.append(f"--max-memory-mb {budget.max_memory_mb:g}")
    other_flags = " and ".join(flags)
    fastest = problem.minimum("latency", others)
    if fastest is not None:
        return (
            f"no architecture within {budget.max_latency_ms:g} ms {where} with {other_flags}: "
            f"the fastest takes {min_lat:.3f} ms; with {other_flags} the fastest takes {fastest:.3f} ms"
        )
    # params and memory conflict with each other (only possible with both set)
    mem_under_params = problem.minimum("memory", Limits(None, lim.params, None))
    assert mem_under_params is not None
    return (
        f"no architecture has at most {format_params(budget.max_params or 0)} params and {budget.max_memory_mb:g} MB "
        f"{where}: with --max-params {format_params(budget.max_params or 0)} the smallest needs "
        f"{mem_under_params / MIB:.2f} MB"
    )

def _diagnose_devices(problem: Any, budget: Any, where: str) -> str:
    """`diagnose` for several devices: a device's budget below its fastest, else the device whose fastest
    architecture within every other budget is too slow."""
    lats, lim = budget.latencies_ms, budget.limits()
    alone = [problem.minimum(f"latency:{d}") for d in range(len(problem.devices))]
    problems = [
        f"no architecture within {b:g} ms on {name} {where}: the fastest takes {fastest:.3f} ms"
        for b, name, fastest in zip(lats, problem.devices, alone)
        if fastest is not None and b < fastest
    ]
    if budget.max_params is not None and (problem.minimum("params") or 0) > budget.max_params:
        problems.append(f"no architecture within {format_params(budget.max_params)} params")
    if budget.max_memory_mb is not None and (problem.minimum("memory") or 0) > budget.max_memory_mb * MIB:
        problems.append(f"no architecture within {budget.max_memory_mb:g} MB {where} ({problem.precision})")
    if problems:
        return "; ".join(problems)
    asked = " and ".join(f"{b:g} ms on {name}" for b, name in zip(lats, problem.devices))
    slow = []
    for d, name in enumerate(problem.devices):
        others = Limits(lats[:d] + (None,) + lats[d + 1 :], lim.params, lim.memory_bytes)
        fastest = problem.minimum(f"latency:{d}", others)
        if fastest is not None and fastest > lats[d]:
            slow.append(f"the fastest on {name} takes {fastest:.3f} ms")
    if slow:
        return (
            f"no architecture within {asked} {where}: each budget alone can be met, but within the other budgets "
            + ", ".join(slow)
        )
    return f"no architecture within {asked} {where} together with the parameter and memory budgets"
