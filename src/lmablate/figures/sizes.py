"""Model size and compute: parameters against loss with the Pareto frontier, the fitted
scaling law, compute against quality, and the best configuration per size bucket.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.transforms import blended_transform_factory

from lmablate.figures.style import (
    DIVERGED_COLOR,
    METRIC_LABELS,
    REFERENCE_COLOR,
    SELECTED_COLOR,
    _axis_legend,
    _axis_name,
    _color_axis,
    _data_limits,
    _empty,
    _eng,
    _finish,
    _group_stats,
    _log_ticks,
    _num,
    _ok,
    _palette_for,
    _subplots,
    _value_colors,
    _whisker,
    style,
)
from lmablate.results.collect import group_rows
from lmablate.results.columns import INCLUDED_STATUSES, progress_column
from lmablate.results.scaling import fit_study, predict
from lmablate.results.shape import size_bucket
from lmablate.results.stats import pareto_front, summarize
from lmablate.results.summary import reference_group
from lmablate.units import fmt_count, fmt_tokens, plural

__all__ = ["params_vs_loss", "scaling_law", "pareto", "best_per_size", "X_LABELS"]


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
            label=f"Pareto frontier ({plural(len(front), 'group')})")
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
                   label=f"did not complete ({plural(len(bad), 'run')}, top edge)")
    ax.set_xlabel(("total" if params == "params_total" else "non-embedding")
                  + " parameters (log scale)")
    _log_ticks(ax.xaxis)
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.legend(loc="upper right")
    return _finish(fig, title or "Parameters vs final validation loss",
                   f"{plural(len(g), 'group')}, {plural(len(ok), 'completed run')}; dashed: Pareto "
                   "frontier"
                   + (f"; colour: {_axis_name(color_by)}" if color_by else ""))


def scaling_law(runs: pd.DataFrame, fit: Mapping[str, Any] | None = None, *,
                metric: str = "val_loss", title: str | None = None) -> plt.Figure:
    """Final loss against N (log x) with the fitted law L(N) = E + A/N^alpha and its bootstrap
    band; the runs the fit used (the best group at each size) in colour, the other settings at
    the same sizes in grey; with several budgets, the two-term law's curve for each budget."""
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
                   label=f"other settings at the same sizes ({plural(len(rest), 'run')}, not "
                         "fitted)")
    budgets = fit.get("budgets") or []
    pal = dict(zip(budgets, sns.color_palette("crest", max(len(budgets), 1))))
    if len(budgets) > 1:
        for d in budgets:
            sel = used[used.tokens == d]
            ax.scatter(sel[col], sel[metric], s=14, color=pal[d], zorder=3, alpha=0.7, lw=0,
                       label=f"seeds of fitted groups, D = {fmt_tokens(d)} tokens")
    else:
        ax.scatter(used[col], used[metric], s=14, color="#4c72b0", alpha=0.6, zorder=3, lw=0,
                   label=f"seeds of the fitted groups ({plural(len(used), 'run')})")
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
               label=f"seeds ({plural(len(ok), 'run')})")
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
                   label=f"did not complete ({plural(len(bad), 'run')}, top edge)")
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
        notes.append(f"{plural(len(on) - max_labels, 'more frontier configuration')} not "
                     "named.")
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
    """Which model to train at each size: the configurations grouped into parameter-count
    buckets (1-2.5-5 series), each bucket one row; every configuration's validation loss after
    N training tokens (``at``; default: the furthest point every run of the bucket reached) as a
    grey dot, the lowest starred and named with its size, loss and N."""
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
