"""The task figure: per-task accuracy of every group, with seed intervals and the chance line.

One panel per task (``task.<name>`` columns of the runs table, see
:func:`lmablate.evaluation.tasks_to_columns`), groups as rows in the study's order, the reference
group in bold. Each seed is a small dot, the mean over seeds a large one with its 95% Student-t
interval; a dashed red line marks chance (a uniform guess) and a dotted grey one the majority
answer when that differs. Axes are scaled to the data and the chance level, never to the
intervals: with two seeds a t-interval spans +-12.7 standard errors, so a clipped whisker ends
in an arrow head instead of flattening every difference.
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt

from lmablate.figures.style import DIVERGED_COLOR, group_palette, style
from lmablate.results.columns import INCLUDED_STATUSES
from lmablate.results.stats import summarize
from lmablate.results.summary import reference_group
from lmablate.units import plural

__all__ = ["plot_tasks", "task_names"]

MIN_SPAN = 0.1  # narrowest accuracy range an axis shows
_VALUE = re.compile(r"^task\.([A-Za-z0-9][A-Za-z0-9_-]*)$")


def task_names(runs: Any) -> list[str]:
    """Tasks with a value column in ``runs``, in column order."""
    return [m.group(1) for c in runs.columns if (m := _VALUE.match(str(c)))]


def _first(runs: Any, column: str) -> Any:
    """The first non-null value of ``column`` (task-level facts such as n or chance)."""
    if column not in runs:
        return None
    s = runs[column].dropna()
    return s.iloc[0] if len(s) else None


def plot_tasks(runs: Any, baseline: str = "baseline", *, tasks: Sequence[str] | None = None,
               title: str | None = None, ncols: int = 4) -> Any:
    """Figure of per-task accuracy per group (``runs``: a runs table with task columns)."""
    style()
    names = list(tasks) if tasks is not None else task_names(runs)
    ok = runs[runs.status.isin(INCLUDED_STATUSES)] if "status" in runs else runs
    names = [t for t in names if f"task.{t}" in ok and ok[f"task.{t}"].notna().any()]
    if not names:
        fig, ax = plt.subplots(figsize=(7, 2.4), layout="constrained")
        ax.axis("off")
        ax.text(0.5, 0.5, "No run has task results (tasks.json).", ha="center", va="center")
        fig.suptitle(title or "Downstream tasks", x=0.01, ha="left")
        return fig
    groups = list(dict.fromkeys(runs.group))
    ref, _ = reference_group(runs, baseline)
    pal = group_palette(runs.group, ref)
    ncols = min(ncols, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols + 1.2, (0.38 * len(groups) + 1.5)
                                                    * nrows), layout="constrained", sharey=True,
                             squeeze=False)
    clipped = False
    for k, name in enumerate(names):
        ax = axes[k // ncols][k % ncols]
        col = f"task.{name}"
        chance, majority = _first(ok, f"{col}.chance"), _first(ok, f"{col}.majority")
        values = ok[col].dropna().tolist()
        levels = [v for v in (chance, majority) if v is not None]
        lo, hi = min(values + levels), max(values + levels)
        if hi - lo < MIN_SPAN:  # equal accuracies (tiny dev sets) still get a readable axis
            lo, hi = (lo + hi - MIN_SPAN) / 2, (lo + hi + MIN_SPAN) / 2
        pad = (hi - lo) * 0.1
        ax.set_xlim(max(lo - pad, -0.02), min(hi + pad, 1.02))
        ax.set_ylim(len(groups) - 0.5, -0.5)
        x0, x1 = ax.get_xlim()
        for i, g in enumerate(groups):
            vals = ok[ok.group == g][col].dropna().tolist()
            s = summarize(vals)
            if s is None:
                ax.text((x0 + x1) / 2, i, "no result", ha="center", va="center", fontsize=7.5,
                        color=DIVERGED_COLOR)
                continue
            if s.n > 1:
                a, b = max(s.ci_low, x0), min(s.ci_high, x1)
                ax.plot([a, b], [i, i], color=pal[g], lw=2, solid_capstyle="butt", zorder=2)
                for end, edge, marker in ((s.ci_low, a, "<"), (s.ci_high, b, ">")):
                    if end != edge:
                        clipped = True
                        ax.plot(edge, i, marker=marker, color=pal[g], ms=7, clip_on=False)
            ax.plot(s.mean, i, "o", color=pal[g], ms=8, mec="white", mew=0.8, zorder=4)
            ax.scatter(vals, [i] * len(vals), color=pal[g], s=14, alpha=0.8, zorder=5,
                       edgecolor="black", lw=0.4)
        lines = []
        if chance is not None:
            ax.axvline(chance, color=DIVERGED_COLOR, ls="--", lw=1.2, zorder=1)
            lines.append(f"chance {chance:.2f}")
        if majority is not None and chance is not None and abs(majority - chance) > 0.005:
            ax.axvline(majority, color="#777777", ls=":", lw=1.2, zorder=1)
            lines.append(f"majority {majority:.2f}")
        metric, n = _first(ok, f"{col}.metric") or "acc", _first(ok, f"{col}.n")
        mode = "fine-tuned" if name.endswith("_ft") else "zero-shot"
        ax.set_title(f"{name}\n{metric}, {mode}" + (f", n={int(n)}" if n else ""), fontsize=10)
        ax.set_xlabel(f"{metric} (higher is better)" + ("\n" + ", ".join(lines) if lines else ""))
    for k in range(len(names), nrows * ncols):
        axes[k // ncols][k % ncols].axis("off")
    for row in axes:
        row[0].set_yticks(range(len(groups)), groups)
        for t in row[0].get_yticklabels():
            if t.get_text() == ref:
                t.set_fontweight("bold")
    notes = ["big dot: mean over seeds; small dots: seeds; whisker: 95% Student-t interval of the "
             "mean; dashed red: chance (uniform guess); dotted grey: always the majority answer."]
    if clipped:
        notes.append("Arrow heads: the interval continues beyond the axis, which is scaled to the "
                     "data (n=2 seeds: +-12.7 standard errors).")
    bad = runs[~runs.status.isin(INCLUDED_STATUSES)] if "status" in runs else runs.iloc[0:0]
    if len(bad):
        notes.append(f"{plural(len(bad), 'run')} not scored "
                     f"({', '.join(sorted(set(bad.status)))}).")
    fig.suptitle(title or "Downstream tasks per group", x=0.01, ha="left", fontweight="bold")
    fig.supxlabel("\n".join(textwrap.fill(n, 150) for n in notes), fontsize=7.5, x=0.01,
                  ha="left", color="#555555")
    return fig
