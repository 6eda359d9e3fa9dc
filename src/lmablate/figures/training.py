"""How the runs trained: throughput, peak memory and data efficiency against model size,
and the routing load of mixture-of-experts models over training.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import TwoSlopeNorm

from lmablate.figures.style import (
    DIVERGED_COLOR,
    METRIC_LABELS,
    _axis_legend,
    _axis_name,
    _color_axis,
    _curve_band,
    _data_limits,
    _empty,
    _eng,
    _finish,
    _log_ticks,
    _order,
    _subplots,
    _value_colors,
    _x_label,
    group_palette,
    style,
)
from lmablate.results.columns import INCLUDED_STATUSES, progress_column
from lmablate.results.shape import spans_sizes
from lmablate.results.summary import reference_group
from lmablate.units import fmt_tokens, plural

__all__ = ["efficiency", "moe_load"]


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
    notes = [f"{plural(hidden, 'more MoE group')} not shown."] if hidden else []
    notes.append("Bands extend beyond the axes where the 95% interval is wider than the data "
                 "(few seeds).")
    return _finish(fig, title or "Mixture-of-experts routing load",
                   "top: share of routed training tokens per expert between evaluations; "
                   "bottom: load balance over training", notes)
