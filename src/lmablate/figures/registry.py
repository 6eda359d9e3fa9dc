"""Every kind of figure, in one table: what it shows, its report caption, where the report files
it, which runs support it, whether it needs the whole sweep, and the function that draws it.

A kind is one :class:`FigureKind` row of :data:`FIGURE_KINDS`. Adding a kind touches two files:
its draw function in a family module (curves, finals, sizes, sweeps, training, tasks) and its row
here, caption included; the workflow then plans it for the runs its ``applies`` accepts, draws it
in rule plot_study and files it in ``snakemake --report`` under that caption, which the results
page shows too (:func:`write_captions` writes the captions where the report reads them). The
Snakefile reads this table while it parses, so nothing here loads matplotlib or pandas: a row
names its draw function, which :func:`draw` imports when a figure is drawn.
"""

from __future__ import annotations

import atexit
import importlib
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
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

__all__ = ["FigureKind", "FIGURE_KINDS", "DEFAULT_FIGURES", "caption_text", "draw",
           "figure_caption", "figure_subcategory", "figure_summary", "phase1_only",
           "write_captions"]

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
    """One line on what it shows (RESULTS.md, the results page; the caption says more)."""
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
    train_split: tuple[str, str, str] | None = None
    """(caption name, summary, caption) of its figure of the training split (option
    ``split: train``)."""
    caption: str = field(kw_only=True)
    """How to read the figure, in reStructuredText: the report shows it under the figure, and
    the results page too."""

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
                     "next to the reference (mean and 95% CI over seeds).",
                     "Training loss (nats per token, the mean over the logging interval) against "
                     "training tokens. Each panel puts one group (a variant, or one point of the "
                     "grid) next to the reference group in dark grey. Thick lines are means over "
                     "seeds, thin lines the individual seeds, shaded bands 95% Student-t intervals "
                     "of the mean. The y-axis follows the data, not the intervals. Each panel's "
                     "box gives the difference in *final validation* loss from the reference with "
                     "its interval and test. Runs that diverged or stopped are dotted and end with "
                     "a red cross."),
        caption=("Validation loss (nats per token) against training tokens. Each panel puts one "
                 "group (a variant, or one point of the grid) next to the reference group in dark "
                 "grey. Thick lines are means over seeds, thin lines the individual seeds, shaded "
                 "bands 95% Student-t intervals of the mean. The y-axis follows the data, not the "
                 "intervals: with two or three seeds a band can be wider than the panel, which a "
                 "note under the figure then says. Each panel's box gives the final difference "
                 "from the reference with its interval and test. Runs that diverged or stopped are "
                 "dotted and end with a red cross. With many groups, one panel per value of a "
                 "sweep axis shows every group's mean curve coloured by parameter count.")),
    FigureKind(
        "final_metric", "finals.final_metric", ("runs", "baseline"),
        "Final metric per group, best first: mean with 95% CI over seeds, each seed a dot, the "
        "reference as a dashed line.", LOSS, _always,
        {"final_val_loss": {"metric": "val_loss"}, "final_val_ppl": {"metric": "val_ppl"}},
        caption=("The final validation loss (or perplexity) of each group, best first: the large "
                 "dot is the mean over seeds, small dots are the seeds, the whisker is the 95% "
                 "Student-t interval of the mean, and the dashed line is the reference group's "
                 "mean. The axis is scaled to the data; a whisker that leaves it ends in an arrow "
                 "head, and the full interval with n is printed at the right. Perplexity is "
                 "summarised as exp of the mean loss with exp of the loss interval (a log axis), "
                 "because a symmetric interval on perplexity itself runs below zero. Seeds that "
                 "diverged or stopped are named in red.")),
    FigureKind(
        "params_vs_loss", "sizes.params_vs_loss", ("runs", "baseline"),
        "Parameters against final validation loss (log x) with the Pareto frontier, coloured by "
        "a sweep axis.", SIZE, _sizes, {"params_vs_loss": {}},
        caption=("Parameters (log scale) against final validation loss: one large dot per group "
                 "(mean over seeds), small dots for the seeds, coloured by the sweep axis least "
                 "tied to size. The dashed step line is the Pareto frontier: the groups that no "
                 "smaller group beats, i.e. the configurations worth choosing at some parameter "
                 "budget. Runs that did not complete are red crosses on the top edge.")),
    FigureKind(
        "heatmap", "sweeps.heatmap", ("runs",),
        "Mean final validation loss over two sweep axes, facetted by a third.", AXES, _grid,
        {"heatmap": {}}, phase1_only=True,
        caption=("Mean final validation loss over two numeric sweep axes, one panel per value of a "
                 "third (brighter is better). Further axes are collapsed to their best group, as "
                 'the subtitle says; grey cells were not in the sweep and "diverged" marks cells '
                 "where every seed failed.")),
    FigureKind(
        "lr_sensitivity", "sweeps.lr_sensitivity", ("runs", "baseline"),
        "Final validation loss against the learning rate (log x), one line per configuration; "
        "diverged runs marked.", AXES, _lr_varies, {"lr_sensitivity": {}}, phase1_only=True,
        caption=("Final validation loss against the peak learning rate (log scale). Runs on one "
                 "line differ only in the learning rate; stars mark each line's best LR, dots are "
                 "seeds, whiskers 95% Student-t intervals (left out when many lines would hide "
                 "each other). Runs that diverged are crosses on the top edge, in their line's "
                 "colour. A configuration run at one LR is a diamond with its seeds and interval; "
                 "where no configuration has results at two LRs, a box in the panel says there is "
                 "no trend to show and why.")),
    FigureKind(
        "efficiency", "training.efficiency", ("runs", "baseline"),
        "Training throughput, peak memory and data efficiency (training-loss drop per million "
        "tokens; early- over late-phase drop rate) against model size.",
        "Efficiency and calibration", _native, {"efficiency": {}},
        caption=("Training throughput (tokens per second) and peak memory against model size, one "
                 "dot per run (per group when the study has fewer than three sizes). On a GPU peak "
                 "memory is the CUDA memory the training process allocated; on a CPU it is the "
                 "process's peak resident size, Python and torch included, so small models all "
                 "show about the same value. Data efficiency comes from each run's training-loss "
                 "curve: the loss drop from the first logged step to the end per million training "
                 "tokens, and the drop rate in the first 25% of tokens divided by that in the last "
                 "25% (how much faster the run learned early than late).")),
    FigureKind(
        "calibration", "finals.calibration", ("runs", "reliability", "baseline"),
        "Reliability diagram of the final evaluation: accuracy against confidence per bin, with "
        "the expected calibration error.", "Efficiency and calibration", _native,
        {"calibration": {}},
        caption=("Reliability diagram of the final evaluation: for the top-1 next-token "
                 "prediction, accuracy against confidence in equal-width confidence bins, seeds "
                 "pooled per group and weighted by tokens. The diagonal is perfect calibration; "
                 "points above it are under-confident. The lower panel shows the share of tokens "
                 "in each bin; the legend gives each group's expected calibration error (ECE).")),
    FigureKind(
        "moe_load", "training.moe_load", ("runs", "curves", "baseline"),
        "Mixture-of-experts routing: each expert's share of tokens over training, and the Gini "
        "coefficient and entropy of the load.", "Mixture of experts", _experts,
        {"moe_load": {}},
        caption=("Mixture-of-experts routing. Top: each expert's share of the routed training "
                 "tokens between evaluations, as log2 of share over the uniform share (red: busier "
                 "than uniform, blue: idle), for one seed per group, since expert identities "
                 "differ between seeds. Bottom: the Gini coefficient (0 = even load) and the "
                 "entropy (bits; the dashed line is the uniform maximum) of the load over "
                 "training, means over seeds with 95% bands and the seeds as thin lines.")),
    FigureKind(
        "tasks", "tasks.plot_tasks", ("runs", "baseline"),
        "Downstream task accuracy per group (seed dots, mean with 95% CI), with the chance "
        "line.", "Downstream tasks", None,
        caption=("Downstream accuracy of each group on every task of the study's ``eval_tasks`` "
                 "(one panel per task; ``<task>_ft`` panels are the fine-tuned results). The large "
                 "dot is the mean over seeds, small dots are the seeds, the whisker is the 95% "
                 "Student-t interval of the mean, the dashed red line is chance (a uniform guess "
                 "over the answers) and the dotted grey line, where it differs, the accuracy of "
                 "always giving the most frequent answer. Zero-shot accuracy picks the answer with "
                 "the highest log-likelihood, as lm-evaluation-harness does (its acc_norm is in "
                 "tasks.json); fine-tuned accuracy is that of a classification head trained on the "
                 "task's train split with a fixed budget and seed. The axis is scaled to the data; "
                 "a whisker that leaves it ends in an arrow head. Each run's numbers, with their "
                 "standard errors and n, are in ``results/<study>/runs/<run_id>/tasks.json``.")),
    FigureKind(
        "scaling_law", "sizes.scaling_law", ("runs", "fit"),
        "Final loss against parameters with the fitted scaling law L(N) = E + A/N^alpha (and "
        "L(N, D) when budgets vary), bootstrap bands.", SIZE, _sizes, {"scaling_law": {}},
        phase1_only=True,
        caption=("Scaling-law fit L(N) = E + A/N^alpha over the study's sizes (N: non-embedding "
                 "parameters), and L(N, D) = E + A/N^alpha + B/D^beta when token budgets vary. At "
                 "each size only the best group by mean loss is fitted (grey points: other "
                 "settings at that size). Parameters are fitted as in Hoffmann et al. (2022) and "
                 "the Besiroglu et al. (2024) replication: Huber loss (delta 1e-3) on log loss, "
                 "many starting points; bracketed ranges and the grey band are 95% bootstrap "
                 "intervals over runs. Outside the fitted sizes the curve is an extrapolation.")),
    FigureKind(
        "metric_vs_axis", "sweeps.metric_vs_axis", ("runs", "baseline"),
        "Final validation loss (perplexity on the right axis) against each swept numeric axis "
        "and derived ratio such as d_ff/d_model: mean with 95% CI over seeds per configuration, "
        "the best at each value joined.", AXES, _swept_axes, {"loss_vs_axis": {}},
        phase1_only=True,
        caption=("Final validation loss against each swept numeric axis, one panel per axis, and "
                 "against derived ratios such as d_ff/d_model or d_model/n_layers when their "
                 "numerator is swept (perplexity, the exponential of the loss, on the right axis). "
                 "Where each value is one configuration (a one-axis sweep, as the embedding share "
                 "and the GLU expansion of a parameter-allocation study), the dots joined are "
                 "means over seeds with 95% Student-t whiskers, the small dots the seeds and the "
                 "star the best value; a run at the centre that two one-axis sweeps share is on "
                 "both panels. Where many configurations share a value (a grid), grey dots are "
                 "each configuration's mean, the blue line the best configuration at each value "
                 "and the dashed line the median. The dotted line is the reference; red crosses on "
                 "the top edge are runs that did not complete. A panel where only one value of its "
                 "axis has a result says so in a box: no trend to show.")),
    FigureKind(
        "pareto", "sizes.pareto", ("runs", "baseline"),
        "Compute against final validation loss (training FLOPs per token; parameters or latency "
        "as options) with the Pareto frontier drawn and its points labelled.", SIZE,
        _compute_levels, {"pareto": {}}, phase1_only=True,
        caption=("Compute against quality: training FLOPs per token (forward and backward, "
                 "Kaplan's 6N plus the output head and attention; total parameters for runs "
                 "without a FLOP count) against final validation loss, one dot per configuration "
                 "(mean over seeds), seeds faint. The green points and dashed step line are the "
                 "Pareto frontier, the configurations that no cheaper one beats, numbered cheapest "
                 "first and listed at the right with their cost, loss, 95% interval and seed "
                 "count. A study's ``figures:`` can draw it against parameters, latency or memory "
                 "instead (``{kind: pareto, x: latency_ms_seq128}``).")),
    FigureKind(
        "best_per_size", "sizes.best_per_size", ("runs", "curves", "baseline"),
        "The configuration with the lowest validation loss after N training tokens in each "
        "parameter-count bucket (1-2.5-5 series), among the rest.", SIZE, _sizes_to_choose,
        {"best_per_size": {}}, phase1_only=True,
        caption=("The configuration to pick at each model size, as a shape sweep picks its "
                 "5M/10M/15M/25M/50M models: configurations are grouped into parameter-count "
                 "buckets (1-2.5-5 series) and compared at the furthest point every run of the "
                 "bucket reached (N training tokens), so a run that trained longer gets no "
                 "advantage. Grey dots are each configuration's mean loss over seeds at N; the "
                 "green star is the lowest, named at the right with its size, loss, N and the "
                 "number of configurations.")),
]
FIGURE_KINDS = {k.name: k for k in _KINDS}
# default figure name -> (kind, options), in the order a study's figures are listed
DEFAULT_FIGURES = {name: (k.name, dict(opts)) for k in _KINDS for name, opts in k.defaults.items()}


