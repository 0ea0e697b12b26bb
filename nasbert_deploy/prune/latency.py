"""The pruning latency table of one device at one model width: versioned JSON data, prediction, expected latency.

Entries, in ms at (batch, seq_len), each timed as its own compiled module on the device's runtime:

- `attention_ms[k]`: a BERT attention sub-layer (self-attention with k of H heads, output projection,
  residual, LayerNorm) for every k in 1..H;
- `ffn_ms[w]`: an FFN sub-layer (w of W neurons, GELU, output projection, residual, LayerNorm) on a coarse
  grid of w (linear interpolation in between);
- `rest_ms`: everything outside the layers (embeddings, pooler, classifier) as one model with 0 layers;
- `call_ms`: a trivial module with the attention item's inputs, i.e. the per-call cost every item carries once.

    predicted(model) = scale * (rest_ms + sum_l (attention_ms[k_l] - call_ms) + sum_l (ffn_ms[w_l] - call_ms))
                       + offset_ms

`scale` (1 until fitted) and `offset_ms` (0 until fitted) are fitted on whole pruned models and checked on held-out
ones (`profile.py`): the offset is the per-model cost the sum of items misses (measured 0.9-1.8 ms on the 384-wide
MiniLM tables, where scale alone under-predicted the smallest models by 11-16%).
`expected_ms` is the same sum over the gates' expected counts (piecewise-linear, differentiable): the
Lagrangian penalty of gate training.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nasbert_deploy.errors import InfeasibleBudgetError, TableError
from nasbert_deploy.fileio import read_input_json, write_json_atomic

SCHEMA = "nasbert-deploy/prune-latency-table"
SCHEMA_VERSION = 1


def table_name(device: str, hidden: int, heads: int, ffn: int, batch: int, seq_len: int, clock: str = "wall",
               pooling: str = "cls") -> str:
    """The canonical file stem of a table: device, the shape it was measured at, the clock unless wall time, and
    "-mean" for mean-pooled models with an embedding projection (carried over from NAS-BERT: another "rest"), "-qa"
    for extractive QA models (`head_kind`)."""
    return (f"{device}-h{hidden}-a{heads}-f{ffn}-b{batch}-s{seq_len}" + ("" if clock == "wall" else f"-{clock}")
            + ("" if pooling == "cls" else f"-{pooling}"))


def head_kind(config: dict[str, Any]) -> str:
    """What the table's "rest" holds besides embeddings: "qa" (a start/end head on every token) for extractive QA
    models, else the classifier's pooling ("cls": BERT's pooler; "mean": carried over from NAS-BERT)."""
    from nasbert_deploy.teacher import is_qa

    if is_qa(config):
        return "qa"
    return str(config.get("pooling") or "cls")


def default_table_path(name: str) -> Path:
    """Where tables live by default: ./profiles/prune/NAME.json (beside the NAS tables in ./profiles)."""
    return Path("profiles") / "prune" / f"{name}.json"


def interp(points: list[tuple[float, float]], x: float) -> float:
    """Piecewise-linear interpolation through sorted (x, y) `points`; constant-slope extrapolation at the ends."""
    xs = [p[0] for p in points]
    i = min(max(bisect.bisect_right(xs, x) - 1, 0), len(points) - 2)
    (x0, y0), (x1, y1) = points[i], points[i + 1]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def interp_torch(points: list[tuple[float, float]], x: torch.Tensor) -> torch.Tensor:
    """`interp` on a tensor of x values, differentiable in x (segment chosen without gradient)."""
    xs = torch.tensor([p[0] for p in points], dtype=x.dtype)
    ys = torch.tensor([p[1] for p in points], dtype=x.dtype)
    i = (torch.searchsorted(xs, x.detach(), right=True) - 1).clamp(0, len(points) - 2)
    x0, x1, y0, y1 = xs[i], xs[i + 1], ys[i], ys[i + 1]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


@dataclass
class PruneLatencyTable:
    """Measured sub-layer latencies (ms) of one device at one width, with its manifest and validation."""

    manifest: dict[str, Any]
    attention_ms: dict[int, float]
    ffn_ms: dict[int, float]
    rest_ms: float
    call_ms: float
    scale: float = 1.0
    validation: list[dict[str, Any]] = field(default_factory=list)
    rounds: dict[str, list[float]] = field(default_factory=dict)
    offset_ms: float = 0.0  # per-model cost the per-item sum misses (fitted with `scale` when >= 3 models fit)

    # ------------------------------------------------------------ shape
    @property
    def heads(self) -> int:
        return int(self.manifest["heads"])

    @property
    def ffn(self) -> int:
        return int(self.manifest["ffn"])

    def _attn_points(self) -> list[tuple[float, float]]:
        return [(float(k), v - self.call_ms) for k, v in sorted(self.attention_ms.items())]

    def _ffn_points(self) -> list[tuple[float, float]]:
        return [(float(w), v - self.call_ms) for w, v in sorted(self.ffn_ms.items())]

    # ------------------------------------------------------------ prediction
    def raw_ms(self, heads: list[int], widths: list[int]) -> float:
        """The uncorrected sum for a model with heads[l] heads and widths[l] FFN neurons in layer l."""
        ap, fp = self._attn_points(), self._ffn_points()
        return self.rest_ms + sum(interp(ap, k) for k in heads) + sum(interp(fp, w) for w in widths)

    def predict_ms(self, heads: list[int], widths: list[int]) -> float:
        """Predicted latency (ms) of a pruned model on the table's device at its (batch, seq_len)."""
        for k in heads:
            if not 1 <= k <= self.heads:
                raise TableError(f"{k} heads is outside the table's 1..{self.heads}")
        for w in widths:
            if not 1 <= w <= self.ffn:
                raise TableError(f"FFN width {w} is outside the table's 1..{self.ffn}")
        return self.scale * self.raw_ms(heads, widths) + self.offset_ms

    def expected_ms(self, heads: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
        """`predict_ms` at expected (real-valued) counts per layer (L,) tensors: differentiable."""
        a = interp_torch(self._attn_points(), heads.clamp(1.0, float(self.heads))).sum()
        f = interp_torch(self._ffn_points(), widths.clamp(1.0, float(self.ffn))).sum()
        return self.scale * (self.rest_ms + a + f) + self.offset_ms

    def bounds_ms(self, layers: int) -> tuple[float, float]:
        """(smallest feasible: one head and one neuron per layer, unpruned) predicted latency in ms."""
        return self.predict_ms([1] * layers, [1] * layers), self.predict_ms([self.heads] * layers, [self.ffn] * layers)

    def check_budget(self, budget_ms: float, layers: int, device: str) -> None:
        """`InfeasibleBudgetError` naming the smallest feasible budget when `budget_ms` is below it."""
        low, full = self.bounds_ms(layers)
        if budget_ms < low:
            raise InfeasibleBudgetError(
                f"--max-latency-ms {budget_ms:g} is below the smallest model pruning can make on {device} "
                f"(one head and one FFN neuron per layer: {low:.2f} ms predicted; unpruned {full:.2f} ms); "
                f"give at least {low:.2f}")

    def check_model(self, hidden: int, heads: int, ffn: int, clock: str = "wall") -> None:
        """`TableError` unless the table is for this width and was timed with `clock`."""
        m = self.manifest
        if m.get("clock", "wall") != clock:
            raise TableError(f"the pruning latency table was timed with the {m.get('clock', 'wall')} clock, not {clock}; "
                             f"pass --clock {m.get('clock', 'wall')} or another --table")
        if (int(m["hidden"]), int(m["heads"]), int(m["ffn"])) != (hidden, heads, ffn):
            raise TableError(f"the pruning latency table is for hidden {m['hidden']}, {m['heads']} heads, FFN {m['ffn']}; "
                             f"the model has hidden {hidden}, {heads} heads, FFN {ffn}: profile one for it")

    # ------------------------------------------------------------ data
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "manifest": self.manifest,
            "attention_ms": {str(k): v for k, v in sorted(self.attention_ms.items())},
            "ffn_ms": {str(k): v for k, v in sorted(self.ffn_ms.items())},
            "rest_ms": self.rest_ms,
            "call_ms": self.call_ms,
            "correction": {"scale": self.scale, "offset_ms": self.offset_ms},
            "validation": self.validation,
            "rounds": self.rounds,
        }

    @classmethod
    def from_dict(cls, d: Any, where: str = "pruning latency table") -> PruneLatencyTable:
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            raise TableError(f"{where} is not a pruning latency table (schema {SCHEMA!r}); make one with `nasbert-deploy prune`")
        if d.get("schema_version") != SCHEMA_VERSION:
            raise TableError(f"{where} has schema version {d.get('schema_version')!r}; this version reads {SCHEMA_VERSION}: "
                             "profile again")
        try:
            manifest = dict(d["manifest"])
            for key in ("device", "hidden", "heads", "ffn", "batch", "seq_len"):
                manifest[key]  # noqa: B018  (presence check)
            attn = {int(k): float(v) for k, v in d["attention_ms"].items()}
            ffn = {int(k): float(v) for k, v in d["ffn_ms"].items()}
            table = cls(manifest, attn, ffn, float(d["rest_ms"]), float(d["call_ms"]), float(d["correction"]["scale"]),
                        list(d.get("validation", [])), dict(d.get("rounds", {})),
                        float(d["correction"].get("offset_ms", 0.0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise TableError(f"{where} is malformed ({type(exc).__name__}: {exc}); profile again") from None
        if sorted(attn) != list(range(1, table.heads + 1)):
            raise TableError(f"{where}: attention_ms must have every head count 1..{table.heads}, has {sorted(attn)}")
        if len(ffn) < 2 or min(ffn) != 1 or max(ffn) != table.ffn:
            raise TableError(f"{where}: ffn_ms must span widths 1..{table.ffn}, has {sorted(ffn)}")
        return table

    def save(self, path: str | Path) -> Path:
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> PruneLatencyTable:
        p = Path(path)
        data = read_input_json(p, "pruning latency table", TableError, hint="give a table written by `nasbert-deploy prune`")
        return cls.from_dict(data, str(p))
