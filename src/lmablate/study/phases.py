"""Two-phase ranking: every configuration trains a short budget, the best go on.

A study with a ``ranking:`` block trains in two phases::

    ranking:
      tokens: 5M                 # phase 1: every run of the sweep, this many tokens
      top_k: 1                   # phase 2: the k best (per value of `per`) train the full budget
      metric: val_loss           # a column of the runs table; lower is better (maximize: true)
      per: model.glu_expansion   # optional: top_k of each value of this column (e.g. per axis)
      early_stop: {delta: 0.5, metric: ppl, tokens: 1M}   # optional, phase 1 only
      resume: restart            # or continue (see below)

Phase-1 runs are the study's runs with the phase-1 settings applied; they get their own run IDs
(prefix ``p1-``) and train like any run. A Snakemake *checkpoint* (``rank_phase1``) harvests them
into ``results/<study>/phase1/`` and writes ``selected.json``; Snakemake then re-evaluates the DAG
and schedules phase 2: the selected configurations with the study's own budget, harvested, plotted
and reported as the study's results.

``resume``:
  - ``restart`` (default): phase 1 is a complete short run (its LR schedule decays over the short
    budget, as a parameter-allocation study's 5M-token ranking runs do); phase 2 trains from
    scratch.
  - ``continue``: phase 1 follows the *full* run's LR schedule and stops at ``tokens``
    (``train.stop_tokens``); phase 2 continues that checkpoint, so the selected runs cost only the
    remaining tokens and end bitwise equal to an uninterrupted full run (on CPU). Phase 1 then ranks
    runs in the middle of their schedule (at high LR), which favours fast starters; pick it when
    compute matters more than that bias. Needs phase 1 to change nothing but the stop and early
    stopping, so ``overrides`` is refused with it.

Early stopping compares each phase-1 run's validation metric with the best any phase-1 run has
logged at the same or fewer tokens (the cohort file ``checkpoints/<study>/phase1-cohort.jsonl``)
and stops it (status ``stopped_early``) after ``tokens`` tokens at least ``delta`` behind.
Stopped and diverged runs are never selected. With ``per``, each value of ``per`` is a cohort of
its own (``phase1-cohort-<value>.jsonl``), so one axis of a sweep can neither stop the runs of
another nor take their places. A run that several sweep points share (one-axis sweeps meeting at
their centre, :attr:`lmablate.study.sweep.Run.shared`) is in each of their cohorts and groups: it is
stopped only when it is behind in all of its cohorts, and competes for each group's top_k.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from lmablate.dicts import flatten, run_hash, set_dotted, unflatten
from lmablate.errors import ConfigError
from lmablate.study import config as C
from lmablate.study.sweep import RUN_HASH_HEX, Run, format_value, identity

__all__ = ["RANKING_KEYS", "Ranking", "ranking_of", "select_top_k"]

RANKING_KEYS = {
    "tokens": "Phase-1 budget in tokens: every run of the sweep trains this much first.",
    "top_k": "Configurations kept for phase 2 (of each value of `per`). Default 1.",
    "metric": "Runs-table column ranked on (default val_loss; lower is better).",
    "maximize": "Rank higher values of `metric` first (e.g. an accuracy). Default false.",
    "per": "A runs-table column (variant, or a swept key such as model.glu_expansion): keep "
           "top_k of each of its values.",
    "early_stop": "Phase-1 early stopping: {delta, metric: loss|ppl, tokens}.",
    "resume": "restart (phase 2 trains from scratch; default) or continue (phase 1 follows the "
              "full schedule and phase 2 continues its checkpoint).",
    "overrides": "Other dotted model./train. settings for phase-1 runs (restart only).",
}
EARLY_STOP_KEYS = {"delta": "early_stop_delta", "metric": "early_stop_metric",
                   "tokens": "early_stop_tokens"}
PREFIX = "p1-"


@dataclasses.dataclass(frozen=True)
class Ranking:
    top_k: int
    metric: str
    maximize: bool
    per: str | None
    resume: str
    phase1: dict[str, Run]  # phase-1 run ID -> run
    phase2_of: dict[str, str]  # phase-1 run ID -> the study run (phase 2) it ranks
    early_stop: bool

    @functools.cached_property
    def phase1_of(self) -> dict[str, str]:  # asked per job by the rules: built once
        return {p2: p1 for p1, p2 in self.phase2_of.items()}

    def selection(self) -> dict[str, Any]:
        """What :func:`select` needs, as plain data (a Snakemake param); ``shared``: the other
        sweep points of phase-1 runs that several points share (only where there are some)."""
        out = {"top_k": self.top_k, "metric": self.metric, "maximize": self.maximize,
               "per": self.per, "phase2_of": dict(sorted(self.phase2_of.items()))}
        shared = {i: [[v, dict(a)] for v, a in r.shared] for i, r in self.phase1.items()
                  if r.shared}
        return {**out, "shared": shared} if shared else out

    def cohorts(self, run_id: str) -> list[str]:
        """Names of the early-stopping cohorts of phase-1 run ``run_id``: ``phase1-cohort``,
        or with ``per`` one per value of ``per`` among the sweep points the run stands for."""
        if self.per is None:
            return ["phase1-cohort"]
        run = self.phase1[run_id]
        config = flatten(run.sections or C.to_dict(run.config))
        values = []
        for variant, axes in run.memberships():
            point = {"variant": variant, "seed": run.seed,
                     **{f"axis.{k}": v for k, v in axes.items()}, **config}
            if self.per not in point:  # a column known only once trained: one cohort
                return ["phase1-cohort"]
            value = re.sub(r"[^A-Za-z0-9._=+-]+", "_", format_value(point[self.per]))
            values.append(f"phase1-cohort-{value}")
        return sorted(set(values))

    def phase2_at_most(self) -> int:
        """The most runs phase 2 can train: top_k of each value of ``per`` (every run where
        ``per`` is a column known only once phase 1 has trained)."""
        groups = {c for run_id in self.phase1 for c in self.cohorts(run_id)}
        if self.per is not None and groups == {"phase1-cohort"}:
            return len(self.phase1)
        return min(len(self.phase1), self.top_k * len(groups))


def _phase1_settings(spec: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """Dotted settings every phase-1 run gets, and whether early stopping is on."""
    for key in spec:
        if key not in RANKING_KEYS:
            raise C.unknown_key(str(key), RANKING_KEYS, f"ranking.{key}")
    if "tokens" not in spec:
        raise ConfigError("a two-phase study needs the phase-1 budget, e.g. tokens: 5M",
                          key="ranking.tokens")
    resume = spec.get("resume", "restart")
    if resume not in ("restart", "continue"):
        raise ConfigError(f"expected restart or continue, got {resume!r}", key="ranking.resume")
    settings = {("train.stop_tokens" if resume == "continue" else "train.tokens"): spec["tokens"]}
    overrides = spec.get("overrides") or {}
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"expected a mapping of dotted settings, got {overrides!r}",
                          key="ranking.overrides")
    if overrides and resume == "continue":
        raise ConfigError("resume: continue needs phase 1 to train the same runs (only the stop "
                          "differs); drop overrides or use resume: restart",
                          key="ranking.overrides")
    for key, value in flatten(unflatten(dict(overrides))).items():
        if key.split(".")[0] not in ("model", "train"):
            raise ConfigError("expected model.* or train.* settings",
                              key=f"ranking.overrides.{key}")
        settings[key] = value
    early = spec.get("early_stop")
    if early is not None:
        if not isinstance(early, Mapping):
            raise ConfigError(f"expected {{delta, metric, tokens}}, got {early!r}",
                              key="ranking.early_stop")
        for key, value in early.items():
            if key not in EARLY_STOP_KEYS:
                raise C.unknown_key(str(key), EARLY_STOP_KEYS, f"ranking.early_stop.{key}")
            settings[f"train.{EARLY_STOP_KEYS[key]}"] = value
        if "delta" not in early:
            raise ConfigError("early stopping needs delta (how far behind the cohort's best)",
                              key="ranking.early_stop.delta")
    return settings, early is not None


def _phase1_run(run: Run, settings: Mapping[str, Any]) -> Run:
    sections = {name: dict(values) for name, values in run.sections.items()}
    for key, value in settings.items():
        set_dotted(sections, key, value)
    try:
        cfg = C.from_dict(C.RunConfig, sections)
    except ConfigError as err:
        raise ConfigError(f"phase 1 of run {run.run_id}: {err.message}", key="ranking") from None
    resolved = C.to_dict(cfg)
    slug = run.run_id.rsplit("-", 1)[0]
    run_id = f"{PREFIX}{slug}-{run_hash(identity(resolved, run.data_id), RUN_HASH_HEX)}"
    return dataclasses.replace(run, run_id=run_id, config=cfg, sections=resolved)


def ranking_of(study: Any) -> Ranking | None:
    """The study's two-phase plan, or None for a one-phase study. Errors name ``ranking.*``."""
    spec = study.doc.get("ranking")
    if spec is None:
        return None
    if not isinstance(spec, Mapping):
        raise ConfigError(f"expected a mapping (tokens, top_k, metric, ...), got {spec!r}",
                          key="ranking")
    settings, early = _phase1_settings(spec)
    top_k = spec.get("top_k", 1)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ConfigError(f"expected an integer >= 1, got {top_k!r}", key="ranking.top_k")
    phase1, phase2_of = {}, {}
    for run in study.runs:
        p1 = _phase1_run(run, settings)
        short = p1.config.train.stop_tokens or p1.config.train.tokens
        if short >= run.config.train.tokens:
            raise ConfigError(f"the phase-1 budget ({spec['tokens']}) must be smaller than the "
                              f"run's ({run.config.train.tokens} tokens, run {run.run_id})",
                              key="ranking.tokens")
        phase1[p1.run_id] = p1
        phase2_of[p1.run_id] = run.run_id
    return Ranking(top_k=top_k, metric=str(spec.get("metric", "val_loss")),
                   maximize=bool(spec.get("maximize", False)), per=spec.get("per"),
                   resume=spec.get("resume", "restart"), phase1=phase1, phase2_of=phase2_of,
                   early_stop=early)


