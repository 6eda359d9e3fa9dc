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
