"""What a study's runs support, read from their config columns (pure Python: the Snakefile
decides its figures from these at parse time, and the figures use them to lay out their axes):
the numeric sweep axes and derived ratios, the grid a heatmap can show, rough parameter and FLOP
counts before anything has trained, and one key per configuration.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from lmablate.results.shape import DERIVED_AXES, is_number, present, ratio, size_levels

__all__ = ["numeric_axes", "heatmap_axes", "approx_params", "approx_flops_per_token",
           "axis_value", "figure_axes", "row_params", "config_key"]


def numeric_axes(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Sweep axes (``axis.*``) with numeric values and at least two of them, most values first."""
    out = []
    keys = list(dict.fromkeys(k for r in rows for k in r if k.startswith("axis.")))
    for k in keys:
        vals = [r[k] for r in rows if present(r.get(k))]
        if vals and all(is_number(v) for v in vals) and len(set(vals)) >= 2:
            out.append((-len(set(vals)), keys.index(k), k))
    return [k for *_, k in sorted(out)]


def heatmap_axes(rows: Sequence[Mapping[str, Any]]) -> tuple[str | None, list[str]]:
    """(variant, [y, x, facet...]) for a heatmap, or (None, []).

    The grid is the variant with the most configurations (other variants are single points
    beside it); y and x are its first two numeric axes that form a real grid, i.e. more
    combinations than either has values (zipped axes such as seq_len with batch_size do not).
    An axis swept relative to another (a shape sweep's d_ff from d_model/2 to 2 * d_model) is
    shown as that ratio (``d_ff/d_model``, :data:`DERIVED_AXES`) when the ratio takes fewer
    values.
    """
    counts: dict[Any, set] = {}
    for r in rows:
        counts.setdefault(r.get("variant"), set()).add(
            tuple(sorted((k, r[k]) for k in r if k.startswith("axis.") and present(r[k]))))
    if not counts:
        return None, []
    variant = max(counts, key=lambda v: len(counts[v]))
    sub = [r for r in rows if r.get("variant") == variant]
    axes = [_relative(a, sub) for a in numeric_axes(sub)]
    for i, y in enumerate(axes):
        for x in axes[i + 1:]:
            combos = {(axis_value(r, y), axis_value(r, x)) for r in sub}
            if len(combos) > max(len({axis_value(r, y) for r in sub}),
                                 len({axis_value(r, x) for r in sub})):
                return variant, [y, x] + [a for a in axes if a not in (y, x)]
    return None, []


def _relative(axis: str, rows: Sequence[Mapping[str, Any]]) -> str:
    """``axis``, or the derived ratio with it as numerator and a swept denominator when the
    ratio takes fewer values (the sweep was relative: d_ff = d_model / 2 ... 2 * d_model)."""
    for name, (num, den) in DERIVED_AXES.items():
        if axis == f"axis.{num}" and any(f"axis.{den}" in r for r in rows):
            ratios = {round(v, 6) for v in (ratio(r, num, den) for r in rows) if v is not None}
            if 2 <= len(ratios) < len({r.get(axis) for r in rows}):
                return name
    return axis


def approx_params(row: Mapping[str, Any]) -> float | None:
    """Rough parameter count from a row's model config (embeddings + attention + FFN/experts),
    good to ~5%: enough to tell model sizes apart at Snakefile parse time, when the exact counts
    of final.json do not exist yet and importing torch would slow every job's parse."""
    d, layers = row.get("model.d_model"), row.get("model.n_layers")
    if not (is_number(d) and is_number(layers)):
        return None
    gated = row.get("model.ffn", "swiglu") in ("swiglu", "geglu")
    d_ff = row.get("model.d_ff") or (round(8 * d / 3) if gated else 4 * d)
    experts = row.get("model.num_experts") or 0
    ffn = (3 if gated else 2) * d * (row.get("model.expert_d_ff") or d_ff) * max(1, experts)
    vocab = row.get("model.vocab_size") or row.get("tokenizer.vocab_size") or 0
    emb = vocab * d * (1 if row.get("model.tie_embeddings", True) else 2)
    return float(emb + layers * (4 * d * d + ffn))


def approx_flops_per_token(row: Mapping[str, Any]) -> float | None:
    """Rough training FLOPs per token from a row's model config, the formula of
    :func:`lmablate.study.accounting.flops_per_token` on :func:`approx_params`' terms (MoE: the
    top_k
    experts a token uses): enough to tell configurations of different compute apart at parse
    time."""
    d, layers = row.get("model.d_model"), row.get("model.n_layers")
    if not (is_number(d) and is_number(layers)):
        return None
    gated = row.get("model.ffn", "swiglu") in ("swiglu", "geglu")
    d_ff = row.get("model.expert_d_ff") or row.get("model.d_ff") or \
        (round(8 * d / 3) if gated else 4 * d)
    active = min(row.get("model.top_k") or 1, row.get("model.num_experts") or 1)
    n = layers * (4 * d * d + (3 if gated else 2) * d * d_ff * active)
    vocab = row.get("model.vocab_size") or row.get("tokenizer.vocab_size") or 0
    seq = row.get("train.seq_len") or 0
    return float(6 * n + 6 * d * vocab + 12 * layers * d * seq)


def axis_value(row: Mapping[str, Any], axis: str) -> float | None:
    """A row's value on a metric_vs_axis axis: a sweep axis column or a derived ratio."""
    if axis in DERIVED_AXES:
        return ratio(row, *DERIVED_AXES[axis])
    v = row.get(axis)
    return v if present(v) and is_number(v) else None


def figure_axes(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The x axes of a metric_vs_axis figure: the numeric sweep axes (the learning rate has its
    own figure), then each derived ratio of :data:`DERIVED_AXES` whose numerator is swept,
    whose denominator varies (else the ratio is the numerator's axis rescaled) and that takes two
    or more values (2% apart: a d_ff rounded from d_model is not a ratio axis)."""
    axes = [a for a in numeric_axes(rows) if a != "axis.train.lr"]
    swept = {k[len("axis."):] for r in rows for k in r if k.startswith("axis.")}
    for name, (num, den) in DERIVED_AXES.items():
        vals = [v for v in (ratio(r, num, den) for r in rows) if v is not None and v > 0]
        dens = {r.get(den) for r in rows if present(r.get(den))}
        if num in swept and len(dens) >= 2 and len(size_levels(vals, 0.02)) >= 2:
            axes.append(name)
    return axes


def row_params(rows: Sequence[Mapping[str, Any]]) -> list[float]:
    """The rows' parameter counts: the exact ones of harvested runs, else :func:`approx_params`."""
    exact = [r.get("params_total") for r in rows]
    if all(is_number(p) for p in exact):
        return exact
    return [p for p in (approx_params(r) for r in rows) if p is not None]


def config_key(row: Mapping[str, Any]) -> str:
    """One key per configuration (the runs of a group differ only in seed and run ID)."""
    return json.dumps({k: v for k, v in row.items() if k == "variant" or (
        k.startswith(("model.", "train.", "axis.")) and k != "train.seed")},
        sort_keys=True, default=str)
