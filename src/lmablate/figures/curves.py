"""Loss curves: each group's validation (or training) curve next to the reference's, mean
and 95% t-band over seeds; with many groups one overview coloured by model size.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm

from lmablate.figures.style import (
    BAND_NOTE,
    DIVERGED_COLOR,
    METRIC_LABELS,
    _axis_name,
    _color_axis,
    _curve_band,
    _data_limits,
    _empty,
    _eng,
    _finish,
    _log_ticks,
    _ok,
    _order,
    _subplots,
    _x_label,
    group_palette,
    style,
)
from lmablate.results.columns import INCLUDED_STATUSES, PRIMARY, progress_column
from lmablate.results.stats import compare
from lmablate.results.summary import reference_group

__all__ = ["loss_curves"]


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
