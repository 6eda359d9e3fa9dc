"""The sweep axes: heatmaps over two numeric axes, the learning-rate sensitivity and the LR
range test, and the final metric against each swept axis and derived ratio.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import ticker
from matplotlib.colors import Normalize
from matplotlib.transforms import blended_transform_factory

from lmablate.figures.axes import axis_value, figure_axes, heatmap_axes, numeric_axes
from lmablate.figures.style import (
    DIVERGED_COLOR,
    METRIC_LABELS,
    REFERENCE_COLOR,
    STOPPED_COLOR,
    _axis_name,
    _data_limits,
    _empty,
    _finish,
    _group_stats,
    _log_ticks,
    _num,
    _ok,
    _stopped,
    _subplots,
    _whisker,
    save,
    style,
)
from lmablate.results.collect import group_rows, lr_lines
from lmablate.results.columns import INCLUDED_STATUSES
from lmablate.results.shape import DERIVED_AXES
from lmablate.results.stats import summarize
from lmablate.results.summary import reference_group
from lmablate.units import plural

__all__ = ["heatmap", "lr_sensitivity", "lr_finder", "metric_vs_axis"]


def heatmap(runs: pd.DataFrame, *, x: str | None = None, y: str | None = None,
            facet: str | None = None, metric: str = "val_loss", title: str | None = None
            ) -> plt.Figure:
    """Mean final ``metric`` over two numeric sweep axes, one panel per value of a third.

    The grid is the variant with the most groups (other variants are single points beside it
    and are named in the subtitle). Axes beyond these three are collapsed to their best group.
    Cells where every seed failed say so; cells the sweep never visited stay grey.
    """
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
        sub += f"; not shown: {'variant' if len(others) == 1 else 'variants'} " \
            f"{', '.join(others)}"
    return _finish(fig, title or f"Final validation loss over {_axis_name(y)} x {_axis_name(x)}"
                   + (f" by {_axis_name(facet)}" if facet else ""), sub)


def lr_sensitivity(runs: pd.DataFrame, baseline: str = "baseline", *, metric: str = "val_loss",
                   max_whiskers: int = 6, title: str | None = None) -> plt.Figure:
    """Final ``metric`` against the learning rate (log x), one line per configuration (runs that
    differ only in LR, :func:`lmablate.results.harvest.lr_lines`); each line's best LR starred;
    runs that stopped early as hollow dots at their last evaluated value (in no mean), runs that
    did not complete as crosses on the top edge at their LR. Interval whiskers
    (slightly offset per line) up to ``max_whiskers`` lines; beyond that only the seeds are
    drawn. A configuration at one LR is a diamond with its seeds and interval; where no
    configuration has results at two LRs, the panel says there is no trend to show."""
    style()
    if "train.lr" not in runs or not runs["train.lr"].notna().any():
        return _empty(title or "Learning-rate sensitivity", "No run has a learning rate.")
    ref, _ = reference_group(runs, baseline)
    runs = runs_all = runs.assign(line=lr_lines(runs))
    ok = ok_all = _ok(runs)
    ok = ok_all = ok[ok[metric].notna()]
    ref_mean = ok[ok.group == ref][metric].mean() if ref is not None else float("nan")
    n_lr = runs.groupby("line")["train.lr"].nunique()
    single = sorted(n_lr[n_lr < 2].index)
    runs = runs[runs.line.isin(n_lr[n_lr >= 2].index)]
    ok = ok[ok.line.isin(runs.line)]
    with_result = ok_all.groupby("line")["train.lr"].nunique()
    flat = bool(len(with_result) and with_result.max() < 2)  # no line has two LRs with results
    fig, ax = _subplots(figsize=(10.5, 6))
    ax.set_xscale("log")
    show_ref = bool(np.isfinite(ref_mean) and len(ok) and not (ok.group == ref).any())
    if show_ref:  # drawn as the reference line, not as a point of its own
        single = [k for k in single if not (runs_all[runs_all.line == k].group == ref).all()]
    shown = ok if len(ok) else ok_all  # the reference line stays inside the axes, however far
    early = _stopped(runs, metric)
    if len(shown) or len(early):
        limits = _data_limits(shown[metric].tolist() + early[metric].tolist()
                              + ([ref_mean] if show_ref else []), pad=0.1)
        ax.set_ylim(*(_room_below(limits) if flat else limits))
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
            if len(pts) > 1:  # a best LR needs two LRs with a result
                ax.plot(best[0] * dodge, best[1].mean, "*", color=pal[key], ms=15,
                        mec="black", mew=0.6, zorder=5)
    if len(early):  # ended by early stopping (or stop_tokens): their last value, in no mean
        for key, e in early.groupby("line"):
            ax.scatter(e["train.lr"], e[metric], facecolors="white", s=40, lw=1.5,
                       edgecolors=pal.get(key, STOPPED_COLOR), zorder=4)
        ax.scatter([], [], facecolors="white", edgecolors=STOPPED_COLOR, s=40, lw=1.5,
                   label=f"stopped early ({plural(len(early), 'run')}; last evaluated value, "
                   "in no mean)")
    bad = runs[~runs.status.isin(INCLUDED_STATUSES) & ~runs.index.isin(early.index)]
    if len(bad):
        trans = blended_transform_factory(ax.transData, ax.transAxes)
        for key, b in bad.groupby("line"):
            ax.scatter(b["train.lr"], [0.98] * len(b), marker="x", s=60, lw=2.2,
                       color=pal.get(key, DIVERGED_COLOR), transform=trans, clip_on=False,
                       zorder=6)
        ax.scatter([], [], marker="x", color=DIVERGED_COLOR, label=f"did not complete "
                   f"({plural(len(bad), 'run')}; top edge, colour of their line)")
    shared = ok_all[ok_all.line.isin(single[:10])].groupby("train.lr").line.nunique()
    for k, key in enumerate(single[:10]):  # one LR only: a point with its seeds, not a line
        sel = ok_all[ok_all.line == key]
        if len(sel):
            color = sns.color_palette("dark", 10)[k]
            s = summarize(sel[metric].tolist())
            lr = float(sel["train.lr"].iloc[0])
            if shared.get(lr, 1) > 1:  # configurations at the same LR side by side
                lr *= 10 ** (0.03 * (k - (min(len(single), 10) - 1) / 2))
            ax.scatter([lr] * len(sel), sel[metric], color=color, s=12, alpha=0.6, zorder=3)
            if s.n > 1:
                clipped |= _whisker(ax, s.mean, s.ci_low, s.ci_high, lr, color,
                                    horizontal=False)
            ax.plot(lr, s.mean, "D", color=color, ms=7, mec="black", mew=0.6, zorder=5,
                    label=f"{key} (one LR, n={s.n})")
    lrs = runs_all["train.lr"][runs_all["train.lr"] > 0]  # every LR in view, crosses included
    if lrs.nunique() == 1:  # one LR: half a decade either side of it
        ax.set_xlim(float(lrs.iloc[0]) / 3, float(lrs.iloc[0]) * 3)
    elif len(lrs):  # markers and the top-edge crosses do not autoscale; dodged points 5% aside
        ax.set_xlim(*_data_limits([lrs.min() / 1.05, lrs.max() * 1.05], pad=0.06, log=True))
    if flat:
        _no_trend(ax, _one_lr_text(runs_all, ok_all))
    elif len(lines):
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
                   ("line: mean over seeds per LR; " if len(lines) else "diamond: mean over "
                    "seeds; ") + "dots: seeds"
                   + ("; whisker: 95% Student-t interval" if whiskers else ""), notes)


def _one_lr_text(runs: pd.DataFrame, ok: pd.DataFrame) -> str:
    """Why an LR figure has no trend: the study ran one LR, each configuration ran at one, or
    only one LR of each configuration has a result."""
    if runs["train.lr"].nunique() < 2:
        return (f"One learning rate ({_num(float(runs['train.lr'].dropna().iloc[0]))}): no trend "
                "to show. Sweep train.lr to see one.")
    if runs.groupby("line")["train.lr"].nunique().max() < 2:
        return ("Each configuration ran at one learning rate: no trend to show. Sweep train.lr "
                "within a configuration to see one.")
    lost = len(runs) - len(ok)
    return (f"One learning rate with a result per configuration: no trend to show; "
            f"{plural(lost, 'run')} at other LRs did not finish (crosses at the top edge).")


def _room_below(limits: tuple[float, float]) -> tuple[float, float]:
    """Y limits grown downward by a band for :func:`_no_trend`'s text, so it covers no point
    (set before anything is drawn: whiskers are clipped to the limits they meet)."""
    lo, hi = limits
    return lo - 0.45 * (hi - lo), hi


def _no_trend(ax: plt.Axes, text: str) -> None:
    """Say inside the axes, in the band :func:`_room_below` made, that a figure of a trend has
    one point per line."""
    ax.text(0.5, 0.04, "\n".join(textwrap.wrap(text, 60)), transform=ax.transAxes,
            ha="center", va="bottom", fontsize=9.5, color="#333333", zorder=7,
            bbox={"boxstyle": "round,pad=0.4", "fc": "#f4f4f4", "ec": "#bbbbbb"})


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


def _axis_panel(ax: plt.Axes, rows: pd.DataFrame, axis: str, metric: str, ref: str | None,
                max_lines: int) -> dict[str, Any]:
    """One panel of :func:`metric_vs_axis`; returns what its legend and notes need."""
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
            ax.plot(best.x, best["mean"], "*" if len(s) > 1 else "o", color=color,
                    ms=15 if len(s) > 1 else 6, mec="black", mew=0.6, zorder=5)
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
        _star_label(ax, top.x, top["mean"], str(top.group))
    if ref is not None and (st.group == ref).any():
        r = st[st.group == ref].iloc[0]
        ax.axhline(r["mean"], color=REFERENCE_COLOR, ls=":", lw=1, zorder=1)
    bad = rows[~rows.status.isin(INCLUDED_STATUSES)]
    if len(bad):
        trans = blended_transform_factory(ax.transData, ax.transAxes)
        ax.scatter(bad["_x"], [0.98] * len(bad), marker="x", s=50, lw=2, color=DIVERGED_COLOR,
                   transform=trans, clip_on=False, zorder=6)
        out["bad"] = len(bad)
    if len(st) and st.x.nunique() < 2:  # a trend needs results at two values of the axis
        lost = f"; {plural(len(bad), 'run')} at other values did not finish (crosses at the " \
            "top edge)" if len(bad) else ""
        _no_trend(ax, f"Only {_axis_name(axis)} = {st.x.iloc[0]:.4g} has a result: no trend "
                  f"to show{lost}.")
    _set_value_ticks(ax, xs.tolist(), log)
    ax.set_xlabel(_axis_label(axis) + (" (log scale)" if log else ""))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=7)
    return out


def _star_label(ax: plt.Axes, x: float, y: float, text: str) -> None:
    """The best configuration's name beside its star, inside the panel: toward the panel's
    wider side of the star, wrapped between its settings, so it never runs into the next
    panel."""
    fx = ax.transAxes.inverted().transform(ax.transData.transform((x, y)))[0]
    left = fx > 0.5  # the star is in the right half: the label goes left of it
    ax.annotate("\n".join(textwrap.wrap(text, 24, break_long_words=False)), (x, y),
                xytext=(-8 if left else 8, 9), textcoords="offset points",
                ha="right" if left else "left", va="bottom", fontsize=7, zorder=6,
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85})


def metric_vs_axis(runs: pd.DataFrame, baseline: str = "baseline", *, metric: str = "val_loss",
                   axes: Sequence[str] | None = None, max_lines: int = 4,
                   title: str | None = None) -> plt.Figure:
    """Final ``metric`` against each swept numeric axis and derived ratio
    (:func:`lmablate.figures.axes.figure_axes`), one panel each, y shared.

    Where each value of the axis is one configuration per line (a one-axis sweep, or a grid with
    at most ``max_lines`` settings of the other axes): the mean over seeds with its 95%
    t-interval, the seeds as dots, the best value starred. Where many configurations share a
    value (a grid, a derived ratio): every configuration's mean in grey, the median and the best
    at each value as lines, the best overall starred and named. A run that several sweep points
    share (a one-axis sweep's centre) is on each of their axes. Loss figures give the perplexity
    on the right axis.
    """
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
    recs = ok.to_dict("records")
    if any(len({axis_value(r, a) for r in recs} - {None}) < 2 for a in axes):
        ylim = _room_below(ylim)  # a panel says it has no trend (one value with results)
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
