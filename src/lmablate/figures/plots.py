"""Figures from harvested tables (seaborn, one style).

Every function takes the DataFrames :func:`lmablate.load_results` returns (plus the reliability
table for calibration) and returns a matplotlib Figure, so a notebook can redraw or extend any
figure of a study. :func:`draw` maps a figure kind of :func:`lmablate.figures.plan.plan_figures`
to
its function.

Honest intervals: with two seeds the 95% t-interval of a mean is +-12.7 standard errors, far
wider than the spread of the data. Axes are therefore scaled to the data (seeds and means), never
to the intervals; a whisker or band that leaves the axes is clipped and marked (an arrow at the
edge, a note in the panel), and the full interval is printed beside it with n.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

if "ipykernel" not in sys.modules and "MPLBACKEND" not in os.environ:
    matplotlib.use("Agg")  # files only; a notebook keeps its inline backend
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib import ticker  # noqa: E402
from matplotlib.colors import LogNorm, Normalize, TwoSlopeNorm  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402

from lmablate.figures.plan import numeric_axes
from lmablate.results.harvest import (
    INCLUDED_STATUSES,
    PRIMARY,
    progress_column,
    reference_group,
)
from lmablate.results.shape import spans_sizes
from lmablate.results.stats import pareto_front, summarize
from lmablate.units import fmt_count, fmt_tokens

__all__ = ["style", "loss_curves", "final_metric", "params_vs_loss", "heatmap",
           "lr_sensitivity", "lr_finder", "efficiency", "calibration", "moe_load", "scaling_law",
           "metric_vs_axis", "pareto", "best_per_size", "draw", "save", "remove_stale",
           "group_palette",
           "REFERENCE_COLOR", "DIVERGED_COLOR", "SELECTED_COLOR"]

REFERENCE_COLOR = "#3a3a3a"
DIVERGED_COLOR = "#c0392b"
SELECTED_COLOR = "#1e8449"
METRIC_LABELS = {
    "loss": "validation loss (nats/token)", "val_loss": "final validation loss (nats/token)",
    "best_val_loss": "best validation loss (nats/token)",
    "val_ppl": "final validation perplexity (exp of nats/token)",
    "val_acc": "next-token accuracy, top-1 (fraction)",
    "val_top5": "next-token accuracy, top-5 (fraction)",
    "val_ece": "expected calibration error (fraction)",
    "tokens_per_s": "training throughput (tokens/s)", "peak_mem_mb": "peak memory (MiB)",
    "loss_drop_per_mtok": "training-loss drop per million tokens (nats)",
    "early_late_ratio": "loss drop rate, first 25% of tokens / last 25%",
}
HIGHER_IS_BETTER = {"val_acc", "val_top5", "tokens_per_s"}
BAND_NOTE = ("thick line: mean over seeds; thin lines: individual seeds; band: 95% Student-t "
             "interval of the mean")


# --------------------------------------------------------------------------------------------------
# style and shared helpers


def style() -> None:
    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.9)
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 150, "axes.titleweight": "bold",
                         "axes.titlesize": 11, "figure.titlesize": 13,
                         "figure.titleweight": "bold", "axes.spines.top": False,
                         "axes.spines.right": False, "legend.fontsize": 8,
                         "legend.framealpha": 0.9})


def _ok(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs.status.isin(INCLUDED_STATUSES)]


def _order(runs: pd.DataFrame, metric: str = PRIMARY, higher: bool = False) -> list[str]:
    """Groups best first by mean ``metric``; groups without a value (all seeds failed) last."""
    ok = _ok(runs)
    if metric in ok and ok[metric].notna().any():
        means = ok.groupby("group", observed=True)[metric].mean().dropna()
        order = list(means.sort_values(ascending=not higher).index)
    else:
        order = []
    return order + [g for g in dict.fromkeys(runs.group) if g not in order]


def group_palette(groups: Sequence[str], reference: str | None) -> dict[str, Any]:
    """One colour per group, the reference always dark grey; colourblind-safe up to 10. Colours
    follow the study's group order (pass ``runs.group``), so a group keeps its colour in every
    figure whatever the ranking."""
    groups = list(dict.fromkeys(groups))
    others = [g for g in groups if g != reference]
    base = sns.color_palette("colorblind", 10)
    colors = base if len(others) <= 10 else sns.color_palette("husl", len(others))
    pal = {g: colors[i % len(colors)] for i, g in enumerate(others)}
    if reference is not None:
        pal[reference] = REFERENCE_COLOR
    return pal


def _finish(fig: plt.Figure, title: str, subtitle: str | None = None,
            notes: Sequence[str] = ()) -> plt.Figure:
    """Title and subtitle above the axes, notes below them.

    Figures use constrained layout; these texts sit outside the figure box and ``save`` (like a
    notebook's inline backend) crops with ``bbox_inches="tight"``, which takes them in, so a
    long note never overlaps a tick label and nothing is clipped.
    """
    import textwrap

    h, w = fig.get_figheight(), fig.get_figwidth()
    y = 1 + 0.06 / h
    if subtitle:
        for line in reversed(textwrap.wrap(subtitle, int(w * 14))):
            fig.text(0.01, y, line, ha="left", va="bottom", fontsize=9, color="#555555")
            y += 0.19 / h
    fig.text(0.01, y + 0.02 / h, title, ha="left", va="bottom", fontsize=13,
             fontweight="bold")
    y = -0.04 / h
    for note in notes:
        for line in textwrap.wrap(note, int(w * 15)):
            fig.text(0.01, y, line, ha="left", va="top", fontsize=8, color="#555555")
            y -= 0.16 / h
    return fig


def _subplots(*args: Any, **kwargs: Any) -> tuple[plt.Figure, Any]:
    return plt.subplots(*args, layout="constrained", **kwargs)


def _value_colors(values: Sequence[float]) -> tuple[dict[Any, Any], Any]:
    """A colour per distinct value of a sweep axis: discrete viridis steps for up to 8 values
    (shown in a legend), else a continuous map (log-scaled over a 10x range) for a colourbar."""
    vals = sorted(set(values))
    if len(vals) <= 8:
        cols = sns.color_palette("viridis", len(vals))
        return {v: cols[i] for i, v in enumerate(vals)}, None
    lo, hi = min(vals), max(vals)
    norm = LogNorm(lo, hi) if lo > 0 and hi / lo >= 10 else Normalize(lo, hi)
    cmap = plt.get_cmap("viridis")
    return {v: cmap(norm(v)) for v in vals}, plt.cm.ScalarMappable(norm=norm, cmap=cmap)


def _axis_legend(fig: plt.Figure, ax: plt.Axes, name: str, colors: Mapping[Any, Any],
                 mappable: Any, marker: str = "o") -> None:
    """Legend entries ``name = value`` for discrete colours, or a labelled colourbar."""
    if mappable is None:
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color=c, marker=marker, ls="", label=f"{name} = {v:g}")
                   for v, c in colors.items()]
        ax.add_artist(ax.legend(handles=handles, loc="lower left", title=name,
                                fontsize=8, title_fontsize=8))
    else:
        cb = fig.colorbar(mappable, ax=ax, pad=0.01)
        cb.set_label(name)
        if isinstance(mappable.norm, LogNorm):
            _log_ticks(cb.ax.yaxis)


def _axis_name(col: str) -> str:
    return col.replace("axis.", "").rsplit(".", 1)[-1]


def _palette_for(runs: pd.DataFrame, shown: Sequence[str], ref: str | None) -> dict[str, Any]:
    """The study-wide palette when the study has at most 10 groups (a group keeps its colour in
    every figure); else distinct colours for the groups this figure shows."""
    if runs.group.nunique() <= 10:
        return group_palette(runs.group, ref)
    return group_palette(list(shown), ref)


def _empty(title: str, message: str) -> plt.Figure:
    """A figure that says why it has nothing to show (a planned figure is never missing)."""
    style()
    fig, ax = _subplots(figsize=(7, 2.6))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, fontsize=10,
            transform=ax.transAxes)
    return _finish(fig, title)


def _data_limits(values: Sequence[float], pad: float = 0.08, log: bool = False
                 ) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if log:
        v = v[v > 0]
        lo, hi = np.log10(v.min()), np.log10(v.max())
        span = max(hi - lo, 0.05)
        return 10 ** (lo - pad * span), 10 ** (hi + pad * span)
    lo, hi = float(v.min()), float(v.max())
    span = hi - lo or max(abs(hi) * 0.02, 1e-6)
    return lo - pad * span, hi + pad * span


def _limits_with_intervals(values: Sequence[float], bounds: Sequence[float], *,
                           log: bool = False, max_stretch: float = 3.0) -> tuple[float, float]:
    """Axis limits that show the data, and the intervals too when that at most triples the
    span; wider intervals are clipped (and marked) rather than squeezing the data flat."""
    lo, hi = _data_limits(values, pad=0.12, log=log)
    ok = [b for b in bounds if np.isfinite(b) and (b > 0 or not log)]
    if not ok:
        return lo, hi
    f = np.log10 if log else (lambda v: v)
    lo2, hi2 = min([lo, *ok]), max([hi, *ok])
    if f(hi2) - f(lo2) <= max_stretch * (f(hi) - f(lo)):
        return _data_limits([lo2, hi2], pad=0.04, log=log)
    return lo, hi


def _x_label(x: str) -> str:
    return "training tokens" if x == "tokens" else "optimizer steps"


def _eng(ax_axis: Any) -> None:
    ax_axis.set_major_formatter(ticker.EngFormatter(sep=""))


def _log_ticks(ax_axis: Any, eng: bool = True) -> None:
    """1-2-5 ticks on a log axis, labelled 10k/20k/50k (``eng``) or 0.001/0.002/0.005: a sweep
    over one or two decades otherwise shows a single labelled tick."""
    ax_axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax_axis.set_major_formatter(ticker.EngFormatter(sep="") if eng else
                                ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax_axis.set_minor_formatter(ticker.NullFormatter())


def _num(x: float) -> str:
    return f"{x:.4g}" if abs(x) >= 1e4 or (x != 0 and abs(x) < 1e-3) else f"{x:.3f}"


def _ci_text(s: Any) -> str:
    if s.n < 2:
        return f"{_num(s.mean)}  (n=1, no interval)"
    return f"{_num(s.mean)} [{_num(s.ci_low)}, {_num(s.ci_high)}]  n={s.n}"


def _whisker(ax: plt.Axes, center: float, lo: float, hi: float, pos: float, color: Any,
             horizontal: bool = True) -> bool:
    """A CI whisker clipped to the axes; an arrow head marks each clipped end. True if clipped."""
    (a0, a1) = ax.get_xlim() if horizontal else ax.get_ylim()
    c_lo, c_hi = max(lo, min(a0, a1)), min(hi, max(a0, a1))
    clipped = False
    if horizontal:
        ax.plot([c_lo, c_hi], [pos, pos], color=color, lw=2, solid_capstyle="butt", zorder=2)
    else:
        ax.plot([pos, pos], [c_lo, c_hi], color=color, lw=2, solid_capstyle="butt", zorder=2)
    for end, clip, marker in ((lo, c_lo, "<" if horizontal else "v"),
                              (hi, c_hi, ">" if horizontal else "^")):
        if end != clip:
            clipped = True
            xy = (clip, pos) if horizontal else (pos, clip)
            ax.plot(*xy, marker=marker, color=color, ms=8, clip_on=False, zorder=3)
        else:
            xy = (end, pos) if horizontal else (pos, end)
            ax.plot(*xy, marker="|" if horizontal else "_", color=color, ms=9, mew=2, zorder=3)
    return clipped


# --------------------------------------------------------------------------------------------------
# loss curves


def _curve_band(c: pd.DataFrame, x: str) -> pd.DataFrame:
    """Mean and 95% t-interval over seeds at each x."""
    rows = []
    for xv, g in c.groupby(x):
        s = summarize(g.value.tolist())
        if s is not None:
            rows.append({x: xv, "mean": s.mean, "lo": s.ci_low, "hi": s.ci_high, "n": s.n})
    return pd.DataFrame(rows, columns=[x, "mean", "lo", "hi", "n"])


def loss_curves(runs: pd.DataFrame, curves: pd.DataFrame, baseline: str = "baseline", *,
                split: str = "val", metric: str = "loss", log_x: bool | None = None,
                title: str | None = None, max_panels: int = 12) -> plt.Figure:
    """Each group's curve next to the reference's, mean +- 95% CI band over seeds.

    Up to ``max_panels`` groups: one panel per group. More: one panel with every group's mean
    curve coloured by parameter count. Diverged runs are dotted and end with a cross.
    ``log_x`` None: logarithmic when the curves span two decades of tokens.
    """
    style()
    ref, _ = reference_group(runs, baseline)
    x = progress_column(curves)
    c = curves[(curves.split == split) & (curves.metric == metric)]
    c = c[np.isfinite(c.value)]
    if not len(c):
        return _empty(title or "Loss curves", f"No {split} {metric} points were logged.")
    status = runs.set_index("run_id").status
    c = c.assign(status=c.run_id.map(status).astype(str))
    good = c[c.status.isin(INCLUDED_STATUSES)]
    if log_x is None:
        pos = c[x][c[x] > 0]
        log_x = len(pos) > 0 and pos.max() / pos.min() >= 100
    ylo, yhi = _data_limits(good.value.tolist() or c.value.tolist(), pad=0.04)
    if len(good) > 20:
        yhi = min(yhi, float(np.quantile(good.value, 0.98)) + 0.04 * (yhi - ylo))
    order = _order(runs)
    others = [g for g in order if g != ref] or order
    metric_label = METRIC_LABELS.get(metric, metric) if split == "val" else \
        f"training {metric}" + (" (nats/token)" if metric == "loss" else "")
    if len(others) > max_panels:
        return _curves_overview(runs, c, ref, x, log_x, (ylo, yhi), metric_label, title)

    pal = group_palette(runs.group, ref)
    ncols = min(3, len(others))
    nrows = math.ceil(len(others) / ncols)
    fig, axes = _subplots(nrows, ncols, figsize=(4.8 * ncols, 3.5 * nrows + 0.9),
                             sharex=True, sharey=True, squeeze=False)
    clipped_any = False
    for ax, group in zip(axes.flat, others):
        ax.set_ylim(ylo, yhi)
        for g in ([ref] if ref is not None and group != ref else []) + [group]:
            gc = c[c.group == g]
            ok = gc[gc.status.isin(INCLUDED_STATUSES)]
            n = ok.run_id.nunique()
            band = _curve_band(ok, x)
            if len(band):
                ax.plot(band[x], band["mean"], color=pal[g], lw=2.2, label=f"{g} (n={n})",
                        zorder=3)
                for _, s in ok.groupby("run_id", observed=True):
                    ax.plot(s[x], s.value, color=pal[g], lw=0.8, alpha=0.45, zorder=2)
                if n > 1:
                    ax.fill_between(band[x], band.lo, band.hi, color=pal[g], alpha=0.09, lw=0,
                                    zorder=1)
                    for edge in ("lo", "hi"):
                        ax.plot(band[x], band[edge], color=pal[g], lw=0.6, ls="--", alpha=0.6,
                                zorder=1)
                    if (band.lo < ylo).any() or (band.hi > yhi).any():
                        clipped_any = True
            for rid, s in gc[~gc.status.isin(INCLUDED_STATUSES)].groupby("run_id",
                                                                         observed=True):
                if not len(s):
                    continue
                s = s.sort_values(x)
                v = s.value.clip(upper=yhi)
                ax.plot(s[x], v, color=pal[g], ls=":", lw=1.5,
                        label=f"{g}: seed {s.seed.iloc[0]} {status[rid]}")
                ax.plot(s[x].iloc[-1], v.iloc[-1], "x", color=DIVERGED_COLOR, ms=9, mew=2.2,
                        zorder=4, clip_on=False)
        ax.set_title(group)
        if not (c.group == group).any():
            ax.text(0.5, 0.5, _no_curve_text(runs[runs.group == group]), transform=ax.transAxes,
                    ha="center", va="center", fontsize=8.5, color=DIVERGED_COLOR, wrap=True,
                    bbox={"boxstyle": "round", "fc": "white", "ec": DIVERGED_COLOR})
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right")
        delta = _final_delta(runs, group, ref)
        if delta:
            ax.text(0.02, 0.03, delta, transform=ax.transAxes, fontsize=7.5, va="bottom",
                    bbox={"boxstyle": "round,pad=0.25", "fc": "white", "ec": "#cccccc",
                          "alpha": 0.9})
        if log_x:
            ax.set_xscale("log")
    for ax in axes.flat[len(others):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel(_x_label(x) + (" (log scale)" if log_x else ""))
        if log_x:
            _log_ticks(ax.xaxis)
        else:
            _eng(ax.xaxis)
    for ax in axes[:, 0]:
        ax.set_ylabel(metric_label)
    notes = []
    if clipped_any:
        ns = sorted({int(v) for v in _ok(runs).groupby('group', observed=True).size()})
        notes.append("Some 95% bands extend beyond the axes (the y-axis follows the data, not the "
                     f"intervals): with n = {', '.join(map(str, ns))} seeds per group the "
                     "t-interval is very wide. The numbers are in analysis.txt.")
    return _finish(fig, title or f"{'Validation' if split == 'val' else 'Training'} {metric} per "
                   f"group vs {ref or 'each other'}", BAND_NOTE, notes)


def _no_curve_text(sel: pd.DataFrame) -> str:
    """Why a group's panel has no curve: its runs ended before their first evaluation."""
    parts = []
    for r in sel.itertuples(index=False):
        step = getattr(r, "diverged_at_step", None)
        at = f" at step {int(step)}" if step is not None and np.isfinite(step) else ""
        parts.append(f"seed {r.seed} {r.status}{at}")
    return "No validation point: " + "; ".join(parts) + ",\nbefore the first evaluation."


def _final_delta(runs: pd.DataFrame, group: str, ref: str | None) -> str | None:
    """'final: delta +0.102 [+0.094, +0.110], p = 0.004 (paired t)' for a panel."""
    from lmablate.results.stats import compare

    ok = _ok(runs)
    if ref is None or group == ref or PRIMARY not in ok:
        return None
    g, b = ok[ok.group == group], ok[ok.group == ref]
    if not len(g) or not len(b):
        return None
    c = compare(g[PRIMARY].tolist(), b[PRIMARY].tolist(), g.seed.tolist(), b.seed.tolist())
    if not np.isfinite(c.delta):
        return None
    txt = f"final val loss: delta {c.delta:+.3f}"
    if np.isfinite(c.ci_low):
        txt += f" [{c.ci_low:+.3f}, {c.ci_high:+.3f}]"
    if c.p_value is not None:
        txt += f", p = {c.p_value:.2g} ({c.test})"
    return txt


def _curves_overview(runs: pd.DataFrame, c: pd.DataFrame, ref: str | None, x: str, log_x: bool,
                     ylim: tuple[float, float], metric_label: str, title: str | None
                     ) -> plt.Figure:
    """Many groups: one panel per value of the sweep axis least tied to size (e.g. the LR),
    every group's mean curve coloured by its parameter count."""
    ok = _ok(runs)
    params = ok.groupby("group", observed=True).params_total.mean() \
        if "params_total" in ok else pd.Series(dtype=float)
    norm = LogNorm(params.min(), params.max()) if len(params) and params.min() > 0 and \
        params.max() > params.min() else None
    cmap = plt.get_cmap("viridis")
    facet = _color_axis(runs)
    if facet is not None and not (2 <= runs[facet].nunique() <= 6):
        facet = None
    first = runs.groupby("group", observed=True)[facet].first() if facet else None
    values = sorted(runs[facet].dropna().unique()) if facet else [None]
    ncols = 2 if len(values) == 4 else min(3, len(values))
    nrows = math.ceil(len(values) / ncols)
    fig, axes = _subplots(nrows, ncols, figsize=(5.2 * ncols + 1.2, 4.0 * nrows + 0.6),
                          sharex=True, sharey=True, squeeze=False)
    good = c[c.status.isin(INCLUDED_STATUSES)]
    bad = c[~c.status.isin(INCLUDED_STATUSES)]
    for ax, v in zip(axes.flat, values):
        in_panel = set(first[first == v].index) if facet else set(runs.group)
        for g, gc in good[good.group.isin(in_panel)].groupby("group", observed=True):
            band = _curve_band(gc, x)
            color = cmap(norm(params[g])) if norm is not None and g in params else "#888888"
            ax.plot(band[x], band["mean"], color=color, lw=1.2, alpha=0.9,
                    zorder=3 if g != ref else 4)
        if ref is not None and ref in in_panel:
            band = _curve_band(good[good.group == ref], x)
            ax.plot(band[x], band["mean"], color="black", lw=2.4, label=f"{ref} (reference)",
                    zorder=5)
        for i, (_rid, s) in enumerate(bad[bad.group.isin(in_panel)].groupby("run_id",
                                                                             observed=True)):
            if not len(s):
                continue
            s = s.sort_values(x)
            ax.plot(s[x], s.value.clip(upper=ylim[1]), ls=":", color=DIVERGED_COLOR, lw=1.2,
                    label="did not complete" if i == 0 else None)
            ax.plot(s[x].iloc[-1], min(s.value.iloc[-1], ylim[1]), "x", color=DIVERGED_COLOR,
                    ms=8, mew=2, clip_on=False)
        ax.set_ylim(*ylim)
        if log_x:
            ax.set_xscale("log")
        if log_x:
            _log_ticks(ax.xaxis)
        else:
            _eng(ax.xaxis)
        if facet:
            ax.set_title(f"{_axis_name(facet)} = {v:g}")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right")
    for ax in axes.flat[len(values):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel(_x_label(x) + (" (log scale)" if log_x else ""))
    for ax in axes[:, 0]:
        ax.set_ylabel(metric_label)
    if norm is not None:
        cb = fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes, shrink=0.9)
        cb.set_label("total parameters (log scale)")
        _log_ticks(cb.ax.yaxis)
    return _finish(fig, title or f"Validation curves of all {c.group.nunique()} groups",
                   "mean over seeds per group, coloured by parameter count"
                   + (f"; one panel per {_axis_name(facet)}" if facet else ""))


# --------------------------------------------------------------------------------------------------
# final metric per group


def final_metric(runs: pd.DataFrame, baseline: str = "baseline", metric: str = "val_loss", *,
                 geometric: bool | None = None, title: str | None = None,
                 max_groups: int = 40, selected: Sequence[str] = (),
                 higher: bool | None = None) -> plt.Figure:
    """Final ``metric`` per group, best first: mean with its 95% t-interval over seeds, each seed
    a dot, the reference mean a dashed line; the interval and n printed at the right. Groups
    whose seeds did not all complete say so in red.

    ``geometric`` (default for perplexity): summarise log values and transform back, i.e. the
    geometric mean exp(mean loss) with exp of the loss's t-interval, on a log axis; a symmetric
    interval on perplexity itself would run below zero. ``selected``: run IDs drawn as stars,
    their groups' labels in green (a two-phase study's phase-1 ranking: the runs phase 2 trains).
    ``higher``: whether higher is better (default: known metrics such as accuracy).
    """
    style()
    geometric = metric == "val_ppl" if geometric is None else geometric
    higher = metric in HIGHER_IS_BETTER if higher is None else higher
    ref, _ = reference_group(runs, baseline)
    ok = _ok(runs)
    ok = ok[ok[metric].notna()] if metric in ok else ok.iloc[0:0]
    order = _order(runs, metric, higher)
    hidden = max(0, len(order) - max_groups)
    order = order[:max_groups]
    label = METRIC_LABELS.get(metric, metric)
    if not len(ok):
        return _empty(title or label.capitalize(), f"No run has a final {metric}.")
    pal = group_palette(runs.group, ref)
    starred = ok[ok.run_id.isin(list(selected))]  # the selected runs (stars), once
    fig, ax = _subplots(figsize=(10, 0.42 * len(order) + 2.2))
    stats = {g: _summary(ok[ok.group == g][metric].tolist(), geometric) for g in order}
    values = ok[ok.group.isin(order)][metric].tolist()
    if geometric:
        ax.set_xscale("log")
    bounds = [v for st_ in stats.values() if st_ is not None and st_.n > 1
              for v in (st_.ci_low, st_.ci_high)]
    ax.set_xlim(*_limits_with_intervals(values, bounds, log=geometric))
    lo, hi = ax.get_xlim()
    if geometric and hi / lo < 10:  # within a decade matplotlib labels minor ticks "4.4 x 10^1"
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.set_ylim(len(order) - 0.5, -0.5)
    trans = blended_transform_factory(ax.transAxes, ax.transData)
    clipped = False
    bad = runs[~runs.status.isin(INCLUDED_STATUSES)]
    for i, g in enumerate(order):
        s = stats[g]
        nb = bad[bad.group == g]
        fail = (f"  +{len(nb)} {'/'.join(sorted(set(nb.status)))}" if len(nb) else "")
        if s is not None:
            if s.n > 1:
                clipped |= _whisker(ax, s.mean, s.ci_low, s.ci_high, i, pal[g])
            ax.plot(s.mean, i, "o", color=pal[g], ms=8, zorder=4, mec="white", mew=0.8)
            vals = ok[ok.group == g][metric].tolist()
            ax.scatter(vals, [i] * len(vals), color=pal[g], s=16, alpha=0.75, zorder=5,
                       edgecolor="black", lw=0.4)
            chosen = starred[starred.group == g][metric].tolist()
            if chosen:
                ax.scatter(chosen, [i] * len(chosen), marker="*", s=170, color=pal[g], zorder=6,
                           edgecolor=SELECTED_COLOR, lw=1.3)
            ax.text(1.04, i, _ci_text(s), transform=trans, va="center", fontsize=8)
            if fail:
                ax.text(1.04, i + 0.32, fail.strip(), transform=trans, va="center", fontsize=7.5,
                        color=DIVERGED_COLOR)
        else:
            ax.text(0.5, i, f"all {len(nb)} seed(s) {'/'.join(sorted(set(nb.status)))}: "
                    "no final value", transform=trans, ha="center", va="center", fontsize=8.5,
                    color=DIVERGED_COLOR)
    if ref is not None and stats.get(ref) is not None:
        ax.axvline(stats[ref].mean, color=REFERENCE_COLOR, ls="--", lw=1, zorder=1)
        ax.annotate("reference mean", (stats[ref].mean, -0.5), xytext=(0, 3),
                    textcoords="offset points", ha="center", va="bottom", fontsize=7.5,
                    color=REFERENCE_COLOR, annotation_clip=False)
    ax.set_yticks(range(len(order)), order)
    chosen_groups = set(starred.group)
    for t in ax.get_yticklabels():
        if t.get_text() == ref or t.get_text() in chosen_groups:
            t.set_fontweight("bold")
        if t.get_text() in chosen_groups:
            t.set_color(SELECTED_COLOR)
    ax.set_xlabel(label + ("; higher is better" if higher else "; lower is better")
                  + ("; log scale" if geometric else ""))
    ax.text(1.04, -0.5, "mean [95% CI]  n", transform=trans, va="bottom", fontsize=8,
            fontweight="bold")
    name = label.split(" (")[0]
    notes = []
    if clipped:
        notes.append("Arrow heads: the interval continues beyond the axis, which is scaled to "
                     "the data; its full range is printed at the right. With few seeds the "
                     "t-interval is very wide (n=2: ±12.7 standard errors).")
    if hidden:
        notes.append(f"{hidden} more group(s) not shown; all are in analysis.txt and runs.csv.")
    sub = ("dot: geometric mean over seeds (exp of the mean loss); small dots: seeds; whisker: "
           "exp of the 95% Student-t interval of the mean loss" if geometric else
           "dot: mean over seeds; small dots: seeds; whisker: 95% Student-t interval of the mean")
    if chosen_groups:
        sub += "; star, label in green: selected"
    return _finish(fig, title or f"{name[0].upper()}{name[1:]} per group, best first", sub, notes)


def _summary(values: Sequence[float], geometric: bool) -> Any:
    """summarize(), or for ``geometric`` the summary of log values mapped back by exp."""
    from dataclasses import replace

    if not geometric:
        return summarize(values)
    s = summarize([math.log(v) for v in values if v > 0])
    if s is None:
        return None
    return replace(s, mean=math.exp(s.mean), ci_low=math.exp(s.ci_low),
                   ci_high=math.exp(s.ci_high), min=math.exp(s.min), max=math.exp(s.max))


# --------------------------------------------------------------------------------------------------
# size: parameters vs loss, scaling law


def _color_axis(runs: pd.DataFrame, against: str = "params_total") -> str | None:
    """The numeric sweep axis least rank-correlated with size: colouring by it shows what size
    alone does not."""
    axes = numeric_axes(runs.to_dict("records"))
    if not axes:
        return None
    ok = _ok(runs)
    if against not in ok or ok[against].nunique() < 2:
        return axes[0]
    scores = []
    for a in axes:
        rho = ok[[a, against]].corr(method="spearman").iloc[0, 1]
        scores.append((abs(rho) if np.isfinite(rho) else 0.0, a))
    return min(scores)[1]


def params_vs_loss(runs: pd.DataFrame, baseline: str = "baseline", *, metric: str = "val_loss",
                   params: str = "params_total", color_by: str | None = None,
                   title: str | None = None) -> plt.Figure:
    """Parameters (log x) against final loss per group, with the Pareto frontier (the groups no
    smaller group beats), coloured by a sweep axis; runs that did not complete are crosses on
    the top edge at their size."""
    style()
    ok = _ok(runs)
    ok = ok[ok[metric].notna() & ok[params].notna()] if metric in ok and params in ok else \
        ok.iloc[0:0]
    if not len(ok) or ok[params].nunique() < 2:
        return _empty(title or "Parameters vs loss", "Fewer than two model sizes completed.")
    color_by = color_by or _color_axis(runs, params)
    g = ok.groupby("group", observed=True).agg(n=(metric, "size"), mean=(metric, "mean"),
                                               p=(params, "mean")).reset_index()
    fig, ax = _subplots(figsize=(9.5, 6))
    ax.set_xscale("log")
    ax.set_ylim(*_data_limits(ok[metric].tolist(), pad=0.08))
    if color_by and color_by in ok and ok[color_by].notna().all():
        g["c"] = g.group.map(ok.groupby("group", observed=True)[color_by].first())
        vcolors, mappable = _value_colors(g.c.tolist())
        colors = [vcolors[v] for v in g.c]
        _axis_legend(fig, ax, _axis_name(color_by), vcolors, mappable)
    else:
        color_by = None
        pal = _palette_for(runs, g.group, None)
        colors = [pal[x] for x in g.group]
    cmap = dict(zip(g.group, colors))
    ax.scatter(ok[params], ok[metric], s=10, color=[cmap[x] for x in ok.group], alpha=0.5,
               lw=0, zorder=2, label="seeds")
    ax.scatter(g.p, g["mean"], s=55, color=colors, edgecolor="black", lw=0.6, zorder=3,
               label="group mean")
    front = pareto_front(g.p.tolist(), g["mean"].tolist())
    fx, fy = g.p.to_numpy()[front], g["mean"].to_numpy()[front]
    ax.step(fx, fy, where="post", color="black", lw=1.3, ls="--", zorder=4,
            label=f"Pareto frontier ({len(front)} groups)")
    if len(front) <= 12:
        for k, i in enumerate(front):
            ax.annotate(g.group.iloc[i], (fx[k], fy[k]), xytext=(6, -12 if k % 2 else 6),
                        textcoords="offset points", fontsize=7.5, zorder=5,
                        bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none",
                              "alpha": 0.8})
    bad = runs[~runs.status.isin(INCLUDED_STATUSES)]
    if len(bad) and params in bad:
        trans = blended_transform_factory(ax.transData, ax.transAxes)
        ax.scatter(bad[params], [0.985] * len(bad), marker="x", color=DIVERGED_COLOR, s=40,
                   transform=trans, clip_on=False, zorder=5,
                   label=f"did not complete ({len(bad)} runs, top edge)")
    ax.set_xlabel(("total" if params == "params_total" else "non-embedding")
                  + " parameters (log scale)")
    _log_ticks(ax.xaxis)
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.legend(loc="upper right")
    return _finish(fig, title or "Parameters vs final validation loss",
                   f"{len(g)} groups, {len(ok)} completed runs; dashed: Pareto frontier"
                   + (f"; colour: {_axis_name(color_by)}" if color_by else ""))


