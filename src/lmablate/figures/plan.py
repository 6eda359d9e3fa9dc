"""Which figures a study gets, decided from its runs' config columns (pure Python: runs at
Snakefile parse time, before anything has trained, and again on the harvested runs table).

:data:`FIGURE_KINDS` names every kind with what it shows, :data:`DEFAULT_FIGURES` the figures a
study gets by default, :func:`plan_figures` the ones its axes support (or its ``figures:`` pick);
:func:`planned_rows` gives the rows of a study's runs before they exist.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from lmablate.dicts import flatten
from lmablate.errors import ConfigError
from lmablate.results.shape import (
    DERIVED_AXES,
    is_number,
    present,
    ratio,
    size_bucket,
    size_levels,
    spans_sizes,
)

if TYPE_CHECKING:
    from lmablate.study.load import Study

__all__ = ["FIGURE_KINDS", "DEFAULT_FIGURES", "FIGURE_NAME_RE", "figure_summary", "figure_lines",
           "planned_rows", "numeric_axes", "heatmap_axes", "approx_params",
           "approx_flops_per_token", "axis_value", "figure_axes", "plan_figures"]


FIGURE_KINDS = {  # kind -> what it shows (RESULTS.md; report captions say more)
    "loss_curves": "Validation loss against training tokens, each group next to the reference "
                   "(mean and 95% CI over seeds).",
    "final_metric": "Final metric per group, best first: mean with 95% CI over seeds, each seed "
                    "a dot, the reference as a dashed line.",
    "params_vs_loss": "Parameters against final validation loss (log x) with the Pareto "
                      "frontier, coloured by a sweep axis.",
    "heatmap": "Mean final validation loss over two sweep axes, facetted by a third.",
    "lr_sensitivity": "Final validation loss against the learning rate (log x), one line per "
                      "configuration; diverged runs marked.",
    "efficiency": "Training throughput, peak memory and data efficiency (training-loss drop "
                  "per million tokens; early- over late-phase drop rate) against model size.",
    "calibration": "Reliability diagram of the final evaluation: accuracy against confidence "
                   "per bin, with the expected calibration error.",
    "moe_load": "Mixture-of-experts routing: each expert's share of tokens over training, and "
                "the Gini coefficient and entropy of the load.",
    "tasks": "Downstream task accuracy per group (seed dots, mean with 95% CI), with the "
             "chance line.",
    "scaling_law": "Final loss against parameters with the fitted scaling law "
                   "L(N) = E + A/N^alpha (and L(N, D) when budgets vary), bootstrap bands.",
    "metric_vs_axis": "Final validation loss (perplexity on the right axis) against each swept "
                      "numeric axis and derived ratio such as d_ff/d_model: mean with 95% CI "
                      "over seeds per configuration, the best at each value joined.",
    "pareto": "Compute against final validation loss (training FLOPs per token; parameters or "
              "latency as options) with the Pareto frontier drawn and its points labelled.",
    "best_per_size": "The configuration with the lowest validation loss after N training "
                     "tokens in each parameter-count bucket (1-2.5-5 series), among the rest.",
}
# default figure name -> (kind, options)
DEFAULT_FIGURES = {
    "loss_curves": ("loss_curves", {}),
    "final_val_loss": ("final_metric", {"metric": "val_loss"}),
    "final_val_ppl": ("final_metric", {"metric": "val_ppl"}),
    "params_vs_loss": ("params_vs_loss", {}),
    "heatmap": ("heatmap", {}),
    "lr_sensitivity": ("lr_sensitivity", {}),
    "efficiency": ("efficiency", {}),
    "calibration": ("calibration", {}),
    "moe_load": ("moe_load", {}),
    "scaling_law": ("scaling_law", {}),
    "loss_vs_axis": ("metric_vs_axis", {}),
    "pareto": ("pareto", {}),
    "best_per_size": ("best_per_size", {}),
}
FIGURE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def figure_summary(spec: Mapping[str, Any]) -> str:
    """One line on what a planned figure shows (RESULTS.md, the results page): its kind's
    :data:`FIGURE_KINDS` entry, for loss curves of the train split the training loss."""
    if spec.get("kind") == "loss_curves" and spec.get("split") == "train":
        return ("Training loss against training tokens, each group next to the reference (mean "
                "and 95% CI over seeds).")
    return FIGURE_KINDS.get(spec.get("kind", ""), "")

def figure_lines(plan: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Figure name -> the line RESULTS.md writes under it (:func:`figure_summary`, and the
    metric of a figure that names one), for :func:`lmablate.results.harvest.harvest`."""
    out = {}
    for name, spec in plan.items():
        what = figure_summary(spec)
        if spec.get("metric"):
            what += f" Metric: `{spec['metric']}`."
        out[name] = what
    return out


def planned_rows(study: Study, runs: Iterable[Any] | None = None) -> list[dict[str, Any]]:
    """Rows shaped like runs.parquet's config columns, for the runs a study will train (the
    Snakefile decides its figure list from these before anything has run): one per sweep point,
    so a run that several points share has a row for each, as :func:`group_rows` expands it.
    ``runs``: other runs than ``study.runs`` (a two-phase study's phase 1)."""
    from lmablate.study.config import to_dict

    rows = []
    for r in study.runs if runs is None else runs:
        row = {"run_id": r.run_id, "variant": r.variant, "seed": r.seed, "source": "lmablate",
               **flatten(to_dict(r.config))}
        for variant, axes in r.memberships():
            rows.append({**row, "variant": variant, **{f"axis.{k}": v for k, v in axes.items()}})
    return rows


