"""The shape of a latency table file, checked before `LatencyTable.from_dict` trusts it.

A table read from disk may be truncated, hand-edited or another program's JSON. Everything the lookups
index into (entries, corrections, validation, reference) is checked here, so a malformed file is one
`TableError` naming the bad field at load time, never a `KeyError` or `TypeError` later in a prediction.
"""

from __future__ import annotations

import math
import re
from typing import Any

from nasbert_deploy.errors import TableError

_POINT = re.compile(r"b[0-9]{1,6}s[0-9]{1,6}")


def _number(v: Any) -> bool:
    """A finite JSON number that fits a float (JSON allows NaN, Infinity and integers of any length)."""
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return abs(v) < 10**300
    return isinstance(v, float) and math.isfinite(v)


def _fail(where: str, field: str, expected: str) -> TableError:
    return TableError(f"{where} is not a valid latency table: {field} must be {expected}; re-profile or pass another table")


def _points(where: str, field: str, per_point: Any, needs_median: bool = True) -> None:
    if not isinstance(per_point, dict):
        raise _fail(where, field, "an object keyed by point (e.g. 'b1s128')")
    for pk, m in per_point.items():
        if not _POINT.fullmatch(pk):
            raise _fail(where, f"{field} key {pk!r}", "a point like 'b1s128'")
        if needs_median and not (isinstance(m, dict) and _number(m.get("median_ms")) and m["median_ms"] >= 0):
            raise _fail(where, f"{field}[{pk!r}]", "an object with a finite median_ms >= 0")


def _plane(where: str, field: str, plane: Any) -> None:
    ok = isinstance(plane, dict) and _number(plane.get("scale")) and _number(plane.get("offset_ms"))
    if not ok or not _number(plane.get("ms_per_mparam", 0.0)):
        raise _fail(where, field, "a plane with finite scale, offset_ms (and ms_per_mparam)")


def _corrections(where: str, corrections: Any, version: Any) -> None:
    if not isinstance(corrections, dict):
        raise _fail(where, "corrections", "an object keyed by point")
    for pk, corr in corrections.items():
        if not _POINT.fullmatch(pk):
            raise _fail(where, f"corrections key {pk!r}", "a point like 'b1s128'")
        if version == 2:
            _plane(where, f"corrections[{pk!r}]", corr)
            continue
        planes = corr.get("planes") if isinstance(corr, dict) else None
        if not isinstance(planes, list) or not planes:
            raise _fail(where, f"corrections[{pk!r}].planes", "a non-empty list of planes")
        for i, plane in enumerate(planes):
            _plane(where, f"corrections[{pk!r}].planes[{i}]", plane)
        split = corr.get("split_mparams")
        if split is not None and not _number(split):
            raise _fail(where, f"corrections[{pk!r}].split_mparams", "a number or null")


def _validation(where: str, validation: Any) -> None:
    if not isinstance(validation, dict):
        raise _fail(where, "validation", "an object keyed by point")
    for pk, v in validation.items():
        for name, part in ((f"validation[{pk!r}]", v), (f"validation[{pk!r}].holdout", (v or {}).get("holdout") or {})):
            if not isinstance(part, dict):
                raise _fail(where, name, "an object")
            archs, spread = part.get("archs", []), part.get("round_spread_pct", [])
            if not (isinstance(archs, list) and all(isinstance(a, str) for a in archs)):
                raise _fail(where, f"{name}.archs", "a list of arch strings")
            if not (isinstance(spread, list) and all(_number(x) for x in spread)):
                raise _fail(where, f"{name}.round_spread_pct", "a list of numbers")


def check_table_data(data: Any, where: str) -> None:
    """`TableError` unless `data` (parsed JSON) has the shape of a latency table: entries, corrections,
    validation and reference as the lookups read them (the schema version and space are `from_dict`'s checks)."""
    if not isinstance(data, dict) or not isinstance(data.get("manifest"), dict) or "entries" not in data:
        raise TableError(f"{where} is not a latency table (needs 'manifest' and 'entries' objects)")
    m = data["manifest"]
    if not isinstance(m.get("space", {}), dict) or not isinstance(m.get("device", {}), dict):
        raise _fail(where, "manifest.space and manifest.device", "objects")
    entries = data["entries"]
    if not isinstance(entries, dict) or not entries:
        raise _fail(where, "entries", "a non-empty object keyed by operation")
    for key, per_point in entries.items():
        _points(where, f"entries[{key!r}]", per_point)
    _corrections(where, data.get("corrections") or {}, data.get("schema_version"))
    _validation(where, data.get("validation") or {})
    for name in ("measurement", "reference"):
        if not isinstance(data.get(name) or {}, dict):
            raise _fail(where, name, "an object")
    ref_points = (data.get("reference") or {}).get("points")
    if ref_points is not None:
        _points(where, "reference.points", ref_points)