RANKED_STATUSES = ("completed",)  # diverged and stopped_early runs never go to the next phase


def select_top_k(runs_table: Any, k: int, metric: str = "val_loss", *, maximize: bool = False,
                 per: str | None = None) -> list[str]:
    """Run IDs of the ``k`` best finished runs by ``metric`` (lowest first unless ``maximize``).

    ``runs_table`` is the harvested table (``runs.csv``/``runs.parquet`` as a DataFrame, or an
    iterable of row mappings) with at least ``run_id``, ``status`` and ``metric``. Only
    ``completed`` runs with a finite metric compete; ties go to the smaller run ID, so the
    selection is deterministic. With ``per`` (a column, e.g. the axis a run varies), the top ``k``
    of each value of that column are returned ("top 1 per axis"), groups in sorted
    order. Fewer than ``k`` eligible runs: all of them.

    Two-phase studies rank phase 1 with it (:func:`lmablate.results.selection.select`): the
    ``rank_phase1`` checkpoint rule (rules/ranking.smk) writes the selection to
    ``results/<study>/phase1/selected.json``.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"expected an integer k >= 1, got {k!r}", key="select.top_k")
    rows = runs_table.to_dict("records") if hasattr(runs_table, "to_dict") else list(runs_table)
    if rows and metric not in rows[0]:
        raise ConfigError(f"no column {metric!r} in the runs table (columns: "
                          f"{', '.join(map(str, rows[0]))})", key="select.metric")
    groups: dict[Any, list[tuple[float, str]]] = {}
    for row in _eligible(rows, metric):
        value = float(row[metric])
        groups.setdefault(row.get(per) if per else None, []).append(
            (-value if maximize else value, str(row["run_id"])))
    return [run_id for g in sorted(groups, key=str) for _, run_id in sorted(groups[g])[:k]]


def _eligible(rows: Iterable[Mapping[str, Any]], metric: str) -> Iterable[Mapping[str, Any]]:
    """The rows that compete: a ranked status and a finite ``metric``."""
    for row in rows:
        value = row.get(metric)
        if row.get("status") not in RANKED_STATUSES or value is None:
            continue
        try:
            if math.isfinite(float(value)):
                yield row
        except (TypeError, ValueError):
            continue