def _train_split(spec: Mapping[str, Any]) -> tuple[str, str] | None:
    kind = FIGURE_KINDS.get(spec.get("kind", ""))
    return kind.train_split if kind and spec.get("split") == "train" else None


def figure_caption(spec: Mapping[str, Any]) -> str:
    """The name of a planned figure's report caption (:func:`caption_text`): its kind's, or the
    training-split one (loss curves of the train split)."""
    train = _train_split(spec)
    return train[0] if train else spec["kind"]


def _captions() -> dict[str, str]:
    """Caption name -> caption text: every kind's, and its training-split figure's."""
    out = {k.name: k.caption for k in FIGURE_KINDS.values()}
    out.update({k.train_split[0]: k.train_split[2] for k in FIGURE_KINDS.values()
                if k.train_split})
    return out


def caption_text(name: str) -> str:
    """The caption (reStructuredText) named ``name`` (:func:`figure_caption`)."""
    captions = _captions()
    if name not in captions:
        raise ValueError(f"no figure caption {name!r}")
    return captions[name] + "\n"


def write_captions(directory: str | Path | None = None) -> dict[str, str]:
    """Write every caption to ``<directory>/<name>.rst`` (``snakemake --report`` reads a caption
    from a file) and return name -> path. Without ``directory``: a private temporary folder,
    removed when the process exits, so a dry run leaves nothing in the workflow's folders."""
    if directory is None:
        directory = tempfile.mkdtemp(prefix="lmablate-captions-")
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in _captions():
        path = out / f"{name}.rst"
        path.write_text(caption_text(name))
        paths[name] = str(path)
    return paths


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
