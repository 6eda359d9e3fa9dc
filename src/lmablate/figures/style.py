"""What every figure shares: one seaborn style, the colours, the layout of titles and
notes, axis limits that follow the data, clipped interval whiskers, and saving. The helpers
with a leading underscore are shared by the family modules of this package, not public API.

Honest intervals: with two seeds the 95% t-interval of a mean is +-12.7 standard errors, far
wider than the spread of the data. Axes are therefore scaled to the data (seeds and means), never
to the intervals; a whisker or band that leaves the axes is clipped and marked (an arrow at the
edge, a note in the panel), and the full interval is printed beside it with n.
"""

from __future__ import annotations

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
from matplotlib.colors import LogNorm, Normalize  # noqa: E402

from lmablate.figures.axes import numeric_axes
from lmablate.results.columns import INCLUDED_STATUSES, PRIMARY
from lmablate.results.stats import summarize

__all__ = ["style", "group_palette", "save", "remove_stale", "REFERENCE_COLOR", "DIVERGED_COLOR",
           "SELECTED_COLOR", "STOPPED_COLOR", "METRIC_LABELS", "SOFTWARE"]

REFERENCE_COLOR = "#3a3a3a"
DIVERGED_COLOR = "#c0392b"
SELECTED_COLOR = "#1e8449"
STOPPED_COLOR = "#b9770e"  # a run that stopped early: ended, not failed
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


def _stopped(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The runs that stopped early and have a value of ``metric`` (their last evaluation)."""
    if metric not in runs:
        return runs.iloc[0:0]
    return runs[(runs.status == "stopped_early") & runs[metric].notna()]


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



def _curve_band(c: pd.DataFrame, x: str) -> pd.DataFrame:
    """Mean and 95% t-interval over seeds at each x."""
    rows = []
    for xv, g in c.groupby(x):
        s = summarize(g.value.tolist())
        if s is not None:
            rows.append({x: xv, "mean": s.mean, "lo": s.ci_low, "hi": s.ci_high, "n": s.n})
    return pd.DataFrame(rows, columns=[x, "mean", "lo", "hi", "n"])


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
