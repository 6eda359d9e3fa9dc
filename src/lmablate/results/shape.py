"""Model size and shape read from a table row (runs.parquet's columns, or the rows the Snakefile
plans from a study's configs): distinct size levels, the 1-2.5-5 parameter buckets and the shape
ratios such as d_ff/d_model. Harvest's findings and the figure plan both use them; pure Python.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["DERIVED_AXES", "is_number", "present", "finite", "ratio", "size_levels",
           "spans_sizes", "size_bucket"]

DERIVED_AXES = {"d_ff/d_model": ("model.d_ff", "model.d_model"),
                "n_layers/n_heads": ("model.n_layers", "model.n_heads"),
                "d_model/n_layers": ("model.d_model", "model.n_layers")}


def is_number(x: Any) -> bool:
    """A plain int or float (not a bool, not numpy)."""
    return type(x) is float or type(x) is int


def present(v: Any) -> bool:
    """Not None and not NaN."""
    return v is not None and not (isinstance(v, float) and math.isnan(v))  # NaN: "absent"


def finite(x: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def ratio(row: Mapping[str, Any], num: str, den: str) -> float | None:
    """``row[num] / row[den]`` when both are numbers and the denominator is not zero."""
    a, b = row.get(num), row.get(den)
    return a / b if is_number(a) and is_number(b) and b else None


def size_levels(params: Sequence[float], tolerance: float = 0.1) -> list[float]:
    """Distinct model sizes among parameter counts: counts within ``tolerance`` (relative) of a
    level's smallest member are one size, so ablations that move the count by a few percent
    (NoPE, a norm, an FFN of equal budget) do not pass for a size sweep."""
    levels: list[float] = []
    for p in sorted(float(x) for x in params if is_number(x) and x > 0):
        if not levels or p > levels[-1] * (1 + tolerance):
            levels.append(p)
    return levels


def spans_sizes(params: Sequence[float]) -> bool:
    """At least three sizes over at least a factor of two: enough for a size trend or a law."""
    levels = size_levels(params)
    return len(levels) >= 3 and levels[-1] >= 2 * levels[0]


def size_bucket(params: float) -> tuple[float, float]:
    """The 1-2.5-5 series bucket holding ``params`` (a shape sweep picks 5M, 10M, 15M, 25M, 50M)."""
    k = 10 ** math.floor(math.log10(params))
    edges = [k, 2.5 * k, 5 * k, 10 * k]
    for lo, hi in zip(edges, edges[1:]):
        if lo <= params < hi:
            return lo, hi
    return edges[-2], edges[-1]
