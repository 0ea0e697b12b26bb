"""Profile a pruning latency table on a device, and check it on whole pruned models.

Every item (attention with k heads, FFN with w neurons, the rest of the model, a trivial call) goes through
the device's runtime plug-in (`compile`: the export path `export` uses) and is timed with `time_compiled`,
i.e. `runtimes.timing.measure`; `rounds` passes over all items, each item's figure the lowest round
median (the NAS tables' default statistic). Whole models with random head counts and FFN widths per layer
are timed the same way: `holdout` of them (spread over the sizes) are predicted without having been seen
(their errors are the table's honest accuracy), the others fit the table's scale.
"""

from __future__ import annotations

import copy
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nasbert_deploy.devices import DeviceSpec
from nasbert_deploy.prune.latency import PruneLatencyTable, head_kind, table_name
from nasbert_deploy.runtimes.timing import CLOCKS, round_statistic

Progress = Callable[[str, int, int], None]  # (phase, done, total)


@dataclass(frozen=True)
class PruneProfileSettings:
    """How much to measure. `ffn_points`: FFN widths on the grid (1 and W included, evenly spaced)."""

    batch: int = 1
    seq_len: int = 128
    ffn_points: int = 9
    rounds: int = 3
    warmup: int = 3
    runs: int = 10
    min_time_s: float = 0.1
    validate: int = 8
    holdout: int = 5
    seed: int = 0
    clock: str = "wall"  # or "cpu": process CPU time (`CLOCKS`)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def timing_kwargs(self) -> dict[str, Any]:
        return {"warmup": self.warmup, "runs": self.runs, "min_time_s": self.min_time_s, "clock": CLOCKS[self.clock]}


def ffn_grid(width: int, points: int) -> list[int]:
    """`points` FFN widths from 1 to `width` (evenly spaced, rounded, distinct)."""
    points = max(2, points)
    return sorted({1, width} | {max(1, round(width * i / (points - 1))) for i in range(1, points - 1)})


