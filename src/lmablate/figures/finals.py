"""How the final models compare: the final metric per group (mean, 95% t-interval and
seeds, best first) and the calibration of the final evaluation (reliability diagram).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib import ticker
from matplotlib.transforms import blended_transform_factory

from lmablate.figures.style import (
    DIVERGED_COLOR,
    HIGHER_IS_BETTER,
    METRIC_LABELS,
    REFERENCE_COLOR,
    SELECTED_COLOR,
    STOPPED_COLOR,
    _ci_text,
    _empty,
    _finish,
    _limits_with_intervals,
    _num,
    _ok,
    _order,
    _palette_for,
    _stopped,
    _subplots,
    _whisker,
    group_palette,
    style,
)
from lmablate.results.columns import INCLUDED_STATUSES
from lmablate.results.stats import summarize
from lmablate.results.summary import reference_group
from lmablate.units import plural

__all__ = ["final_metric", "calibration"]


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
    ``higher``: whether higher is better (default: known metrics such as accuracy). A run that
    stopped early (early stopping, ``stop_tokens``) is a hollow dot at its last evaluated value,
    marked with the step it stopped at: never in a mean, and its group ranked after the groups
    with a final value.
    """
    style()
    geometric = metric == "val_ppl" if geometric is None else geometric
    higher = metric in HIGHER_IS_BETTER if higher is None else higher
    ref, _ = reference_group(runs, baseline)
    ok = _ok(runs)
    ok = ok[ok[metric].notna()] if metric in ok else ok.iloc[0:0]
    stopped = _stopped(runs, metric)
    order = _order(runs, metric, higher)
    ended = stopped.groupby("group", observed=True)[metric].mean()
    ended = [g for g in ended.sort_values(ascending=not higher).index if g not in set(ok.group)]
    order = [g for g in order if g in set(ok.group)] + ended + \
        [g for g in order if g not in set(ok.group) and g not in ended]
    hidden = max(0, len(order) - max_groups)
    order = order[:max_groups]
    label = METRIC_LABELS.get(metric, metric)
    if not len(ok) and not len(stopped):
        return _empty(title or label.capitalize(), f"No run has a final {metric}.")
    pal = group_palette(runs.group, ref)
    starred = ok[ok.run_id.isin(list(selected))]  # the selected runs (stars), once
    fig, ax = _subplots(figsize=(10, 0.42 * len(order) + 2.2))
    stats = {g: _summary(ok[ok.group == g][metric].tolist(), geometric) for g in order}
    values = ok[ok.group.isin(order)][metric].tolist() + \
        stopped[stopped.group.isin(order)][metric].tolist()
    if geometric:
        ax.set_xscale("log")
    bounds = [v for st_ in stats.values() if st_ is not None and st_.n > 1
              for v in (st_.ci_low, st_.ci_high)]
    ax.set_xlim(*_limits_with_intervals(values, bounds, log=geometric))
    lo, hi = ax.get_xlim()
    if geometric and hi / lo < 10:  # within a decade matplotlib labels minor ticks "4.4 x 10^1"
        ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(ticker.FormatStrFormatter("%g"))
    ax.set_ylim(len(order) - 0.5, -0.5)
    trans = blended_transform_factory(ax.transAxes, ax.transData)
    clipped = False
    bad = runs[~runs.status.isin(INCLUDED_STATUSES) & ~runs.run_id.isin(stopped.run_id)]
    for i, g in enumerate(order):
        s = stats[g]
        nb = bad[bad.group == g]
        fail = (f"  +{len(nb)} {'/'.join(sorted(set(nb.status)))}" if len(nb) else "")
        early = stopped[stopped.group == g]
        if len(early):
            ax.scatter(early[metric], [i] * len(early), s=46, facecolor="white",
                       edgecolor=pal[g], lw=1.6, zorder=5)
            said = _stopped_text(early, metric)
            fail = f"{said}; {fail.strip()}" if fail else said
            if s is None:
                ax.text(1.04, i, said, transform=trans, va="center", fontsize=8,
                        color=STOPPED_COLOR)
                if len(nb):
                    ax.text(1.04, i + 0.32, f"+{len(nb)} {'/'.join(sorted(set(nb.status)))}",
                            transform=trans, va="center", fontsize=7.5, color=DIVERGED_COLOR)
                continue
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
                        color=STOPPED_COLOR if len(early) and not len(nb) else DIVERGED_COLOR)
        else:
            seeds = "the seed" if len(nb) == 1 else f"all {len(nb)} seeds"
            ax.text(0.5, i, f"{seeds} {'/'.join(sorted(set(nb.status)))}: no final value",
                    transform=trans, ha="center", va="center", fontsize=8.5,
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
        notes.append(f"{plural(hidden, 'more group')} not shown; all are in analysis.txt and "
                     "runs.csv.")
    sub = ("dot: geometric mean over seeds (exp of the mean loss); small dots: seeds; whisker: "
           "exp of the 95% Student-t interval of the mean loss" if geometric else
           "dot: mean over seeds; small dots: seeds; whisker: 95% Student-t interval of the mean")
    if chosen_groups:
        sub += "; star, label in green: selected"
    if len(stopped):
        sub += ("; hollow dot: the last evaluated value of a run that stopped early (in no mean, "
                "never selected)")
    return _finish(fig, title or f"{name[0].upper()}{name[1:]} per group, best first", sub, notes)


def _stopped_text(early: pd.DataFrame, metric: str) -> str:
    """"stopped early at step 12: 3.456" (one run) or "2 seeds stopped early at steps 12,
    14": what the figure says beside a group's runs that stopped early."""
    steps = [int(v) for v in early.get("stopped_early_at_step", pd.Series(dtype=float))
             if pd.notna(v)]
    at = f" at step{'s' if len(steps) > 1 else ''} {', '.join(f'{v:,}' for v in steps)}" \
        if steps else ""
    if len(early) == 1:
        return f"stopped early{at}: {_num(float(early[metric].iloc[0]))}"
    return f"{plural(len(early), 'seed')} stopped early{at}"


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
    notes = [f"{plural(hidden, 'more group')} not shown (the reference and the best by loss "
             "are); every run's bins are in reliability.parquet."] if hidden else []
    return _finish(fig, title or "Calibration: reliability diagram of the final evaluation",
                   "seeds pooled per group, weighted by tokens per bin; points above the "
                   "diagonal: under-confident; ECE = token-weighted |accuracy - confidence|",
                   notes)