def scaling_law(runs: pd.DataFrame, fit: Mapping[str, Any] | None = None, *,
                metric: str = "val_loss", title: str | None = None) -> plt.Figure:
    """Final loss against N (log x) with the fitted law L(N) = E + A/N^alpha and its bootstrap
    band; the runs the fit used (the best group at each size) in colour, the other settings at
    the same sizes in grey; with several budgets, the two-term law's curve for each budget."""
    from lmablate.results.scaling import fit_study, predict

    style()
    fit = fit if fit is not None else fit_study(_ok(runs), metric)
    if not fit:
        return _empty(title or "Scaling law", "The completed runs do not span three model sizes "
                      "over a factor of two; no scaling law is fitted.")
    col = fit["n_column"]
    ok = _ok(runs)
    ok = ok[ok[col].notna() & ok[metric].notna()]
    used = ok[ok.group.isin(fit["groups_used"])]
    rest = ok[~ok.group.isin(fit["groups_used"])]
    one = fit["law_n"]
    fig, ax = _subplots(figsize=(9.5, 6))
    ax.set_xscale("log")
    if len(rest):
        ax.scatter(rest[col], rest[metric], s=14, color="#bbbbbb", zorder=2,
                   label=f"other settings at the same sizes ({len(rest)} runs, not fitted)")
    budgets = fit.get("budgets") or []
    pal = dict(zip(budgets, sns.color_palette("crest", max(len(budgets), 1))))
    if len(budgets) > 1:
        for d in budgets:
            sel = used[used.tokens == d]
            ax.scatter(sel[col], sel[metric], s=14, color=pal[d], zorder=3, alpha=0.7, lw=0,
                       label=f"seeds of fitted groups, D = {fmt_tokens(d)} tokens")
    else:
        ax.scatter(used[col], used[metric], s=14, color="#4c72b0", alpha=0.6, zorder=3, lw=0,
                   label=f"seeds of the fitted groups ({len(used)} runs)")
    means = used.groupby("group", observed=True).agg(n=(col, "mean"), loss=(metric, "mean"))
    ax.scatter(means.n, means.loss, s=55, color="#4c72b0", edgecolor="black", lw=0.8, zorder=4,
               label=f"fitted points: best group per size, mean over seeds ({len(means)})")
    cur = one["curve"]
    ax.plot(cur["n"], cur["fit"], color="black", lw=2, zorder=4, label="L(N) = E + A/N^alpha")
    if cur.get("lo"):
        ax.fill_between(cur["n"], cur["lo"], cur["hi"], color="black", alpha=0.12, lw=0,
                        label=f"{int(one['confidence'] * 100)}% bootstrap band "
                              f"({one['n_boot']} resamples)")
    nd = fit.get("law_nd")
    if nd:
        grid = np.asarray(cur["n"])
        for d in budgets:
            ax.plot(grid, predict(nd["params"], grid, np.full_like(grid, d)), ls="--",
                    color=pal[d], lw=1.3)
        ax.plot([], [], ls="--", color="grey", label="L(N, D) = E + A/N^alpha + B/D^beta")
    bad = runs[~runs.status.isin(INCLUDED_STATUSES)]
    if len(bad) and col in bad:
        trans = blended_transform_factory(ax.transData, ax.transAxes)
        ax.scatter(bad[col], [0.985] * len(bad), marker="x", color=DIVERGED_COLOR, s=40,
                   transform=trans, clip_on=False, label="did not complete (top edge)")
    ylo, yhi = _data_limits(ok[metric].tolist(), pad=0.08)
    e = one["params"]["E"]
    if ylo - 0.5 * (yhi - ylo) <= e <= yhi:
        ylo = min(ylo, e - 0.05 * (yhi - ylo))
        ax.axhline(e, color="black", ls=":", lw=1, label=f"E = {e:.3f} (irreducible loss)")
    ax.set_ylim(ylo, yhi)
    ci = one["ci"]

    def with_ci(k: str, f: str) -> str:
        lo, hi = ci[k]
        v = one["params"][k]
        return f"{k} = {v:{f}}" + (f"  [{lo:{f}}, {hi:{f}}]" if lo is not None else "")

    lines = [with_ci("alpha", ".3f"), with_ci("E", ".3f"), with_ci("A", ".3g")]
    if nd:
        lines.append(f"two-term: alpha = {nd['params']['alpha']:.3f}, "
                     f"beta = {nd['params']['beta']:.3f}")
    ax.text(0.02, 0.03, "\n".join(lines), transform=ax.transAxes, fontsize=9, va="bottom",
            family="monospace", bbox={"boxstyle": "round", "fc": "white", "ec": "#cccccc"})
    ax.set_xlabel(("non-embedding" if col == "params_non_embedding" else "total")
                  + " parameters N (log scale)")
    _log_ticks(ax.xaxis)
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.legend(loc="upper right")
    notes = ["The law is fitted inside the range of sizes shown; beyond it the line is an "
             "extrapolation these runs do not test."]
    notes += [f"Fitted on {n}." for n in fit.get("notes", [])]
    return _finish(fig, title or "Scaling law fit", "Huber loss on log L (delta 1e-3), best of "
                   "many starts; [95% bootstrap interval over the fitted configurations]",
                   notes)