class _Attention(nn.Module):
    """A BERT attention sub-layer with k heads: (b, t, d) activations, (b, t) mask -> (b, t, d)."""

    def __init__(self, config: Any, k: int) -> None:
        super().__init__()
        from transformers.models.bert.modeling_bert import BertAttention

        cfg = copy.deepcopy(config)
        cfg._attn_implementation = config._attn_implementation or "sdpa"  # what from_pretrained picks for the whole model
        self.att = BertAttention(cfg)
        gone = list(range(k, int(config.num_attention_heads)))
        if gone:
            self.att.prune_heads(gone)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ext = (1.0 - mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min  # (b, 1, 1, t)
        return self.att(x, attention_mask=ext)[0]


class _FFN(nn.Module):
    """A BERT FFN sub-layer of width w: (b, t, d) -> (b, t, d)."""

    def __init__(self, config: Any, w: int) -> None:
        super().__init__()
        from transformers.models.bert.modeling_bert import BertIntermediate, BertOutput

        cfg = config.__class__(**{**config.to_dict(), "intermediate_size": w})
        self.inner, self.out = BertIntermediate(cfg), BertOutput(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.inner(x), x)


class _Call(nn.Module):
    """Trivial: what one call with the attention item's inputs costs besides its work."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return x + mask[:, :, None].to(x.dtype)


class _Logits(nn.Module):
    """A classifier called with (input_ids, attention_mask), returning logits (b, c)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


class _StartLogits(nn.Module):
    """A QA model called with (input_ids, attention_mask), returning its start logits (b, t)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return out.start_logits + out.end_logits


class _MeanPooledRest(nn.Module):
    """What a mean-pooled `pruned_bert` classifier computes besides its layers: the embeddings (with their
    projection), one Linear per `layer_projections` entry (these stay whole when units are pruned), mean pooling
    and the classifier. Called with (input_ids, attention_mask), returns logits (b, c)."""

    def __init__(self, config: Any) -> None:
        from nasbert_deploy.model.pruned_bert import PrunedBertConfig, PrunedBertForSequenceClassification

        super().__init__()
        cfg = {k: v for k, v in config.to_dict().items() if k not in ("model_type", "auto_map", "architectures")}
        cfg.update(num_hidden_layers=0, intermediate_sizes=None, layer_projections=None, pruned_heads={})
        self.model = PrunedBertForSequenceClassification(PrunedBertConfig(**cfg))
        h = int(config.hidden_size)
        self.projections = nn.ModuleList(nn.Linear(h, h) for _ in getattr(config, "layer_projections", []) or [])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.model.bert.embeddings(input_ids=input_ids)
        for proj in self.projections:
            x = proj(x)
        m = attention_mask.to(x.dtype)[:, :, None]
        return self.model.classifier((x * m).sum(1) / m.sum(1).clamp(min=1.0))


def pruned_classifier(config: Any, heads: list[int], widths: list[int], seed: int = 0) -> nn.Module:
    """A random-weight `PrunedBertForSequenceClassification` (`...ForQuestionAnswering` for a QA config,
    `PrunedRoberta...` for RoBERTa) with heads[l] heads and widths[l] neurons per layer."""
    from nasbert_deploy.prune.apply import pruned_classes

    n = int(config.num_attention_heads)
    cfg = {k: v for k, v in config.to_dict().items() if k not in ("model_type", "auto_map", "pruned_heads", "architectures")}
    cfg.update(num_hidden_layers=len(heads), intermediate_sizes=list(widths),
               pruned_heads={i: list(range(k, n)) for i, k in enumerate(heads) if k < n})
    torch.manual_seed(seed)
    config_cls, cls = pruned_classes(str(config.model_type), head_kind(config.to_dict()) == "qa")
    return cls(config_cls(**cfg)).eval()


def _inputs(kind: str, b: int, t: int, hidden: int, vocab: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind == "ids":
        ids = rng.integers(5, vocab, size=(b, t), dtype=np.int64)
        return {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    x = rng.standard_normal((b, t, hidden)).astype(np.float32)
    return {"x": x, "mask": np.ones((b, t), np.int64)} if kind == "x+mask" else {"x": x}


def _no_layers(config: Any) -> Any:
    """`config` with no layers (the table's "rest"), as the plain model type (pruned_* types are not in Auto maps
    until `register()`; the rest is the same)."""
    from transformers import AutoConfig

    d = {k: v for k, v in config.to_dict().items() if k not in ("auto_map", "architectures", "pruned_heads",
                                                                  "intermediate_sizes", "layer_projections")}
    d["num_hidden_layers"] = 0
    model_type = str(d.pop("model_type")).removeprefix("pruned_")
    return AutoConfig.for_model(model_type, **d)


def _items(config: Any, s: PruneProfileSettings) -> list[tuple[str, nn.Module, str]]:
    """(key, module, input kind) of every table entry."""
    heads, width = int(config.num_attention_heads), int(config.intermediate_size)
    torch.manual_seed(s.seed)
    items: list[tuple[str, nn.Module, str]] = [("call", _Call(), "x+mask")]
    kind = head_kind(config.to_dict())
    if kind == "mean":  # carried over from NAS-BERT (`prune.from_nasbert`)
        rest: nn.Module = _MeanPooledRest(config)
    elif kind == "qa":  # embeddings and the start/end head on every token
        from transformers import AutoModelForQuestionAnswering

        rest = _StartLogits(AutoModelForQuestionAnswering.from_config(_no_layers(config)))
    else:  # embeddings, the encoder's own pooler and classifier head (BERT, RoBERTa)
        from transformers import AutoModelForSequenceClassification

        rest = _Logits(AutoModelForSequenceClassification.from_config(_no_layers(config)))
    items.append(("rest", rest.eval(), "ids"))
    items += [(f"attention:{k}", _Attention(config, k).eval(), "x+mask") for k in range(1, heads + 1)]
    items += [(f"ffn:{w}", _FFN(config, w).eval(), "x") for w in ffn_grid(width, s.ffn_points)]
    return items


def _compile(spec: DeviceSpec, module: nn.Module, inputs: dict[str, np.ndarray], workdir: Path, out: str) -> Any:
    from nasbert_deploy.runtimes.base import get_runtime
    from nasbert_deploy.runtimes.convert import EXAMPLE_BATCH, EXAMPLE_SEQ

    example = {}
    for name, a in inputs.items():  # example shapes > 1 on dynamic axes (see runtimes.convert)
        shape = (EXAMPLE_BATCH, EXAMPLE_SEQ, *a.shape[2:])
        example[name] = torch.ones(shape, dtype=torch.long) if a.dtype == np.int64 and name != "input_ids" else (
            torch.randint(5, 100, shape) if name == "input_ids" else torch.randn(shape))
    workdir.mkdir(parents=True, exist_ok=True)
    return get_runtime(spec.runtime).compile(module, example, [out], spec, workdir)


def _time_all(compiled: list[tuple[str, Any, dict[str, np.ndarray]]], s: PruneProfileSettings,
              progress: Progress | None, phase: str) -> dict[str, list[float]]:
    """`rounds` passes over every compiled item; per item the round medians (ms)."""
    from nasbert_deploy.runtimes.base import time_compiled

    out: dict[str, list[float]] = {k: [] for k, _, _ in compiled}
    total, done = s.rounds * len(compiled), 0
    for _ in range(s.rounds):
        for key, c, inputs in compiled:
            out[key].append(time_compiled(c, inputs, **s.timing_kwargs()).median_ms)
            done += 1
            if progress:
                progress(phase, done, total)
    return out


def profile_table(config: Any, spec: DeviceSpec, s: PruneProfileSettings, progress: Progress | None = None,
                  workdir: Path | None = None) -> PruneLatencyTable:
    """Measure every entry for `config` (a BERT config: hidden, heads, FFN width) on `spec`, then validate."""
    from nasbert_deploy.profiling.host import environment
    from nasbert_deploy.runtimes.base import require_available

    require_available(spec)
    hidden, heads, width = int(config.hidden_size), int(config.num_attention_heads), int(config.intermediate_size)
    vocab = int(config.vocab_size)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nasbert-prune-profile-", dir=workdir) as tmp:
        items = _items(config, s)
        compiled = []
        for i, (key, module, kind) in enumerate(items):
            inputs = _inputs(kind, s.batch, s.seq_len, hidden, vocab, s.seed)
            out = "logits" if kind == "ids" else "y"
            compiled.append((key, _compile(spec, module, inputs, Path(tmp) / key.replace(":", "_"), out), inputs))
            if progress:
                progress("export", i + 1, len(items))
        rounds = _time_all(compiled, s, progress, "time")
    fig = {k: round_statistic(v, "min") for k, v in rounds.items()}
    manifest = {
        "name": table_name(spec.name, hidden, heads, width, s.batch, s.seq_len, s.clock, head_kind(config.to_dict())),
        "clock": s.clock,
        "device": spec.name, "device_spec": spec.to_dict(), "hidden": hidden, "heads": heads, "ffn": width,
        "layers": int(config.num_hidden_layers), "vocab_size": vocab, "batch": s.batch, "seq_len": s.seq_len,
        "statistic": "min", "settings": s.to_dict(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **environment(),
    }
    table = PruneLatencyTable(
        manifest=manifest,
        attention_ms={k: fig[f"attention:{k}"] for k in range(1, heads + 1)},
        ffn_ms={w: fig[f"ffn:{w}"] for w in ffn_grid(width, s.ffn_points)},
        rest_ms=fig["rest"], call_ms=fig["call"], rounds=rounds,
    )
    validate_table(table, config, spec, s, progress, workdir)
    table.manifest["profile_s"] = round(time.perf_counter() - t0, 1)
    return table


def validation_models(layers: int, heads: int, width: int, n: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """`n` random (heads per layer, widths per layer) pairs spanning small to full models."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        keep = (i + 0.5) / n  # from heavily pruned to nearly full, jittered per layer
        hs = [min(heads, max(1, round(heads * keep * rng.uniform(0.5, 1.5)))) for _ in range(layers)]
        ws = [min(width, max(1, round(width * keep * rng.uniform(0.5, 1.5)))) for _ in range(layers)]
        out.append((hs, ws))
    return out


def validate_table(table: PruneLatencyTable, config: Any, spec: DeviceSpec, s: PruneProfileSettings,
                   progress: Progress | None = None, workdir: Path | None = None) -> None:
    """Time `s.validate` whole pruned models; fit `table.scale` and `table.offset_ms` on those not held out (least
    squares measured ~ scale * raw + offset with >= 3 of them, else the median of measured / raw and no offset),
    record predicted vs measured for all (`table.validation`, role fit | holdout)."""
    if s.validate <= 0:
        return
    layers = int(config.num_hidden_layers)
    models = validation_models(layers, table.heads, table.ffn, s.validate, s.seed + 1)
    with tempfile.TemporaryDirectory(prefix="nasbert-prune-validate-", dir=workdir) as tmp:
        compiled = []
        for i, (hs, ws) in enumerate(models):
            inputs = _inputs("ids", s.batch, s.seq_len, 0, int(config.vocab_size), s.seed)
            model = pruned_classifier(config, hs, ws, s.seed)
            module = _StartLogits(model) if head_kind(config.to_dict()) == "qa" else _Logits(model)
            compiled.append((f"model:{i}", _compile(spec, module, inputs, Path(tmp) / f"m{i}", "logits"), inputs))
            if progress:
                progress("export models", i + 1, len(models))
        rounds = _time_all(compiled, s, progress, "time models")
    measured = [round_statistic(rounds[f"model:{i}"], "min") for i in range(len(models))]
    raw = [table.raw_ms(hs, ws) for hs, ws in models]
    held = holdout_indices(s.validate, s.holdout)
    fit = [i for i in range(len(models)) if i not in held]
    table.scale, table.offset_ms = fit_correction([raw[i] for i in fit], [measured[i] for i in fit])
    table.validation = []
    for i, ((hs, ws), m, r) in enumerate(zip(models, measured, raw)):
        pred = table.scale * r + table.offset_ms
        table.validation.append({"heads": hs, "widths": ws, "raw_ms": r, "predicted_ms": pred, "measured_ms": m,
                                 "error_pct": 100 * (pred - m) / m, "role": "holdout" if i in held else "fit"})


def fit_correction(raw: list[float], measured: list[float]) -> tuple[float, float]:
    """(scale, offset_ms) mapping the per-item sums to whole-model latencies: an affine least-squares fit with at
    least 3 models whose sums differ, kept only if both terms are plausible (scale > 0, offset >= 0: a model
    costs what its parts cost plus a fixed amount); else the median ratio and no offset; (1, 0) without models."""
    if not raw:
        return 1.0, 0.0
    ratio = float(np.median([m / r for m, r in zip(measured, raw)]))
    if len(raw) >= 3 and float(np.ptp(raw)) > 0:
        a, b = np.polyfit(np.asarray(raw), np.asarray(measured), 1)
        if a > 0 and b >= 0:
            return float(a), float(b)
    return ratio, 0.0


def holdout_indices(n: int, holdout: int) -> set[int]:
    """`holdout` of the `n` validation models (ordered small to large), spread evenly over the sizes."""
    holdout = min(holdout, n)
    return {min(n - 1, round((j + 0.5) * n / holdout - 0.5)) for j in range(holdout)} if holdout else set()


def holdout_summary(table: PruneLatencyTable) -> dict[str, Any]:
    """Share of held-out models predicted within 10% and the largest held-out error (percent)."""
    rows = [v for v in table.validation if v["role"] == "holdout"] or table.validation
    if not rows:
        return {"models": 0}
    errs = [abs(v["error_pct"]) for v in rows]
    return {"models": len(rows), "within_10pct": sum(e <= 10 for e in errs) / len(errs), "max_abs_error_pct": max(errs)}
