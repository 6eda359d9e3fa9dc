"""Phase 2 of a two-phase study, chosen from the harvested phase-1 table: the selection
(:func:`select`, which the ``rank_phase1`` rule writes to ``phase1/selected.json``) and the
sentence that states it beside phase 1's findings (:func:`selection_finding`). The ranking rule
itself, on plain rows, is :func:`lmablate.study.phases.select_top_k`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from lmablate.errors import ConfigError, did_you_mean
from lmablate.results.collect import group_rows
from lmablate.results.columns import INCLUDED_STATUSES
from lmablate.study.phases import Ranking, select_top_k

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["select", "selection_finding"]


def select(ranking: Ranking | Mapping[str, Any], runs_table: Any) -> dict[str, Any]:
    """Phase 2 from the harvested phase-1 table: ``{"selected": [study run IDs], "phase1": [...],
    "metric", "top_k", "per"}``. The table's ``run_id`` column holds phase-1 IDs. ``ranking``: a
    :class:`~lmablate.study.phases.Ranking` or its
    :meth:`~lmablate.study.phases.Ranking.selection` (what the workflow passes to its job)."""
    p = ranking.selection() if isinstance(ranking, Ranking) else ranking
    per = p.get("per")
    if per is not None and hasattr(runs_table, "columns") and per not in runs_table.columns:
        raise ConfigError(f"no column {per!r} in the phase-1 runs table"
                          f"{did_you_mean(str(per), list(map(str, runs_table.columns)))}",
                          key="ranking.per")
    if hasattr(runs_table, "columns"):  # a shared run competes in each of its groups
        runs_table = group_rows(runs_table)
    winners = list(dict.fromkeys(select_top_k(runs_table, p["top_k"], p["metric"],
                                              maximize=p["maximize"], per=per)))
    return {"selected": [p["phase2_of"][r] for r in winners], "phase1": winners,
            "metric": p["metric"], "top_k": p["top_k"], "per": per}


def selection_finding(runs: pd.DataFrame, chosen: Mapping[str, Any],
                      maximize: bool = False) -> str | None:
    """The phase-1 selection of a two-phase study as a sentence (e.g. the top 1 per
    axis of a parameter-allocation study): per selection group, the configurations that go on
    to phase 2 with their phase-1 metric. ``chosen``: :func:`select`'s result for ``runs``."""
    metric, per, k = chosen["metric"], chosen.get("per"), chosen["top_k"]
    rows = group_rows(runs)
    if metric not in rows or not chosen["phase1"]:
        return None
    rows = rows[rows.status.isin(INCLUDED_STATUSES) & rows[metric].notna()]
    parts = []
    for key, g in (rows.groupby(per, sort=False) if per else [(None, rows)]):
        top = g.sort_values(metric, ascending=not maximize).head(k)
        top = top[top.run_id.isin(chosen["phase1"])]
        names = ", ".join(f"{r['group']} ({metric} {r[metric]:.4f})"
                          for r in top.to_dict("records"))
        if names:
            parts.append(f"{key}: {names}" if per else names)
    n = len(chosen["selected"])
    return (f"Phase 2 trains {n} configuration{'s' if n != 1 else ''}, the top {k}"
            + (f" per {per}" if per else "") + f" by phase-1 {metric}: " + "; ".join(parts)
            + (" (one run stands for several groups)" if per and n < len(parts) else "") + ".")