def _point_rows(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Harvested rows with a shared run expanded to one row per sweep point (its
    ``memberships``), as :func:`planned_rows` gives them."""
    out: list[Mapping[str, Any]] = []
    for row in rows:
        members = row.get("memberships")
        if not isinstance(members, str) or not members:
            out.append(row)
            continue
        plain = {k: v for k, v in row.items() if not k.startswith("axis.")}
        out += [{**plain, "variant": m["variant"],
                 **{f"axis.{k}": v for k, v in m["axes"].items()}} for m in json.loads(members)]
    return out


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
    An axis swept relative to another (seed 000's d_ff from d_model/2 to 2 * d_model) is shown
    as that ratio (``d_ff/d_model``, :data:`DERIVED_AXES`) when the ratio takes fewer values.
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


def _row_params(rows: Sequence[Mapping[str, Any]]) -> list[float]:
    exact = [r.get("params_total") for r in rows]
    if all(is_number(p) for p in exact):
        return exact
    return [p for p in (approx_params(r) for r in rows) if p is not None]


def _applies(kind: str, rows: Sequence[Mapping[str, Any]]) -> bool:
    native = any(r.get("source", "lmablate") == "lmablate" for r in rows)
    if kind in ("loss_curves", "final_metric"):
        return True
    if kind in ("params_vs_loss", "scaling_law"):
        return spans_sizes(_row_params(rows))
    if kind == "heatmap":
        return heatmap_axes(rows)[0] is not None
    if kind == "lr_sensitivity":  # some configuration at two learning rates or more
        lrs: dict[str, set] = {}
        for r in rows:
            if present(r.get("train.lr")):
                key = _config_key({k: v for k, v in r.items()
                                   if k not in ("train.lr", "axis.train.lr", "variant")})
                lrs.setdefault(key, set()).add(r["train.lr"])
        return any(len(v) >= 2 for v in lrs.values())
    if kind in ("efficiency", "calibration"):
        return native
    if kind == "moe_load":
        return any((r.get("model.num_experts") or 0) > 0 for r in rows)
    if kind == "metric_vs_axis":
        return bool(figure_axes(rows))
    if kind == "pareto":  # a sweep of three configurations or more, two compute levels or more
        flops = {_config_key(r): approx_flops_per_token(r) for r in rows}
        swept = bool(figure_axes(rows)) or spans_sizes(_row_params(rows))
        return swept and len(flops) >= 3 and \
            len(size_levels([f for f in flops.values() if f], 0.05)) >= 2
    if kind == "best_per_size":  # sizes to choose among, and a choice within one size
        params = [p for p in (approx_params(r) for r in rows) if p is not None]
        buckets = [size_bucket(p) for p in {_config_key(r): approx_params(r) for r in rows}.values()
                   if p]
        return spans_sizes(params) and len(buckets) > len(set(buckets))
    raise KeyError(kind)


def _config_key(row: Mapping[str, Any]) -> str:
    """One key per configuration (the runs of a group differ only in seed and run ID)."""
    return json.dumps({k: v for k, v in row.items() if k == "variant" or (
        k.startswith(("model.", "train.", "axis.")) and k != "train.seed")},
        sort_keys=True, default=str)


def plan_figures(rows: Sequence[Mapping[str, Any]], pick: Any = None
                 ) -> dict[str, dict[str, Any]]:
    """Figure name -> {"kind": ..., options} for these runs.

    By default every figure that the study's axes support (no heatmap without two numeric axes,
    no MoE figure for dense models, no LR figure unless the LR varies, no scaling fit below three
    sizes). ``pick`` (the study's ``figures:`` key) chooses and names them instead: a list of
    default names, or a mapping ``name: kind`` / ``name: {kind: ..., option: value}``.
    """
    if pick is None:
        rows = _point_rows(rows)
        return {name: {"kind": kind, **opts} for name, (kind, opts) in DEFAULT_FIGURES.items()
                if _applies(kind, rows)}
    if isinstance(pick, (list, tuple)):
        out = {}
        for name in pick:
            if name not in DEFAULT_FIGURES:
                raise ConfigError(f"unknown figure {name!r}; expected one of: "
                                  f"{', '.join(DEFAULT_FIGURES)}", key="figures")
            kind, opts = DEFAULT_FIGURES[name]
            out[name] = {"kind": kind, **opts}
        return out
    if not isinstance(pick, Mapping):
        raise ConfigError(f"expected a list of figure names or a mapping name: kind, got "
                          f"{type(pick).__name__}", key="figures")
    out = {}
    for name, spec in pick.items():
        key = f"figures.{name}"
        if not FIGURE_NAME_RE.fullmatch(str(name)):
            raise ConfigError("expected a name of letters, digits, '_' or '-'", key=key)
        spec = {"kind": spec} if isinstance(spec, str) else dict(spec or {})
        kind = spec.get("kind")
        if kind not in FIGURE_KINDS:
            raise ConfigError(f"unknown figure kind {kind!r}; expected one of: "
                              f"{', '.join(FIGURE_KINDS)}", key=f"{key}.kind")
        out[str(name)] = spec
    return out