# --------------------------------------------------------------------------------------------------
# sweep axes: heatmap, learning rate


def heatmap(runs: pd.DataFrame, *, x: str | None = None, y: str | None = None,
            facet: str | None = None, metric: str = "val_loss", title: str | None = None
            ) -> plt.Figure:
    """Mean final ``metric`` over two numeric sweep axes, one panel per value of a third.

    The grid is the variant with the most groups (other variants are single points beside it
    and are named in the subtitle). Axes beyond these three are collapsed to their best group.
    Cells where every seed failed say so; cells the sweep never visited stay grey.
    """
    from lmablate.figures.plan import axis_value, heatmap_axes
    from lmablate.results.shape import DERIVED_AXES

    style()
    main, axes = heatmap_axes(runs.to_dict("records"))
    if main is None and not (x and y):
        return _empty(title or "Heatmap", "Fewer than two numeric sweep axes that form a grid.")
    main = main if main is not None else runs.variant.iloc[0]
    others = sorted(set(runs.variant) - {main})
    runs = runs[runs.variant == main]
    runs = runs.assign(**{a: [axis_value(r, a) for r in runs.to_dict("records")]  # d_ff/d_model
                          for a in [*axes, x, y, facet] if a in DERIVED_AXES})
    axes = axes or numeric_axes(runs.to_dict("records"))
    y = y or axes[0]
    x = x or next(a for a in axes if a != y)
    facet = facet if facet is not None else next((a for a in axes if a not in (x, y)), None)
    rest = [a for a in axes if a not in (x, y, facet)]
    ok = _ok(runs)
    cells = runs.groupby("group", observed=True)[[a for a in (x, y, facet) if a]].first()
    cells = cells.join(ok.groupby("group", observed=True).agg(mean=(metric, "mean")), how="left")
    cells["failed"] = runs.groupby("group", observed=True).status.agg(
        lambda s: not s.isin(INCLUDED_STATUSES).any())
    facets = sorted(cells[facet].dropna().unique())[:8] if facet else [None]
    vals = cells["mean"].dropna()
    if not len(vals):
        return _empty(title or "Heatmap", f"No completed run has a final {metric}.")
    ncols = min(4, len(facets))
    nrows = math.ceil(len(facets) / ncols)
    xs, ys = sorted(cells[x].dropna().unique()), sorted(cells[y].dropna().unique())
    w = max(3.4, 0.62 * len(xs) + 1.4)
    h = max(2.8, 0.45 * len(ys) + 1.2)
    fig, axs = _subplots(nrows, ncols, figsize=(w * ncols + 1.0, h * nrows + 0.4),
                         squeeze=False)
    norm = Normalize(vals.min(), vals.max())
    cmap = plt.get_cmap("viridis_r").copy()
    cmap.set_bad("#eeeeee")
    annotate = len(xs) * len(ys) <= 150
    for ax, fv in zip(axs.flat, facets):
        sub = cells if facet is None else cells[cells[facet] == fv]
        grid = sub.groupby([y, x])["mean"].min().unstack(x).reindex(index=ys, columns=xs)
        fail = sub.groupby([y, x])["failed"].all().unstack(x).reindex(index=ys, columns=xs)
        ax.imshow(np.ma.masked_invalid(grid.to_numpy(float)), cmap=cmap, norm=norm,
                  aspect="auto", origin="lower")
        for (i, j), v in np.ndenumerate(grid.to_numpy(float)):
            if np.isfinite(v) and annotate:
                ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=7.5,
                        color="white" if norm(v) > 0.6 else "black")
            elif pd.notna(fail.iloc[i, j]) and bool(fail.iloc[i, j]):
                ax.text(j, i, "diverged", ha="center", va="center", fontsize=7,
                        color=DIVERGED_COLOR, fontweight="bold")
        ax.set_xticks(range(len(xs)), [f"{v:g}" for v in xs], rotation=45 if len(xs) > 8 else 0)
        ax.set_yticks(range(len(ys)), [f"{v:g}" for v in ys])
        ax.set_xlabel(_axis_name(x))
        ax.set_ylabel(_axis_name(y))
        ax.grid(False)
        if facet is not None:
            ax.set_title(f"{_axis_name(facet)} = {fv:g}")
    for ax in axs.flat[len(facets):]:
        ax.set_visible(False)
    cb = fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axs, shrink=0.9)
    cb.set_label(f"mean {METRIC_LABELS.get(metric, metric)}")
    sub = f"variant {main}; cell: mean over seeds (lower is better, brighter); grey: not in " \
          "the sweep"
    if rest:
        sub += "; best over " + ", ".join(_axis_name(a) for a in rest)
    if others:
        sub += f"; not shown: variant(s) {', '.join(others)}"
    return _finish(fig, title or f"Final validation loss over {_axis_name(y)} x {_axis_name(x)}"
                   + (f" by {_axis_name(facet)}" if facet else ""), sub)


