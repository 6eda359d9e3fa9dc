"""Figures from the harvested tables: every kind a study's report shows, one module per family.

    axes      what a study's runs support: numeric sweep axes, derived ratios, heatmap grids
    registry  every figure kind in one table (what it shows, which runs support it, its draw)
    plan      which figures a study gets (its runs, or its own ``figures:`` pick)
    style     the shared style, colours, layout, axis limits, interval whiskers, saving
    curves    loss curves against training tokens
    finals    the final metric per group, calibration of the final evaluation
    sizes     parameters vs loss, the scaling law, compute vs quality, best per size
    sweeps    heatmaps, learning-rate sensitivity, the LR range test, metric vs each axis
    training  throughput, memory and data efficiency; mixture-of-experts routing load
    tasks     downstream task accuracy per group

Every figure function takes the DataFrames :func:`lmablate.load_results` returns and returns a
matplotlib Figure, so a notebook can redraw or extend any figure of a study::

    from lmablate import figures
    fig = figures.final_metric(runs, metric="val_loss")

The Snakefile imports the planning modules while it parses, so matplotlib and pandas load only
when a figure function is first used (module ``__getattr__``).

Adding a figure kind touches two files:

1. its draw function in the family module it belongs to (or a new one here): it takes the
   kind's inputs (``runs``, ``curves``, ``baseline``, ...) in order, then ``title`` and its
   options, and returns a Figure;
2. its :class:`~lmablate.figures.registry.FigureKind` row in ``registry.py``: the draw
   function by name (``"family.function"``), its inputs, a one-line summary, the report
   section, which runs support it (``applies``), its default figure names and options, and its
   caption (reStructuredText: how to read the figure).

The workflow then plans it for every study whose runs it applies to (or that names it in
``figures:``), rule plot_study draws it, ``snakemake --report`` files it under its section with
its caption, RESULTS.md lists it with its summary and the results page shows it with both.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "loss_curves": "curves",
    "final_metric": "finals", "calibration": "finals",
    "params_vs_loss": "sizes", "scaling_law": "sizes", "pareto": "sizes", "best_per_size": "sizes",
    "heatmap": "sweeps", "lr_sensitivity": "sweeps", "lr_finder": "sweeps",
    "metric_vs_axis": "sweeps",
    "efficiency": "training", "moe_load": "training",
    "plot_tasks": "tasks",
    "group_palette": "style", "save": "style", "remove_stale": "style",
    "REFERENCE_COLOR": "style", "DIVERGED_COLOR": "style", "SELECTED_COLOR": "style",
    "METRIC_LABELS": "style",
    "draw": "registry", "FIGURE_KINDS": "registry",
    "plan_figures": "plan",
}

__all__ = [*_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"lmablate.figures.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
