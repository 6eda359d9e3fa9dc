"""Which figures a study gets, decided from its runs' config columns (pure Python: runs at
Snakefile parse time, before anything has trained, and again on the harvested runs table).

:func:`plan_figures` gives every figure the runs' axes support (the default figures of
:data:`lmablate.figures.registry.FIGURE_KINDS` whose test the runs pass), or the study's
``figures:`` pick; :func:`study_figures` adds what the rest of the study decides (downstream
tasks; a two-phase study's figures over the whole sweep, drawn from phase 1);
:func:`planned_rows` gives the rows of a study's runs before they exist.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from lmablate.dicts import flatten
from lmablate.errors import ConfigError
from lmablate.figures.registry import DEFAULT_FIGURES, FIGURE_KINDS, figure_summary, phase1_only

if TYPE_CHECKING:
    from lmablate.study.load import Study

__all__ = ["FIGURE_NAME_RE", "figure_lines", "planned_rows", "plan_figures", "study_figures"]

FIGURE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def figure_lines(plan: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Figure name -> the line RESULTS.md writes under it (:func:`figure_summary`, and the
    metric of a figure that names one), for :func:`lmablate.results.harvest.harvest`."""
    out = {}
    for name, spec in plan.items():
        what = figure_summary(spec)
        if spec.get("metric"):
            what += f" Metric: `{spec['metric']}`."
        out[name] = what
    return out


def planned_rows(study: Study, runs: Iterable[Any] | None = None) -> list[dict[str, Any]]:
    """Rows shaped like runs.parquet's config columns, for the runs a study will train (the
    Snakefile decides its figure list from these before anything has run): one per sweep point,
    so a run that several points share has a row for each, as :func:`group_rows` expands it.
    ``runs``: other runs than ``study.runs`` (a two-phase study's phase 1)."""
    from lmablate.study.config import to_dict

    rows = []
    for r in study.runs if runs is None else runs:
        row = {"run_id": r.run_id, "variant": r.variant, "seed": r.seed, "source": "lmablate",
               **flatten(r.sections or to_dict(r.config))}
        for variant, axes in r.memberships():
            rows.append({**row, "variant": variant, **{f"axis.{k}": v for k, v in axes.items()}})
    return rows


def _point_rows(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Harvested rows with a shared run expanded to one row per sweep point (its
    ``memberships``), as :func:`planned_rows` gives them."""
    out: list[Mapping[str, Any]] = []
    for row in rows:
        members = row.get("memberships")
        if not isinstance(members, str) or not members:
            out.append(row)
            continue
        plain = {k: v for k, v in row.items() if not k.startswith("axis.")}
        out += [{**plain, "variant": m["variant"],
                 **{f"axis.{k}": v for k, v in m["axes"].items()}} for m in json.loads(members)]
    return out


def plan_figures(rows: Sequence[Mapping[str, Any]], pick: Any = None
                 ) -> dict[str, dict[str, Any]]:
    """Figure name -> {"kind": ..., options} for these runs.

    By default every figure that the study's axes support (no heatmap without two numeric axes,
    no MoE figure for dense models, no LR figure unless the LR varies, no scaling fit below three
    sizes). ``pick`` (the study's ``figures:`` key) chooses and names them instead: a list of
    default names, or a mapping ``name: kind`` / ``name: {kind: ..., option: value}``.
    """
    if pick is None:
        rows = _point_rows(rows)
        return {name: {"kind": kind, **opts} for name, (kind, opts) in DEFAULT_FIGURES.items()
                if FIGURE_KINDS[kind].applies(rows)}
    if isinstance(pick, (list, tuple)):
        out = {}
        for name in pick:
            if name not in DEFAULT_FIGURES:
                raise ConfigError(f"unknown figure {name!r}; expected one of: "
                                  f"{', '.join(DEFAULT_FIGURES)}", key="figures")
            kind, opts = DEFAULT_FIGURES[name]
            out[name] = {"kind": kind, **opts}
        return out
    if not isinstance(pick, Mapping):
        raise ConfigError(f"expected a list of figure names or a mapping name: kind, got "
                          f"{type(pick).__name__}", key="figures")
    out = {}
    for name, spec in pick.items():
        key = f"figures.{name}"
        if not FIGURE_NAME_RE.fullmatch(str(name)):
            raise ConfigError("expected a name of letters, digits, '_' or '-'", key=key)
        spec = {"kind": spec} if isinstance(spec, str) else dict(spec or {})
        kind = spec.get("kind")
        if kind not in FIGURE_KINDS:
            raise ConfigError(f"unknown figure kind {kind!r}; expected one of: "
                              f"{', '.join(FIGURE_KINDS)}", key=f"{key}.kind")
        out[str(name)] = spec
    return out


def study_figures(rows: Sequence[Mapping[str, Any]], pick: Any = None, *,
                  phase1_rows: Sequence[Mapping[str, Any]] | None = None, tasks: bool = False
                  ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """(figures, phase-1 figures) of a study: :func:`plan_figures` of its runs' ``rows``, and
    unless the study picks its own (``pick``): the task figure where it scores downstream
    ``tasks``, and for a two-phase study (``phase1_rows``: its phase-1 runs) the figures over
    the whole sweep drawn from phase 1 instead (phase 2 holds only the selected
    configurations)."""
    figures = plan_figures(rows, pick)
    if pick:
        return figures, {}
    phase1 = {}
    if phase1_rows is not None:
        figures = {n: f for n, f in figures.items() if not phase1_only(f)}
        phase1 = {n: f for n, f in plan_figures(phase1_rows).items() if phase1_only(f)}
    if tasks:
        figures["tasks"] = {"kind": "tasks"}
    return figures, phase1