def lr_sensitivity(runs: pd.DataFrame, baseline: str = "baseline", *, metric: str = "val_loss",
                   max_whiskers: int = 6, title: str | None = None) -> plt.Figure:
    """Final ``metric`` against the learning rate (log x), one line per configuration (runs that
    differ only in LR, :func:`lmablate.results.harvest.lr_lines`); each line's best LR starred; runs
    that
    did not complete as crosses on the top edge at their LR. Interval whiskers (slightly offset
    per line) up to ``max_whiskers`` lines; beyond that only the seeds are drawn."""
    from lmablate.results.harvest import lr_lines

    style()
    if "train.lr" not in runs or runs["train.lr"].nunique() < 2:
        return _empty(title or "Learning-rate sensitivity", "The learning rate does not vary.")
    ref, _ = reference_group(runs, baseline)
    runs = runs_all = runs.assign(line=lr_lines(runs))
    ok = ok_all = _ok(runs)
    ok = ok_all = ok[ok[metric].notna()]
    ref_mean = ok[ok.group == ref][metric].mean() if ref is not None else float("nan")
    n_lr = runs.groupby("line")["train.lr"].nunique()
    single = sorted(n_lr[n_lr < 2].index)
    runs = runs[runs.line.isin(n_lr[n_lr >= 2].index)]
    ok = ok[ok.line.isin(runs.line)]
    fig, ax = _subplots(figsize=(10.5, 6))
    ax.set_xscale("log")
    show_ref = bool(np.isfinite(ref_mean) and not (ok.group == ref).any())
    if len(ok):  # the reference line must stay inside the axes, however far from the sweep
        ax.set_ylim(*_data_limits(ok[metric].tolist() + ([ref_mean] if show_ref else []),
                                  pad=0.1))
    if show_ref:
        ref_lr = runs_all.loc[runs_all.group == ref, "train.lr"].dropna().unique()
        ax.axhline(ref_mean, color=REFERENCE_COLOR, ls="--", lw=1,
                   label=f"{ref} (reference, one LR"
                   + (f" = {_num(float(ref_lr[0]))}" if len(ref_lr) == 1 else "") + "): mean")
        if len(ref_lr) == 1:
            ax.plot(ref_lr[0], ref_mean, "D", color=REFERENCE_COLOR, ms=6, zorder=5)
    means = ok.groupby("line")[metric].mean().sort_values()
    lines = list(means.index) + [k for k in dict.fromkeys(runs.line) if k not in means.index]
    colors = sns.color_palette("colorblind", 10) if len(lines) <= 10 else \
        sns.color_palette("husl", len(lines))
    pal = dict(zip(lines, colors))
    whiskers = len(lines) <= max_whiskers
    clipped = False
    for k, key in enumerate(lines):
        sel = ok[ok.line == key]
        dodge = 10 ** (0.012 * (k - (len(lines) - 1) / 2)) if whiskers else 1.0
        pts = []
        for lr, g in sel.groupby("train.lr"):
            s = summarize(g[metric].tolist())
            pts.append((lr, s))
            ax.scatter([lr * dodge] * len(g), g[metric], color=pal[key], s=12, alpha=0.6,
                       zorder=3)
            if whiskers and s.n > 1:
                clipped |= _whisker(ax, s.mean, s.ci_low, s.ci_high, lr * dodge, pal[key],
                                    horizontal=False)
        if pts:
            ns = sorted({p[1].n for p in pts})
            ax.plot([p[0] * dodge for p in pts], [p[1].mean for p in pts], "-o", color=pal[key],
                    lw=1.8, ms=5, zorder=4,
                    label=f"{key} (n={'/'.join(map(str, ns))} per LR)")
            best = min(pts, key=lambda p: p[1].mean)
            ax.plot(best[0] * dodge, best[1].mean, "*", color=pal[key], ms=15, mec="black",
                    mew=0.6, zorder=5)
    bad = runs[~runs.status.isin(INCLUDED_STATUSES)]
    if len(bad):
        trans = blended_transform_factory(ax.transData, ax.transAxes)
        for key, b in bad.groupby("line"):
            ax.scatter(b["train.lr"], [0.98] * len(b), marker="x", s=60, lw=2.2,
                       color=pal.get(key, DIVERGED_COLOR), transform=trans, clip_on=False,
                       zorder=6)
        ax.scatter([], [], marker="x", color=DIVERGED_COLOR, label=f"did not complete "
                   f"({len(bad)} runs; top edge, colour of their line)")
        lo, hi = ax.get_xlim()  # the markers do not autoscale: keep their LRs in view
        lrs = bad["train.lr"][bad["train.lr"] > 0]
        if len(lrs):
            ax.set_xlim(min(lo, lrs.min() / 1.25), max(hi, lrs.max() * 1.25))
    for k, key in enumerate(single[:10]):  # one LR only: a point, not a line
        sel = ok_all[ok_all.line == key]
        if len(sel):
            color = sns.color_palette("dark", 10)[k]
            ax.plot(sel["train.lr"].mean(), sel[metric].mean(), "D", color=color, ms=7,
                    mec="black", mew=0.6, zorder=5, label=f"{key} (one LR, n={len(sel)})")
            if not len(ok):
                ax.set_ylim(*_data_limits(ok_all[metric].tolist(), pad=0.1))
    ax.plot([], [], "*", color="grey", ms=12, mec="black", label="best LR of the line")
    ax.set_xlabel("peak learning rate (log scale)")
    _log_ticks(ax.xaxis, eng=False)
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7.5)
    notes = []
    if clipped:
        notes.append("Arrow heads: an interval continues beyond the axis (scaled to the data).")
    if len(single) > 10:
        notes.append(f"Not shown (one LR only): {' | '.join(single[10:])}.")
    if not whiskers:
        notes.append(f"{len(lines)} lines: intervals are left out for legibility (seeds are "
                     "drawn); analysis.txt has every group's interval.")
    return _finish(fig, title or "Learning-rate sensitivity",
                   "line: mean over seeds per LR; dots: seeds"
                   + ("; whisker: 95% Student-t interval" if whiskers else ""), notes)


