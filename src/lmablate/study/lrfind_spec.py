"""The ``lr_find:`` block of a study: which runs the workflow gives an LR range test, and how.

    lr_find: true                                   # the first run of every variant
    lr_find: {runs: [baseline, wide], min_lr: 1e-5, max_lr: 1, steps: 100}

:func:`study_lr_find` checks the block while the Snakefile parses and names the runs; the test
itself is :func:`lmablate.engine.lrfind.lr_range_test`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lmablate.errors import ConfigError, did_you_mean
from lmablate.study.config import unknown_key

__all__ = ["LR_FIND_KEYS", "study_lr_find"]


LR_FIND_KEYS = {"runs": "Variants or run IDs to test (default: the first run of every variant).",
                "min_lr": "Start of the ramp (default 1e-6).",
                "max_lr": "End of the ramp (default 10).",
                "steps": "Steps of the ramp (default 100)."}


def study_lr_find(study: Any) -> tuple[list[str], dict[str, Any]] | None:
    """(run IDs, range-test options) of a study's ``lr_find:`` block, or None without one.

    ``lr_find: true`` tests the first run of every variant with the defaults."""
    spec = study.doc.get("lr_find")
    if spec in (None, False):
        return None
    if spec is True:
        spec = {}
    if not isinstance(spec, Mapping):
        raise ConfigError(f"expected true or a mapping ({', '.join(LR_FIND_KEYS)}), got "
                          f"{spec!r}", key="lr_find")
    for key in spec:
        if key not in LR_FIND_KEYS:
            raise unknown_key(str(key), LR_FIND_KEYS, f"lr_find.{key}")
    options: dict[str, Any] = {}
    for key, kind, default in (("min_lr", float, 1e-6), ("max_lr", float, 10.0),
                               ("steps", int, 100)):
        value = spec.get(key, default)
        try:
            options[key] = kind(float(value)) if kind is int else kind(value)
        except (TypeError, ValueError):
            raise ConfigError(f"expected a number, got {value!r}", key=f"lr_find.{key}") from None
    if not 0 < options["min_lr"] < options["max_lr"]:
        raise ConfigError(f"expected 0 < min_lr < max_lr, got {options['min_lr']:g} and "
                          f"{options['max_lr']:g}", key="lr_find")
    if options["steps"] < 10:
        raise ConfigError(f"expected at least 10 steps, got {options['steps']}",
                          key="lr_find.steps")
    wanted = spec.get("runs")
    wanted = [wanted] if isinstance(wanted, str) else wanted
    first: dict[str, str] = {}
    for run in study.runs:
        first.setdefault(run.variant, run.run_id)
    if wanted is None:
        return list(first.values()), options
    if not isinstance(wanted, list):
        raise ConfigError(f"expected a list of variants or run IDs, got {wanted!r}",
                          key="lr_find.runs")
    ids = []
    for name in wanted:
        if name in study.by_id:
            ids.append(name)
        elif name in first:
            ids.append(first[name])
        else:
            raise ConfigError(f"no variant or run {name!r}"
                              f"{did_you_mean(str(name), [*first, *study.by_id])}",
                              key="lr_find.runs")
    return ids, options
