"""Figures from harvested tables (seaborn, one style). Every function takes the DataFrames that
:func:`lmablate.load_results` returns and returns a matplotlib Figure, so a notebook can redraw
or extend any figure of a study.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .stats import summarize  # noqa: E402

__all__ = ["style", "loss_curves", "final_metric", "save", "BASELINE_COLOR", "variant_palette"]

BASELINE_COLOR = "#4d4d4d"
METRIC_LABELS = {
    "loss": "validation loss (nats/token)", "val_loss": "final validation loss (nats/token)",
    "best_val_loss": "best validation loss (nats/token)", "val_ppl": "validation perplexity",
    "val_acc": "next-token accuracy (top-1)", "val_top5": "next-token accuracy (top-5)",
    "tokens_per_s": "training throughput (tokens/s)",
}


def style() -> None:
    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.95)
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 150, "axes.titleweight": "bold",
                         "axes.spines.top": False, "axes.spines.right": False})


def variant_palette(variants: Sequence[str], baseline: str) -> dict[str, str]:
    others = [v for v in variants if v != baseline]
    colors = sns.color_palette("colorblind", max(len(others), 1))
    pal = {v: colors[i % len(colors)] for i, v in enumerate(others)}
    pal[baseline] = BASELINE_COLOR
    return pal


def _band(curves: pd.DataFrame) -> pd.DataFrame:
    """Mean and 95% t-interval over seeds at each token count."""
    rows = []
    for tokens, g in curves.groupby("tokens"):
        s = summarize(g.value.tolist())
        if s is not None:
            rows.append({"tokens": tokens, "mean": s.mean, "lo": s.ci_low, "hi": s.ci_high,
                         "n": s.n})
    return pd.DataFrame(rows)


def loss_curves(runs: pd.DataFrame, curves: pd.DataFrame, baseline: str = "baseline", *,
                split: str = "val", metric: str = "loss", log_x: bool = False,
                title: str | None = None) -> plt.Figure:
    """One panel per variant: its curve vs the baseline's, mean +- 95% CI band over seeds.

    Diverged runs are drawn individually (dotted) and marked where they stopped.
    """
    style()
    c = curves[(curves.split == split) & (curves.metric == metric)]
    status = runs.set_index("run_id").status
    variants = list(dict.fromkeys(runs.variant))
    others = [v for v in variants if v != baseline] or variants
    pal = variant_palette(variants, baseline)
    ncols = min(3, len(others))
    nrows = int(np.ceil(len(others) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.5 * nrows), sharex=True,
                             sharey=True, squeeze=False)
    finite = c.value[np.isfinite(c.value)]
    for ax, variant in zip(axes.flat, others):
        for v in ([baseline] if baseline in variants and variant != baseline else []) + [variant]:
            vc = c[c.variant == v]
            ok = vc[vc.run_id.map(status).eq("completed")]
            n_seeds = ok.run_id.nunique()
            band = _band(ok)
            if len(band):
                label = f"{v} (n={n_seeds})"
                ax.plot(band.tokens, band["mean"], color=pal[v], lw=2, label=label)
                if n_seeds > 1:
                    ax.fill_between(band.tokens, band.lo, band.hi, color=pal[v], alpha=0.2, lw=0)
            for rid, g in vc[~vc.run_id.map(status).eq("completed")].groupby("run_id"):
                g = g.sort_values("tokens")
                ax.plot(g.tokens, g.value.clip(upper=finite.max() if len(finite) else None),
                        color=pal[v], ls=":", lw=1.5,
                        label=f"{v}: {status[rid]} (seed {int(g.seed.iloc[0])})")
                ax.plot(g.tokens.iloc[-1:], g.value.clip(upper=finite.max()).iloc[-1:], "x",
                        color=pal[v], ms=8, mew=2)
        ax.set_title(variant if variant != baseline else f"{baseline}")
        ax.legend(fontsize=8, loc="upper right", frameon=True)
        if log_x:
            ax.set_xscale("log")
    for ax in axes.flat[len(others):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("training tokens")
        ax.xaxis.set_major_formatter(matplotlib.ticker.EngFormatter(sep=""))
    for ax in axes[:, 0]:
        ax.set_ylabel(METRIC_LABELS.get(metric, metric) if split == "val" else f"train {metric}")
    if len(finite):
        lo, hi = float(finite.min()), float(np.percentile(finite, 95))
        pad = 0.05 * (hi - lo or 1)
        axes[0, 0].set_ylim(lo - pad, hi + pad)
    fig.suptitle(title or f"{'Validation' if split == 'val' else 'Training'} {metric} vs "
                 f"{baseline} (mean, 95% CI over seeds)", fontweight="bold")
    fig.tight_layout()
    return fig


def final_metric(runs: pd.DataFrame, baseline: str = "baseline", metric: str = "val_loss", *,
                 title: str | None = None, lower_is_better: bool = True) -> plt.Figure:
    """Final metric per variant: mean with 95% t-interval over seeds, every seed as a dot,
    sorted best first, the baseline mean as a dashed line; diverged runs listed, not dropped."""
    style()
    ok = runs[(runs.status == "completed") & runs[metric].notna()]
    order = (ok.groupby("variant")[metric].mean().sort_values(ascending=lower_is_better)
             .index.tolist())
    bad = runs[runs.status != "completed"]
    order += [v for v in dict.fromkeys(bad.variant) if v not in order]
    pal = variant_palette(list(dict.fromkeys(runs.variant)), baseline)
    fig, ax = plt.subplots(figsize=(7.5, 0.55 * len(order) + 1.8))
    for i, v in enumerate(order):
        vals = ok[ok.variant == v][metric].tolist()
        s = summarize(vals)
        if s is not None:
            ax.errorbar(s.mean, i, xerr=[[s.mean - s.ci_low], [s.ci_high - s.mean]] if s.n > 1
                        else None, fmt="o", color=pal[v], ms=8, capsize=4, lw=2, zorder=3)
            ax.scatter(vals, [i] * len(vals), color=pal[v], s=18, alpha=0.6, zorder=4,
                       edgecolor="white", lw=0.5)
            ax.annotate(f"{s.mean:.3f}  (n={s.n})", (s.ci_high if s.n > 1 else s.mean, i),
                        xytext=(8, 0), textcoords="offset points", va="center", fontsize=8)
        nb = bad[bad.variant == v]
        if len(nb):
            ax.annotate(f"{len(nb)} run(s) {', '.join(sorted(set(nb.status)))}",
                        (1.0, i), xycoords=("axes fraction", "data"), xytext=(-4, -9),
                        textcoords="offset points", ha="right", fontsize=8, color="#b2182b")
    if baseline in set(ok.variant):
        ax.axvline(ok[ok.variant == baseline][metric].mean(), color=BASELINE_COLOR, ls="--",
                   lw=1, label=f"{baseline} mean")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_yticks(range(len(order)), order)
    ax.set_ylim(len(order) - 0.5, -0.5)
    ax.set_xlabel(METRIC_LABELS.get(metric, metric))
    ax.margins(x=0.25)
    ax.set_title(title or f"{METRIC_LABELS.get(metric, metric).split(' (')[0].capitalize()} per "
                 "variant (mean, 95% CI over seeds; dots = seeds)")
    fig.tight_layout()
    return fig


def save(fig: plt.Figure, path: str | Path) -> None:
    """Save atomically (temp file then rename) and close the figure."""
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