# --------------------------------------------------------------------------------------------------
# swept numeric axes, compute vs quality, best per size


def _exp(v: Any) -> Any:
    with np.errstate(over="ignore"):
        return np.exp(v)


def _log(v: Any) -> Any:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(v)


def _axis_label(axis: str) -> str:
    return f"{axis} (ratio)" if "/" in axis else _axis_name(axis)


def _set_value_ticks(ax: plt.Axes, values: Sequence[float], log: bool) -> None:
    """Ticks at the swept values when there are few of them, else 1-2-5 (log) or plain ones."""
    vals = sorted(set(values))
    if len(vals) <= 8:
        ax.set_xticks(vals, [f"{v:.4g}" for v in vals])
        ax.xaxis.set_minor_locator(ticker.NullLocator())
    elif log:
        _log_ticks(ax.xaxis)


def _series_label(group: str, axis: str) -> str:
    """A group's label without this axis's ``name=value`` part: the line it belongs to."""
    short = _axis_name(axis) + "="
    parts = [p for p in str(group).split(", ") if not p.startswith(short)]
    return ", ".join(parts) or "defaults"


def _group_stats(ok: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per group: x (first), mean, 95% interval and n of ``metric`` over seeds."""
    rows = []
    for g, sel in ok.groupby("group", observed=True, sort=False):
        s = summarize(sel[metric].tolist())
        if s is not None:
            rows.append({"group": g, "x": float(sel["_x"].iloc[0]), "mean": s.mean,
                         "lo": s.ci_low, "hi": s.ci_high, "n": s.n,
                         "series": sel["_series"].iloc[0]})
    return pd.DataFrame(rows, columns=["group", "x", "mean", "lo", "hi", "n", "series"])


def _axis_panel(ax: plt.Axes, rows: pd.DataFrame, axis: str, metric: str, ref: str | None,
                max_lines: int) -> dict[str, Any]:
    """One panel of :func:`metric_vs_axis`; returns what its legend and notes need."""
    from lmablate.figures.plan import axis_value
    from lmablate.results.shape import DERIVED_AXES

    recs = rows.to_dict("records")
    rows = rows.assign(_x=[axis_value(r, axis) for r in recs])
    rows = rows[rows["_x"].notna()]
    derived = axis in DERIVED_AXES
    rows = rows.assign(_series=[g if derived else _series_label(g, axis) for g in rows.group])
    ok = _ok(rows)
    ok = ok[ok[metric].notna()]
    st = _group_stats(ok, metric)
    if not derived and len(st) and st.groupby("series").size().max() == 1:
        # no line has two points (an axis zipped with another): one line per variant instead
        rows = rows.assign(_series=rows.variant.astype(str))
        ok = ok.assign(_series=ok.variant.astype(str))
        st = _group_stats(ok, metric)
    per_x = st.groupby(["series", "x"]).size() if len(st) else pd.Series(dtype=int)
    lines = not derived and len(st) and per_x.max() == 1 and st.series.nunique() <= max_lines
    xs = rows["_x"].astype(float)
    log = bool((xs > 0).all() and xs.max() / xs.min() >= 8)
    if log:
        ax.set_xscale("log")
    ax.set_xlim(*_data_limits(xs.tolist(), pad=0.08, log=log))
    out = {"clipped": False, "lines": bool(lines), "n_groups": len(st)}
    if lines:
        series = list(dict.fromkeys(st.sort_values("mean").series))
        colors = sns.color_palette("colorblind", 10)
        for k, key in enumerate(series):
            s = st[st.series == key].sort_values("x")
            color = REFERENCE_COLOR if len(series) == 1 else colors[k % 10]
            label = f"{key} (seeds per point: {'/'.join(map(str, sorted(set(s.n))))})"
            ax.plot(s.x, s["mean"], "-o", color=color, lw=1.8, ms=6, zorder=4,
                    label=label if len(series) > 1 else None)
            seeds = ok[ok["_series"] == key]
            ax.scatter(seeds["_x"], seeds[metric], s=14, color=color, alpha=0.55, zorder=3,
                       lw=0)
            for e in s.itertuples():
                if e.n > 1:
                    out["clipped"] |= _whisker(ax, e.mean, e.lo, e.hi, e.x, color,
                                               horizontal=False)
            best = s.loc[s["mean"].idxmin()]
            ax.plot(best.x, best["mean"], "*", color=color, ms=15, mec="black", mew=0.6,
                    zorder=5)
    elif len(st):
        ax.scatter(st.x, st["mean"], s=16, color="#9a9a9a", alpha=0.6, lw=0, zorder=2,
                   label=f"configuration mean ({len(st)})")
        best = st.loc[st.groupby("x")["mean"].idxmin()].sort_values("x")
        med = st.groupby("x")["mean"].median()
        ax.plot(med.index, med.to_numpy(), ls="--", color="#555555", lw=1.2, zorder=3,
                label="median over configurations")
        ax.plot(best.x, best["mean"], "-o", color="#1f77b4", lw=1.8, ms=5, zorder=4,
                label="best configuration at each value")
        for e in best.itertuples():
            if e.n > 1:
                out["clipped"] |= _whisker(ax, e.mean, e.lo, e.hi, e.x, "#1f77b4",
                                           horizontal=False)
        top = st.loc[st["mean"].idxmin()]
        ax.plot(top.x, top["mean"], "*", color="#1f77b4", ms=15, mec="black", mew=0.6,
                zorder=5)
        ax.annotate(str(top.group), (top.x, top["mean"]), xytext=(-8, 9),
                    textcoords="offset points", ha="right", va="bottom", fontsize=7, zorder=6,
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none",
                          "alpha": 0.85})
    if ref is not None and (st.group == ref).any():
        r = st[st.group == ref].iloc[0]
        ax.axhline(r["mean"], color=REFERENCE_COLOR, ls=":", lw=1, zorder=1)
    bad = rows[~rows.status.isin(INCLUDED_STATUSES)]
    if len(bad):
        trans = blended_transform_factory(ax.transData, ax.transAxes)
        ax.scatter(bad["_x"], [0.98] * len(bad), marker="x", s=50, lw=2, color=DIVERGED_COLOR,
                   transform=trans, clip_on=False, zorder=6)
        out["bad"] = len(bad)
    _set_value_ticks(ax, xs.tolist(), log)
    ax.set_xlabel(_axis_label(axis) + (" (log scale)" if log else ""))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=7)
    return out


def metric_vs_axis(runs: pd.DataFrame, baseline: str = "baseline", *, metric: str = "val_loss",
                   axes: Sequence[str] | None = None, max_lines: int = 4,
                   title: str | None = None) -> plt.Figure:
    """Final ``metric`` against each swept numeric axis and derived ratio
    (:func:`lmablate.figures.plan.figure_axes`), one panel each, y shared.

    Where each value of the axis is one configuration per line (a one-axis sweep, or a grid with
    at most ``max_lines`` settings of the other axes): the mean over seeds with its 95%
    t-interval, the seeds as dots, the best value starred. Where many configurations share a
    value (a grid, a derived ratio): every configuration's mean in grey, the median and the best
    at each value as lines, the best overall starred and named. A run that several sweep points
    share (a one-axis sweep's centre) is on each of their axes. Loss figures give the perplexity
    on the right axis.
    """
    from lmablate.figures.plan import figure_axes
    from lmablate.results.harvest import group_rows

    style()
    rows = group_rows(runs)
    axes = list(axes) if axes else figure_axes(rows.to_dict("records"))
    label = METRIC_LABELS.get(metric, metric)
    name = label.split(" (")[0]
    if not axes:
        return _empty(title or f"{name} vs sweep axes", "No numeric sweep axis with two or "
                      "more values.")
    ok = _ok(rows)
    ok = ok[ok[metric].notna()] if metric in ok else ok.iloc[0:0]
    if not len(ok):
        return _empty(title or f"{name} vs sweep axes", f"No run has a final {metric}.")
    ref, _ = reference_group(rows, baseline)
    ncols = min(3, len(axes))
    nrows = math.ceil(len(axes) / ncols)
    fig, axs = _subplots(nrows, ncols, figsize=(5.0 * ncols + 0.6, 3.9 * nrows + 0.6),
                         sharey=True, squeeze=False)
    vals = ok[metric].tolist() + ok.groupby("group", observed=True)[metric].mean().tolist()
    ylim = _data_limits(vals, pad=0.1)
    info = []
    for ax, axis in zip(axs.flat, axes):
        ax.set_ylim(*ylim)
        info.append(_axis_panel(ax, rows, axis, metric, ref, max_lines))
    for ax in axs.flat[len(axes):]:
        ax.set_visible(False)
    for ax in axs[:, 0]:
        ax.set_ylabel(label + "; lower is better")
    if metric in ("val_loss", "best_val_loss"):
        for ax in axs[:, min(ncols, len(axes)) - 1]:
            if ax.get_visible():
                sec = ax.secondary_yaxis("right", functions=(_exp, _log))
                sec.set_ylabel("perplexity (exp of the loss)")
                sec.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:.4g}"))
    notes = []
    if any(i["clipped"] for i in info):
        notes.append("Arrow heads: an interval continues beyond the axis (scaled to the data).")
    n_bad = max((i.get("bad", 0) for i in info), default=0)
    if n_bad:
        notes.append("Red crosses on the top edge: runs that did not complete, at their value.")
    if ref is not None and (ok.group == ref).any():
        notes.append(f"Dotted line: the reference {ref} (mean over seeds).")
    whisk = "whisker: 95% Student-t interval" if (ok.groupby("group", observed=True).size()
                                                   > 1).any() else "one seed: no interval"
    sub = ("dots joined: mean over seeds per configuration; small dots: seeds; "
           f"{whisk}; star: best value" if all(i["lines"] for i in info) else
           "grey: each configuration's mean over seeds; blue line: the best configuration at "
           "each value (whisker: its 95% Student-t interval); dashed: the median; star: best")
    return _finish(fig, title or f"{name[0].upper()}{name[1:]} vs each swept axis", sub, notes)


X_LABELS = {
    "flops_per_token": "training FLOPs per token (forward + backward)",
    "flops": "training FLOPs of the run", "params_total": "total parameters",
    "params_non_embedding": "non-embedding parameters",
    "latency_ms_seq128": "forward latency, batch 1, 128 tokens (ms)",
    "latency_ms_seq512": "forward latency, batch 1, 512 tokens (ms)",
    "peak_mem_mb": "peak memory (MiB)", "train_wall_s": "training wall time (s)",
}


def pareto(runs: pd.DataFrame, baseline: str = "baseline", *, x: str | None = None,
           metric: str = "val_loss", max_labels: int = 20, title: str | None = None
           ) -> plt.Figure:
    """Cost ``x`` (default: training FLOPs per token, or total parameters where runs have no
    FLOP count; also latency, memory or wall time: :data:`X_LABELS`) against final ``metric``
    per configuration: mean over seeds with its 95% t-interval, seeds faint, the Pareto frontier
    (the configurations no cheaper one beats) as a step line with its points named; runs that
    did not complete are crosses on the top edge at their cost."""
    style()
    if x is None:
        has = "flops_per_token" in runs and runs.flops_per_token.notna().any()
        x = "flops_per_token" if has else "params_total"
    what = X_LABELS.get(x, x)
    rows = runs  # each run once: a run that two sweep points share is one model, named by both
    if "groups" in runs and runs.groups.notna().any():
        rows = runs.assign(group=runs.groups.where(runs.groups.notna(), runs.group))
    ok = _ok(rows)
    ok = ok[ok[metric].notna() & ok[x].notna()] if metric in ok and x in ok else ok.iloc[0:0]
    if not len(ok) or ok[x].nunique() < 2:
        return _empty(title or "Compute vs quality", f"Fewer than two completed configurations "
                      f"differ in {x}.")
    ref, _ = reference_group(rows, baseline)
    ok = ok.assign(_x=ok[x].astype(float), _series="")
    st = _group_stats(ok.assign(_x=ok.groupby("group", observed=True)["_x"].transform("mean")),
                      metric)
    front = pareto_front(st.x.tolist(), st["mean"].tolist())
    on = st.iloc[front]
    fig, ax = _subplots(figsize=(13, 6))
    log = st.x.max() / st.x.min() >= 10
    if log:
        ax.set_xscale("log")
    ax.set_ylim(*_data_limits(ok[metric].tolist(), pad=0.12))
    ax.set_xlim(*_data_limits(ok["_x"].tolist(), pad=0.1, log=log))
    ax.scatter(ok["_x"], ok[metric], s=12, color="#9a9a9a", alpha=0.5, lw=0, zorder=2,
               label=f"seeds ({len(ok)} runs)")
    off = st[~st.index.isin(on.index)]
    if len(off):
        ax.scatter(off.x, off["mean"], s=40, color="#bcbcbc", edgecolor="#666666", lw=0.6,
                   zorder=3, label=f"other configurations ({len(off)})")
    clipped = False
    whiskers = len(on) <= 6
    for e in on.itertuples():
        if e.n > 1 and whiskers:
            clipped |= _whisker(ax, e.mean, e.lo, e.hi, e.x, SELECTED_COLOR, horizontal=False)
    ax.step(on.x, on["mean"], where="post", color=SELECTED_COLOR, lw=1.6, ls="--", zorder=4)
    ax.scatter(on.x, on["mean"], s=70, color=SELECTED_COLOR, edgecolor="black", lw=0.7,
               zorder=5, label=f"Pareto frontier ({len(on)} configuration"
               + ("s)" if len(on) != 1 else ")"))
    listed = []  # numbered on the plot, named in a list beside it: labels never overlap
    for k, e in enumerate(on.head(max_labels).itertuples(), 1):
        ax.annotate(str(k), (e.x, e.mean), xytext=(0, 9), textcoords="offset points",
                    ha="center", va="bottom", fontsize=7.5, fontweight="bold", zorder=6,
                    color=SELECTED_COLOR, bbox={"boxstyle": "circle,pad=0.15", "fc": "white",
                                                "ec": SELECTED_COLOR, "lw": 0.8})
        ci = f" [{_num(e.lo)}, {_num(e.hi)}]" if e.n > 1 else ""
        listed.append(f"{k:>2}  {e.group}\n    {fmt_count(e.x)}: {_num(e.mean)}{ci} n={e.n}")
    ax.text(1.02, 1.0, "Pareto frontier, cheapest first\n" + "\n".join(listed),
            transform=ax.transAxes, va="top", ha="left", fontsize=7.5, linespacing=1.35)
    if ref is not None and (st.group == ref).any():
        r = st[st.group == ref].iloc[0]
        ax.plot(r.x, r["mean"], "D", color=REFERENCE_COLOR, ms=8, zorder=6, mfc="none", mew=1.6,
                label=f"reference: {ref}")
    bad = rows[~rows.status.isin(INCLUDED_STATUSES)]
    bad = bad[bad[x].notna()] if x in bad else bad.iloc[0:0]
    if len(bad):
        trans = blended_transform_factory(ax.transData, ax.transAxes)
        ax.scatter(bad[x], [0.98] * len(bad), marker="x", color=DIVERGED_COLOR, s=45, lw=2,
                   transform=trans, clip_on=False, zorder=6,
                   label=f"did not complete ({len(bad)} runs, top edge)")
    ax.set_xlabel(what + ("; log scale" if log else ""))
    if log:
        _log_ticks(ax.xaxis)
    else:
        _eng(ax.xaxis)
    ax.set_ylabel(METRIC_LABELS.get(metric, metric) + "; lower is better")
    ax.legend(loc="lower left", bbox_to_anchor=(1.02, 0.0))  # beside the axes: hides no point
    notes = []
    if clipped:
        notes.append("Arrow heads: an interval continues beyond the axis (scaled to the data).")
    if not whiskers:
        notes.append(f"{len(on)} frontier points: their intervals are listed at the right, not "
                     "drawn.")
    if len(on) > max_labels:
        notes.append(f"{len(on) - max_labels} more frontier configurations are not named.")
    return _finish(fig, title or f"Compute vs quality: {what.split(' (')[0]} against "
                   f"{METRIC_LABELS.get(metric, metric).split(' (')[0]}",
                   "green: the Pareto frontier, each configuration no cheaper one beats (mean "
                   "over seeds, whisker: 95% Student-t interval); lower left is better", notes)


def _loss_at(curves: pd.DataFrame, run_ids: Sequence[str], at: float, x: str
             ) -> dict[str, float]:
    """Validation loss of each run interpolated at progress ``at`` (runs that reached it)."""
    val = curves[(curves.split == "val") & (curves.metric == "loss")
                 & curves.run_id.isin(list(run_ids))]
    out = {}
    for rid, g in val[np.isfinite(val.value)].groupby("run_id", observed=True):
        g = g.sort_values(x)
        if len(g) and g[x].iloc[0] <= at <= g[x].iloc[-1] * 1.0001:
            out[str(rid)] = float(np.interp(at, g[x], g.value))
    return out


def best_per_size(runs: pd.DataFrame, curves: pd.DataFrame, baseline: str = "baseline", *,
                  at: float | None = None, title: str | None = None) -> plt.Figure:
    """Seed 000's choice of a model per size: the configurations grouped into parameter-count
    buckets (1-2.5-5 series), each bucket one row; every configuration's validation loss after
    N training tokens (``at``; default: the furthest point every run of the bucket reached) as a
    grey dot, the lowest starred and named with its size, loss and N."""
    from lmablate.results.harvest import group_rows
    from lmablate.results.shape import size_bucket

    style()
    rows = group_rows(runs)
    ok = _ok(rows)
    ok = ok[ok.params_total.notna()] if "params_total" in ok else ok.iloc[0:0]
    if not len(ok):
        return _empty(title or "Best configuration per size", "No completed run has a "
                      "parameter count.")
    x = progress_column(curves)
    sizes = ok.groupby("group", observed=True).params_total.mean()
    bucket_of = {g: size_bucket(p) for g, p in sizes.items()}
    buckets = sorted(set(bucket_of.values()))
    fig, ax = _subplots(figsize=(11, 0.75 * len(buckets) + 2.0))
    trans = blended_transform_factory(ax.transAxes, ax.transData)
    rng = np.random.default_rng(0)
    picked, allv = [], []
    for i, b in enumerate(buckets):
        groups = [g for g, bb in bucket_of.items() if bb == b]
        sel = ok[ok.group.isin(groups)]
        if len(curves):
            ends = curves[curves.run_id.isin(sel.run_id) & (curves.split == "val")
                          & (curves.metric == "loss")].groupby("run_id", observed=True)[x].max()
            n_at = float(at) if at is not None else float(ends.min()) if len(ends) else None
        else:
            n_at = None
        per_run = _loss_at(curves, sel.run_id.tolist(), n_at, x) if n_at is not None else \
            dict(zip(sel.run_id.astype(str), sel.val_loss))
        vals = sel.assign(v=sel.run_id.astype(str).map(per_run)).dropna(subset=["v"])
        means = vals.groupby("group", observed=True).v.agg(["mean", "size"])
        if not len(means):
            ax.text(0.5, i, "no run reached this point", transform=trans, ha="center",
                    va="center", fontsize=8, color=DIVERGED_COLOR)
            continue
        best = means["mean"].idxmin()
        rest = means.drop(index=best)  # the best is the star
        jitter = rng.uniform(-0.18, 0.18, len(rest))
        ax.scatter(rest["mean"], i + jitter, s=18, color="#9a9a9a", alpha=0.7, lw=0, zorder=2)
        allv += means["mean"].tolist()
        s = summarize(vals[vals.group == best].v.tolist())
        ax.plot(s.mean, i, "*", color=SELECTED_COLOR, ms=17, mec="black", mew=0.7, zorder=4)
        where = f"after {fmt_tokens(n_at)} {'tokens' if x == 'tokens' else 'steps'}" \
            if n_at is not None else "final"
        ax.text(1.02, i, f"{best}\n{fmt_count(sizes[best])} params, loss {_num(s.mean)} "
                f"{where} (n={s.n}); best of {len(means)}", transform=trans, va="center",
                fontsize=7.5)
        picked.append(best)
    if not allv:
        plt.close(fig)
        return _empty(title or "Best configuration per size", "No run has a validation loss.")
    ax.set_xlim(*_data_limits(allv, pad=0.06))
    ax.set_ylim(len(buckets) - 0.5, -0.5)
    ax.set_yticks(range(len(buckets)), [f"{fmt_count(lo)}-{fmt_count(hi)}" for lo, hi in buckets])
    ax.set_ylabel("total parameters (bucket)")
    ax.set_xlabel("validation loss after N training tokens (nats/token); lower is better")
    ax.text(1.02, -0.5, "lowest loss in the bucket", transform=trans, va="bottom", fontsize=8,
            fontweight="bold")
    return _finish(fig, title or "Best configuration per model size",
                   "grey: each configuration's mean over seeds at the furthest point every run "
                   "of its bucket reached (N); star: the lowest, the one to train to completion")


# --------------------------------------------------------------------------------------------------
# efficiency, calibration, mixture of experts


def efficiency(runs: pd.DataFrame, baseline: str = "baseline", *, title: str | None = None
               ) -> plt.Figure:
    """Training throughput, peak memory and data efficiency (training-loss drop per million
    tokens; early- over late-phase drop rate, :data:`lmablate.results.harvest.EFFICIENCY_COLUMNS`)
    against model size (per group when the study spans fewer than three sizes), two panels a
    row. Every run counts here, those that did not complete included (crosses): their speed was
    measured all the same."""
    style()
    cols = [c for c in ("tokens_per_s", "peak_mem_mb", "loss_drop_per_mtok", "early_late_ratio")
            if c in runs and runs[c].notna().any()]
    if not cols:
        return _empty(title or "Throughput and memory", "No run recorded throughput or memory.")
    ref, _ = reference_group(runs, baseline)
    order = _order(runs)
    by_size = "params_total" in runs and spans_sizes(runs.params_total.dropna().tolist())
    ncol = min(2, len(cols))
    nrow = math.ceil(len(cols) / ncol)
    fig, axs = _subplots(nrow, ncol, figsize=(6.2 * ncol, nrow * (4.8 if by_size else
                                                                 0.4 * len(order) + 2.4)),
                         squeeze=False)
    for ax in axs.flat[len(cols):]:
        ax.set_visible(False)
    done = runs.status.isin(INCLUDED_STATUSES)
    color_by = _color_axis(runs) if by_size and runs.group.nunique() > 10 else None
    if color_by and runs[color_by].notna().all():
        vcolors, mappable = _value_colors(runs[color_by].tolist())
        colors = runs[color_by].map(vcolors)
    else:
        color_by = None
        pal = group_palette(runs.group, ref)
        colors = runs.group.map(pal)
    for k, (ax, col) in enumerate(zip(axs.flat, cols)):
        if by_size:
            ax.scatter(runs.params_total[done], runs[col][done], c=list(colors[done]), s=28,
                       edgecolor="black", lw=0.4, zorder=3)
            ax.scatter(runs.params_total[~done], runs[col][~done], color=DIVERGED_COLOR,
                       marker="x", s=40, zorder=4)
            ax.set_xscale("log")
            ax.set_xlabel("total parameters (log scale)")
            _log_ticks(ax.xaxis)
            _eng(ax.yaxis)
            ax.set_ylabel(METRIC_LABELS[col])
        else:
            for i, g in enumerate(order):
                sel = runs[runs.group == g]
                d = done[sel.index]
                ax.scatter(sel[col][d], [i] * int(d.sum()), color=colors[sel.index][d].tolist(),
                           s=26, edgecolor="black", lw=0.4, zorder=3)
                ax.scatter(sel[col][~d], [i] * int((~d).sum()), color=DIVERGED_COLOR,
                           marker="x", s=40, zorder=3)
                m = sel[col].mean()
                if np.isfinite(m):
                    ax.plot([m, m], [i - 0.3, i + 0.3], color=colors[sel.index[0]], lw=2.5,
                            zorder=2)
            ax.set_yticks(range(len(order)), order if k % ncol == 0 else [""] * len(order))
            ax.set_ylim(len(order) - 0.5, -0.5)
            ax.set_xlabel(METRIC_LABELS[col])
            _eng(ax.xaxis)
    if by_size and color_by:
        _axis_legend(fig, axs[0, -1], _axis_name(color_by), vcolors, mappable)
    elif by_size and runs.group.nunique() <= 10:
        for g in dict.fromkeys(runs.group):
            axs[0, -1].scatter([], [], color=pal[g], label=g)
        axs[0, -1].legend(loc="best")
    dev = runs.device.dropna().unique().tolist() if "device" in runs else []
    notes = []
    if "peak_mem_mb" in cols:
        notes.append("Peak memory: CUDA memory allocated on a GPU; on a CPU the peak resident "
                     "size of the whole training process (Python and torch included)."
                     if any(str(d).startswith("cpu") for d in dev) else
                     "Peak memory: CUDA memory allocated by the training process.")
    if (~done).any():
        notes.append("Red crosses: runs that did not complete (their throughput still counts).")
    if "loss_drop_per_mtok" in cols:
        notes.append("Data efficiency from each run's training-loss curve: the drop from the "
                     "first logged step to the end per million training tokens; early/late: the "
                     "drop rate in the first 25% of tokens over that in the last 25%.")
    what = "Throughput, peak memory and data efficiency" if "loss_drop_per_mtok" in cols \
        else "Throughput and peak memory"
    return _finish(fig, title or (f"{what} vs model size" if by_size else f"{what} per group"),
                   ("short line: group mean; dots: runs" if not by_size else "one dot per run")
                   + (f"; colour: {_axis_name(color_by)}" if color_by else "")
                   + (f"; device: {', '.join(map(str, dev))}" if dev else ""), notes)


def calibration(runs: pd.DataFrame, reliability: pd.DataFrame, baseline: str = "baseline", *,
                max_groups: int = 6, title: str | None = None) -> plt.Figure:
    """Reliability diagram of each group's final evaluation: accuracy against confidence per
    confidence bin (seeds pooled, weighted by tokens), the diagonal is perfect calibration;
    below, the share of tokens in each bin. ECE per group in the legend. With many groups: the
    reference and the best groups by loss."""
    style()
    ok_ids = set(_ok(runs).run_id)
    rel = reliability[reliability.run_id.isin(ok_ids) & (reliability["count"] > 0)] \
        if len(reliability) else reliability
    if not len(rel):
        return _empty(title or "Calibration", "No completed run has reliability bins "
                      "(imported runs and runs that did not complete have none).")
    ref, _ = reference_group(runs, baseline)
    order = [g for g in _order(runs) if g in set(rel.group)]
    shown = ([ref] if ref in order else []) + [g for g in order if g != ref]
    hidden = max(0, len(shown) - max_groups)
    shown = shown[:max_groups]
    pal = _palette_for(runs, shown, ref)
    fig, (ax, hx) = _subplots(2, 1, figsize=(7.5, 8.5), sharex=True,
                              gridspec_kw={"height_ratios": [3, 1.1]})
    ax.plot([0, 1], [0, 1], ls="--", color="#999999", lw=1, label="perfect calibration")
    for g in shown:
        sel = rel[rel.group == g].assign(wc=lambda d: d.confidence * d["count"],
                                         wa=lambda d: d.accuracy * d["count"])
        agg = sel.groupby("bin").agg(count=("count", "sum"), wc=("wc", "sum"), wa=("wa", "sum"))
        conf, acc = agg.wc / agg["count"], agg.wa / agg["count"]
        share = agg["count"] / agg["count"].sum()
        ece = float((share * (acc - conf).abs()).sum())
        lw = 2.6 if g == ref else 1.6
        ax.plot(conf, acc, "-o", color=pal[g], lw=lw, ms=4,
                label=f"{g} (ECE {ece:.3f}, n={sel.run_id.nunique()})")
        hx.plot(conf, share, "-", color=pal[g], lw=lw, drawstyle="steps-mid")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy of the top-1 prediction (fraction)")
    ax.legend(loc="upper left")
    hx.set_yscale("log")
    hx.set_ylabel("share of tokens (log)")
    hx.set_xlabel("confidence of the top-1 prediction (bin mean)")
    notes = [f"{hidden} more group(s) not shown (the reference and the best by loss are); every "
             "run's bins are in reliability.parquet."] if hidden else []
    return _finish(fig, title or "Calibration: reliability diagram of the final evaluation",
                   "seeds pooled per group, weighted by tokens per bin; points above the "
                   "diagonal: under-confident; ECE = token-weighted |accuracy - confidence|",
                   notes)


def moe_load(runs: pd.DataFrame, curves: pd.DataFrame, baseline: str = "baseline", *,
             max_groups: int = 12, title: str | None = None) -> plt.Figure:
    """Mixture-of-experts routing: per MoE group, each expert's share of the routed training
    tokens over training (one seed: expert identities differ between seeds), as a heatmap of
    log2(share / uniform share); below, the Gini coefficient and entropy of the load (thick:
    mean over seeds with 95% band; thin: seeds), which are comparable across seeds."""
    style()
    x = progress_column(curves)
    load = curves[curves.split == "expert"]
    if not len(load):
        return _empty(title or "Mixture-of-experts load", "No run logged expert load "
                      "(dense models only).")
    groups = [g for g in _order(runs) if g in set(load.group)]
    hidden = max(0, len(groups) - max_groups)
    groups = groups[:max_groups]
    ncol = min(4, len(groups))  # heatmaps four to a row: every MoE group is shown
    nrow = math.ceil(len(groups) / ncol)
    fig = plt.figure(figsize=(max(10.0, 4.2 * ncol + 1.5), 4.8 * nrow + 3.8),
                     layout="constrained")
    outer = fig.add_gridspec(2, 1, height_ratios=[1.2 * nrow, 1])
    top = outer[0].subgridspec(nrow, ncol)
    bottom = outer[1].subgridspec(1, 2)
    mats = {}
    for g in groups:
        sel = load[load.group == g]
        rid = sel.sort_values("seed").run_id.iloc[0]
        one = sel[sel.run_id == rid]
        mat = one.pivot_table(index="metric", columns=x, values="value", observed=True)
        mat.index = [int(str(i).split("_")[1]) for i in mat.index]
        mats[g] = (mat.sort_index(), one.seed.iloc[0])
    logs = [np.log2(np.clip(m.to_numpy() * len(m), 1e-3, None)) for m, _ in mats.values()]
    vmax = max(0.5, math.ceil(2 * max(float(np.abs(v).max()) for v in logs)) / 2)
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-vmax, vmax=vmax)
    heat_axes = []
    for k, (g, rel) in enumerate(zip(groups, logs)):
        mat, seed = mats[g]
        ax = fig.add_subplot(top[k // ncol, k % ncol])
        order = np.argsort(-rel[:, -1])  # the busiest expert at the end of training on top
        ax.imshow(rel[order], aspect="auto", cmap="RdBu_r", norm=norm, interpolation="nearest")
        ticks = np.unique(np.linspace(0, mat.shape[1] - 1, min(5, mat.shape[1])).round()
                          .astype(int))
        ax.set_xticks(ticks, [fmt_tokens(mat.columns[t]) for t in ticks])
        if len(mat) <= 16:
            ax.set_yticks(range(len(mat)), [f"expert {mat.index[i]}" for i in order])
        ax.set_xlabel(_x_label(x))
        ax.set_ylabel(f"{len(mat)} experts, busiest at the end on top")
        ax.set_title(f"{g} (seed {seed})")
        ax.grid(False)
        heat_axes.append(ax)
    cb = fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap="RdBu_r"), ax=heat_axes,
                      shrink=0.9)
    cb.set_label("log2(share / uniform share)")
    pal = group_palette(groups, None)
    for k, (metric, label) in enumerate((("expert_gini", "Gini coefficient of expert load\n"
                                                         "(0 = even, 1 = one expert)"),
                                         ("expert_entropy", "entropy of expert load (bits)"))):
        ax = fig.add_subplot(bottom[0, k])
        c = curves[(curves.metric == metric) & curves.group.isin(groups)]
        maxent = sorted({math.log2(load[load.group == g].metric.nunique()) for g in groups})
        for g in groups:
            gc = c[c.group == g]
            band = _curve_band(gc, x)
            if not len(band):
                continue
            n = gc.run_id.nunique()
            ax.plot(band[x], band["mean"], color=pal[g], lw=2.2, label=f"{g} (n={n})")
            for _, s in gc.groupby("run_id", observed=True):
                ax.plot(s[x], s.value, color=pal[g], lw=0.8, alpha=0.45)
            if n > 1:
                ax.fill_between(band[x], band.lo, band.hi, color=pal[g], alpha=0.1, lw=0)
        vals = c.value[np.isfinite(c.value)].tolist()
        if metric == "expert_entropy":
            for v in maxent:
                ax.axhline(v, color="#777777", ls="--", lw=1)
                ax.annotate(f"uniform: log2({2 ** v:.0f}) = {v:.2f} bits", (0.01, v),
                            xycoords=("axes fraction", "data"), va="bottom", fontsize=7.5,
                            color="#555555")
            vals += maxent
        if vals:
            ax.set_ylim(*_data_limits(vals, pad=0.12))
        ax.set_xlabel(_x_label(x))
        _eng(ax.xaxis)
        ax.set_ylabel(label)
        if k == 1:  # one legend for both, beside them: it hides no curve
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    notes = [f"{hidden} more MoE group(s) not shown."] if hidden else []
    notes.append("Bands extend beyond the axes where the 95% interval is wider than the data "
                 "(few seeds).")
    return _finish(fig, title or "Mixture-of-experts routing load",
                   "top: share of routed training tokens per expert between evaluations; "
                   "bottom: load balance over training", notes)


# --------------------------------------------------------------------------------------------------
# dispatch and saving


def lr_finder(results: Sequence[Mapping[str, Any]], path: str | Path | None = None, *,
              title: str | None = None) -> plt.Figure:
    """LR range tests (:func:`lmablate.engine.lrfind.lr_range_test` results): smoothed training loss
    vs
    learning rate, one line per run, with the suggested LRs marked; saved to ``path`` if given."""
    style()
    fig, ax = _subplots(figsize=(7.5, 4.6))
    names = [str(r.get("label") or r.get("run_id")) for r in results]
    colors = dict(zip(names, sns.color_palette("colorblind", len(names))))
    lows, highs = [], []
    for name, r in zip(names, results):
        c = pd.DataFrame(r["curve"]).dropna()
        if c.empty:
            continue
        color = colors[name]
        ax.plot(c["lr"], c["loss"], color=color, alpha=0.25, lw=0.8)
        ax.plot(c["lr"], c["smoothed"], color=color, lw=2, label=name)
        for key, marker in (("lr_steepest", "v"), ("lr_valley", "o")):
            lr = r.get(key)
            if lr:
                y = float(np.interp(np.log(lr), np.log(c["lr"]), c["smoothed"]))
                ax.plot([lr], [y], marker=marker, color=color, ms=8, mec="black", ls="none")
        if r.get("configured_lr"):
            ax.axvline(r["configured_lr"], color=color, ls=":", lw=1)
        finite = c[np.isfinite(c["smoothed"]) & np.isfinite(c["loss"])]
        lows.append(min(finite["smoothed"].min(), finite["loss"].min()))
        highs.append(finite["smoothed"].iloc[: max(1, len(finite) // 5)].max())
    ax.set_xscale("log")
    if lows:  # the start of the curve and its minimum; the blow-up at the end may leave the axes
        lo, hi = min(lows), max(highs)
        ax.set_ylim(lo - 0.1 * (hi - lo), hi + 0.25 * (hi - lo))
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss (nats/token)")
    handles, labels = ax.get_legend_handles_labels()
    from matplotlib.lines import Line2D

    handles += [Line2D([], [], marker="v", color="gray", mec="black", ls="none"),
                Line2D([], [], marker="o", color="gray", mec="black", ls="none"),
                Line2D([], [], color="gray", ls=":")]
    labels += ["steepest descent (suggested)", "valley (min-loss LR / 10)", "configured LR"]
    ax.legend(handles, labels, loc="upper left", fontsize=8)
    picks = "; ".join(f"{n}: {_num(r['lr_steepest'])} (steepest), valley {_num(r['lr_valley'])}"
                      for n, r in zip(names, results) if r.get("lr_steepest"))
    _finish(fig, title or "LR range test",
            "thick: smoothed loss (bias-corrected EMA); faint: per-step loss; the LR grows "
            "exponentially each step; the axes end above the starting loss, so the blow-up at "
            "the highest LRs leaves them", [f"Suggested LRs — {picks}" if picks else
                                        "No suggestion: the loss never fell."])
    if path is not None:
        save(fig, path)
    return fig


def draw(kind: str, runs: pd.DataFrame, curves: pd.DataFrame, *, baseline: str = "baseline",
         reliability: pd.DataFrame | None = None, summary: Mapping[str, Any] | None = None,
         title: str | None = None, **options: Any) -> plt.Figure:
    """The figure of ``kind`` (a key of :data:`lmablate.figures.plan.FIGURE_KINDS`)."""
    if kind == "loss_curves":
        return loss_curves(runs, curves, baseline, title=title, **options)
    if kind == "final_metric":
        return final_metric(runs, baseline, title=title, **options)
    if kind == "params_vs_loss":
        return params_vs_loss(runs, baseline, title=title, **options)
    if kind == "scaling_law":
        fit = (summary or {}).get("scaling") if summary is not None else None
        return scaling_law(runs, fit, title=title, **options)
    if kind == "heatmap":
        return heatmap(runs, title=title, **options)
    if kind == "lr_sensitivity":
        return lr_sensitivity(runs, baseline, title=title, **options)
    if kind == "efficiency":
        return efficiency(runs, baseline, title=title, **options)
    if kind == "calibration":
        rel = reliability if reliability is not None else pd.DataFrame(
            columns=["run_id", "group", "bin", "confidence", "accuracy", "count"])
        return calibration(runs, rel, baseline, title=title, **options)
    if kind == "moe_load":
        return moe_load(runs, curves, baseline, title=title, **options)
    if kind == "metric_vs_axis":
        return metric_vs_axis(runs, baseline, title=title, **options)
    if kind == "pareto":
        return pareto(runs, baseline, title=title, **options)
    if kind == "best_per_size":
        return best_per_size(runs, curves, baseline, title=title, **options)
    if kind == "tasks":
        from lmablate.figures.tasks import plot_tasks

        return plot_tasks(runs, baseline, title=title, **options)
    raise ValueError(f"unknown figure kind {kind!r}")


SOFTWARE = "lmablate"  # the PNG "Software" text chunk of every figure save() writes


def save(fig: plt.Figure, path: str | Path) -> None:
    """Save atomically (temp file then rename) and close the figure. PNGs are marked as
    lmablate's (:data:`SOFTWARE`), so :func:`remove_stale` can tell them from a user's files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    meta = {"Software": SOFTWARE} if path.suffix.lower() == ".png" else None
    fig.savefig(tmp, bbox_inches="tight", pad_inches=0.15, metadata=meta)
    plt.close(fig)
    os.replace(tmp, path)


def remove_stale(folder: str | Path, keep: Sequence[str | Path]) -> list[Path]:
    """Delete the PNGs in ``folder`` that :func:`save` wrote and ``keep`` does not list: the
    figures of an earlier version of the study (a figure its axes no longer support, a renamed
    one) must not pose as current. Other files, a user's own PNGs included, stay."""
    from PIL import Image

    kept = {Path(p).resolve() for p in keep}
    removed = []
    for png in sorted(Path(folder).glob("*.png")):
        if png.resolve() in kept:
            continue
        try:
            with Image.open(png) as img:
                ours = img.info.get("Software") == SOFTWARE
        except OSError:
            continue
        if ours:
            png.unlink()
            removed.append(png)
    return removed
