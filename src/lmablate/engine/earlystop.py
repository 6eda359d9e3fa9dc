"""Two-phase training: early stopping against a cohort of runs, and whether a checkpoint trains
the same run (a resume, or phase 2 continuing a phase-1 run that ``train.stop_tokens`` ended)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lmablate.study.config import RunConfig, later_fields

__all__ = ["PHASE_KEYS", "EarlyStop", "same_training"]

# settings that may differ between a phase-1 run and the phase-2 run continuing its checkpoint
PHASE_KEYS = ("stop_tokens", "early_stop_delta", "early_stop_metric", "early_stop_tokens")


def same_training(saved: Mapping[str, Any] | None, current: Mapping[str, Any], *,
                  phase: bool = False) -> bool:
    """Whether a checkpoint's config trains the same run as ``current``.

    Fields added in a later version at their default are ignored (a checkpoint written before they
    existed still resumes); with ``phase``, so are the phase settings (:data:`PHASE_KEYS`)."""
    if saved is None:
        return False
    later = later_fields()

    def norm(cfg: Mapping[str, Any]) -> dict[str, Any]:
        out = {}
        for section, values in cfg.items():
            out[section] = {k: v for k, v in dict(values).items()
                            if not (phase and section == "train" and k in PHASE_KEYS)
                            and not (f"{section}.{k}" in later and later[f"{section}.{k}"] == v)}
        return out

    return norm(saved) == norm(current)


class EarlyStop:
    """Two-phase ranking's rule: stop when the dev metric is worse than the cohort's best-so-far
    by delta.

    The cohort file (JSON lines ``{"run_id", "tokens", "value"}``, appended under a lock) is shared
    by the runs of one phase; the best-so-far at ``t`` tokens is the lowest value any of them logged
    at <= t tokens. Which peers have logged by then depends on scheduling, so with parallel runs the
    decision can differ between repeats (the reference run and value are logged). Without a cohort
    file a run compares against its own best (plain patience). A run in several cohorts (a point
    two sweep axes share, ``ranking.per``) logs to each and is behind only when it is behind the
    best of every one of them.
    """

    def __init__(self, cfg: RunConfig, run_id: str,
                 cohort: str | Path | Sequence[str | Path] | None):
        self.delta = float(cfg.train.early_stop_delta or 0)
        self.metric = cfg.train.early_stop_metric
        cohorts = [cohort] if isinstance(cohort, (str, Path)) else list(cohort or [])
        self.run_id, self.cohorts = run_id, [Path(c) for c in cohorts]

    def value(self, rec: Mapping[str, Any]) -> float:
        return float(rec["ppl"] if self.metric == "ppl" else rec["loss"])

    def _peers(self, tokens: int, value: float,
               records: list[dict]) -> list[list[tuple[int, float]]]:
        """Per cohort, the (tokens, value) every member logged (this evaluation included)."""
        if not self.cohorts:  # its own evaluations (from the records: survives a resume)
            return [[(r["tokens"], self.value(r)) for r in records if r["split"] == "val"]]
        return [self._logged(path, tokens, value) for path in self.cohorts]

    def _logged(self, path: Path, tokens: int, value: float) -> list[tuple[int, float]]:
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"run_id": self.run_id, "tokens": tokens, "value": value}) + "\n"
        with open(path, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.write(line)
            fh.flush()
            fh.seek(0)
            rows = [json.loads(x) for x in fh.read().splitlines() if x.strip()]
        return [(int(r["tokens"]), float(r["value"])) for r in rows
                if math.isfinite(float(r["value"]))]

    def update(self, tokens: int, rec: Mapping[str, Any], worse_since: int | None,
               records: list[dict]) -> int | None:
        """The new ``worse_since`` (tokens since which the run is behind, or None)."""
        value = self.value(rec)
        best = max(min((v for t, v in peers if t <= tokens and math.isfinite(v)), default=math.inf)
                   for peers in self._peers(tokens, value, records))  # the most lenient cohort
        if math.isfinite(value) and value - best < self.delta:
            return None
        return tokens if worse_since is None else worse_since
