"""Every kind of figure, in one table: what it shows, where the report files it, which runs
support it, whether it needs the whole sweep, and the function that draws it.

A kind is one :class:`FigureKind` row of :data:`FIGURE_KINDS`; its caption is
``report/<kind>.rst``. Adding a kind: its draw function in the family module (curves, finals,
sizes, sweeps, training, tasks), its row here, its caption. The Snakefile reads this table while
it parses, so nothing here loads matplotlib or pandas: a row names its draw function, which
:func:`draw` imports when a figure is drawn.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lmablate.figures.axes import (
    approx_flops_per_token,
    approx_params,
    config_key,
    figure_axes,
    heatmap_axes,
    row_params,
)
from lmablate.results.shape import present, size_bucket, size_levels, spans_sizes

__all__ = ["FigureKind", "FIGURE_KINDS", "DEFAULT_FIGURES", "draw", "figure_caption",
           "figure_subcategory", "figure_summary", "phase1_only"]

Rows = Sequence[Mapping[str, Any]]


@dataclass(frozen=True)
class FigureKind:
    """One kind of figure."""

    name: str
    draw: str
    """``module.function`` in lmablate.figures, imported only when a figure is drawn."""
    inputs: tuple[str, ...]
    """What the draw function takes before its options, in order: ``runs``, ``curves``,
    ``baseline``, ``reliability`` (calibration bins), ``fit`` (summary.json's scaling fit)."""
    summary: str
    """One line on what it shows (RESULTS.md, the results page; report/<name>.rst says more)."""
    subcategory: str
    """The report's section for it."""
    applies: Callable[[Rows], bool] | None
    """Whether a study's runs (:func:`lmablate.figures.plan.planned_rows`, or the harvested
    runs table) support it; None: planned from something else (the study's ``eval_tasks:``)."""
    defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """The default figures of this kind: name -> options."""
    phase1_only: bool = False
    """A figure over the whole sweep: a two-phase study draws it from phase 1, whose runs are
    every configuration, not from phase 2's few selected ones."""
    train_split: tuple[str, str] | None = None
    """(caption, summary) of its figure of the training split (option ``split: train``)."""

    def function(self) -> Callable[..., Any]:
        """The draw function (imports its module, and with it matplotlib)."""
        module, name = self.draw.rsplit(".", 1)
        return getattr(importlib.import_module(f"lmablate.figures.{module}"), name)


# --------------------------------------------------------------------------------------------------
# which runs support a kind


def _always(rows: Rows) -> bool:
    return True


def _sizes(rows: Rows) -> bool:
    """Three model sizes or more over a factor of two."""
    return spans_sizes(row_params(rows))


def _grid(rows: Rows) -> bool:
    """Two numeric sweep axes that form a grid."""
    return heatmap_axes(rows)[0] is not None


def _lr_varies(rows: Rows) -> bool:
    """Some configuration at two learning rates or more."""
    lrs: dict[str, set] = {}
    for r in rows:
        if present(r.get("train.lr")):
            key = config_key({k: v for k, v in r.items()
                              if k not in ("train.lr", "axis.train.lr", "variant")})
            lrs.setdefault(key, set()).add(r["train.lr"])
    return any(len(v) >= 2 for v in lrs.values())


def _native(rows: Rows) -> bool:
    """Some run trained by lmablate (imported runs have no throughput or calibration bins)."""
    return any(r.get("source", "lmablate") == "lmablate" for r in rows)


def _experts(rows: Rows) -> bool:
    return any((r.get("model.num_experts") or 0) > 0 for r in rows)


def _swept_axes(rows: Rows) -> bool:
    """A numeric sweep axis (or derived ratio) with two values or more."""
    return bool(figure_axes(rows))


def _compute_levels(rows: Rows) -> bool:
    """A sweep of three configurations or more, at two compute levels or more."""
    flops = {config_key(r): approx_flops_per_token(r) for r in rows}
    swept = bool(figure_axes(rows)) or spans_sizes(row_params(rows))
    return swept and len(flops) >= 3 and \
        len(size_levels([f for f in flops.values() if f], 0.05)) >= 2


def _sizes_to_choose(rows: Rows) -> bool:
    """Sizes to choose among, and a choice within one size."""
    params = [p for p in (approx_params(r) for r in rows) if p is not None]
    buckets = [size_bucket(p) for p in {config_key(r): approx_params(r) for r in rows}.values()
               if p]
    return spans_sizes(params) and len(buckets) > len(set(buckets))


# --------------------------------------------------------------------------------------------------
# the table (its order is the order of a study's default figures)

LOSS, SIZE, AXES = "Loss", "Model size and scaling", "Sweep axes"
_KINDS = [
    FigureKind(
        "loss_curves", "curves.loss_curves", ("runs", "curves", "baseline"),
        "Validation loss against training tokens, each group next to the reference (mean and "
        "95% CI over seeds).", LOSS, _always, {"loss_curves": {}},
        train_split=("loss_curves_train", "Training loss against training tokens, each group "
                     "next to the reference (mean and 95% CI over seeds).")),
    FigureKind(
        "final_metric", "finals.final_metric", ("runs", "baseline"),
        "Final metric per group, best first: mean with 95% CI over seeds, each seed a dot, the "
        "reference as a dashed line.", LOSS, _always,
        {"final_val_loss": {"metric": "val_loss"}, "final_val_ppl": {"metric": "val_ppl"}}),
    FigureKind(
        "params_vs_loss", "sizes.params_vs_loss", ("runs", "baseline"),
        "Parameters against final validation loss (log x) with the Pareto frontier, coloured by "
        "a sweep axis.", SIZE, _sizes, {"params_vs_loss": {}}),
    FigureKind(
        "heatmap", "sweeps.heatmap", ("runs",),
        "Mean final validation loss over two sweep axes, facetted by a third.", AXES, _grid,
        {"heatmap": {}}, phase1_only=True),
    FigureKind(
        "lr_sensitivity", "sweeps.lr_sensitivity", ("runs", "baseline"),
        "Final validation loss against the learning rate (log x), one line per configuration; "
        "diverged runs marked.", AXES, _lr_varies, {"lr_sensitivity": {}}, phase1_only=True),
    FigureKind(
        "efficiency", "training.efficiency", ("runs", "baseline"),
        "Training throughput, peak memory and data efficiency (training-loss drop per million "
        "tokens; early- over late-phase drop rate) against model size.",
        "Efficiency and calibration", _native, {"efficiency": {}}),
    FigureKind(
        "calibration", "finals.calibration", ("runs", "reliability", "baseline"),
        "Reliability diagram of the final evaluation: accuracy against confidence per bin, with "
        "the expected calibration error.", "Efficiency and calibration", _native,
        {"calibration": {}}),
    FigureKind(
        "moe_load", "training.moe_load", ("runs", "curves", "baseline"),
        "Mixture-of-experts routing: each expert's share of tokens over training, and the Gini "
        "coefficient and entropy of the load.", "Mixture of experts", _experts,
        {"moe_load": {}}),
    FigureKind(
        "tasks", "tasks.plot_tasks", ("runs", "baseline"),
        "Downstream task accuracy per group (seed dots, mean with 95% CI), with the chance "
        "line.", "Downstream tasks", None),
    FigureKind(
        "scaling_law", "sizes.scaling_law", ("runs", "fit"),
        "Final loss against parameters with the fitted scaling law L(N) = E + A/N^alpha (and "
        "L(N, D) when budgets vary), bootstrap bands.", SIZE, _sizes, {"scaling_law": {}},
        phase1_only=True),
    FigureKind(
        "metric_vs_axis", "sweeps.metric_vs_axis", ("runs", "baseline"),
        "Final validation loss (perplexity on the right axis) against each swept numeric axis "
        "and derived ratio such as d_ff/d_model: mean with 95% CI over seeds per configuration, "
        "the best at each value joined.", AXES, _swept_axes, {"loss_vs_axis": {}},
        phase1_only=True),
    FigureKind(
        "pareto", "sizes.pareto", ("runs", "baseline"),
        "Compute against final validation loss (training FLOPs per token; parameters or latency "
        "as options) with the Pareto frontier drawn and its points labelled.", SIZE,
        _compute_levels, {"pareto": {}}, phase1_only=True),
    FigureKind(
        "best_per_size", "sizes.best_per_size", ("runs", "curves", "baseline"),
        "The configuration with the lowest validation loss after N training tokens in each "
        "parameter-count bucket (1-2.5-5 series), among the rest.", SIZE, _sizes_to_choose,
        {"best_per_size": {}}, phase1_only=True),
]
FIGURE_KINDS = {k.name: k for k in _KINDS}
# default figure name -> (kind, options), in the order a study's figures are listed
DEFAULT_FIGURES = {name: (k.name, dict(opts)) for k in _KINDS for name, opts in k.defaults.items()}


def _train_split(spec: Mapping[str, Any]) -> tuple[str, str] | None:
    kind = FIGURE_KINDS.get(spec.get("kind", ""))
    return kind.train_split if kind and spec.get("split") == "train" else None


def figure_caption(spec: Mapping[str, Any]) -> str:
    """The report caption of a planned figure (``report/<caption>.rst``): its kind's, or the
    training-split one (loss curves of the train split)."""
    train = _train_split(spec)
    return train[0] if train else spec["kind"]


def figure_summary(spec: Mapping[str, Any]) -> str:
    """One line on what a planned figure shows (RESULTS.md, the results page): its kind's
    summary, for the training split its training-split one; "" for an unknown kind."""
    train = _train_split(spec)
    if train:
        return train[1]
    kind = FIGURE_KINDS.get(spec.get("kind", ""))
    return kind.summary if kind else ""


def figure_subcategory(spec: Mapping[str, Any]) -> str:
    """The report section of a planned figure."""
    return FIGURE_KINDS[spec["kind"]].subcategory


def phase1_only(spec: Mapping[str, Any]) -> bool:
    """Whether a planned figure needs the whole sweep (a two-phase study draws it from
    phase 1)."""
    return FIGURE_KINDS[spec["kind"]].phase1_only


def draw(kind: str, runs: Any, curves: Any, *, baseline: str = "baseline",
         reliability: Any = None, summary: Mapping[str, Any] | None = None,
         title: str | None = None, **options: Any) -> Any:
    """The figure of ``kind`` (a key of :data:`FIGURE_KINDS`) from the harvested tables: runs,
    curves, the calibration bins (reliability.parquet) and summary.json (its scaling fit)."""
    if kind not in FIGURE_KINDS:
        raise ValueError(f"unknown figure kind {kind!r}")
    spec = FIGURE_KINDS[kind]
    if reliability is None and "reliability" in spec.inputs:
        import pandas as pd

        reliability = pd.DataFrame(
            columns=["run_id", "group", "bin", "confidence", "accuracy", "count"])
    data = {"runs": runs, "curves": curves, "baseline": baseline, "reliability": reliability,
            "fit": summary.get("scaling") if summary is not None else None}
    return spec.function()(*(data[name] for name in spec.inputs), title=title, **options)
