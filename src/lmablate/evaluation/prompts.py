"""Rows -> prompts: the template, the answers, the gold index and few-shot examples.

Few-shot examples are drawn as lm-evaluation-harness draws them when a task's ``fewshot_split``
is its training split: one ``random.Random(fewshot_seed)`` for the task, ``rnd.sample(train, k)``
for each evaluated row in order. Without train rows they come from the evaluated rows, the row
itself excluded (``k + 1`` drawn, the row removed, the first ``k`` kept), as lm-eval does. Each
example is ``prompt + target_delimiter + answer + fewshot_delimiter``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from lmablate.errors import DataError
from lmablate.evaluation.scoring import MCExample
from lmablate.evaluation.specs import TaskSpec

__all__ = ["render", "row_choices", "gold_index", "build_examples"]


def render(spec: TaskSpec, row: Mapping[str, Any]) -> str:
    """The prompt of ``row``: ``spec.template`` with the row's fields filled in."""
    try:
        return spec.template.format_map(row)
    except KeyError as err:
        raise DataError(f"task {spec.name!r}: template field {{{err.args[0]}}} is not a field of "
                        f"its rows (fields: {', '.join(map(str, row))})") from None
    except (IndexError, ValueError) as err:
        raise DataError(f"task {spec.name!r}: template {spec.template!r} is not a valid format "
                        f"string ({err})") from None


def row_choices(spec: TaskSpec, row: Mapping[str, Any]) -> list[str]:
    if isinstance(spec.choices, list):
        return list(spec.choices)
    value = row.get(spec.choices)
    if not isinstance(value, list) or len(value) < 2 or not all(isinstance(c, str) for c in value):
        raise DataError(f"task {spec.name!r}: row field {spec.choices!r} must hold a list of at "
                        f"least 2 answer strings, got {value!r}")
    return value


def gold_index(spec: TaskSpec, row: Mapping[str, Any], choices: Sequence[str]) -> int:
    """The row's answer as an index: an integer label (booleans read as 0/1) or a choice string."""
    if spec.label not in row:
        raise DataError(f"task {spec.name!r}: label field {spec.label!r} is not a field of its "
                        f"rows (fields: {', '.join(map(str, row))})")
    value = row[spec.label]
    if isinstance(value, str) and value in choices:
        return list(choices).index(value)
    if isinstance(value, (bool, int)) and 0 <= int(value) < len(choices):
        return int(value)
    raise DataError(f"task {spec.name!r}: label {value!r} is neither an index below "
                    f"{len(choices)} nor one of the choices {list(choices)}")


def build_examples(spec: TaskSpec, rows: Sequence[Mapping[str, Any]],
                   train: Sequence[Mapping[str, Any]] | None = None, *, num_fewshot: int = 0,
                   fewshot_seed: int = 1234) -> list[MCExample]:
    """One :class:`MCExample` per row, with ``num_fewshot`` solved examples in front."""
    rnd = random.Random(fewshot_seed)
    pool = list(train) if train else list(rows)
    if num_fewshot and len(pool) < num_fewshot + (0 if train else 1):
        raise DataError(f"task {spec.name!r}: {num_fewshot} few-shot examples asked for, but "
                        f"only {len(pool)} rows to draw them from")
    examples = []
    for row in rows:
        shots: list[Mapping[str, Any]] = []
        if num_fewshot and train:
            shots = rnd.sample(pool, num_fewshot)
        elif num_fewshot:
            shots = [r for r in rnd.sample(pool, num_fewshot + 1) if r != row][:num_fewshot]
        prefix = ""
        for shot in shots:
            answers = row_choices(spec, shot)
            prefix += (render(spec, shot) + spec.target_delimiter
                       + answers[gold_index(spec, shot, answers)] + spec.fewshot_delimiter)
        choices = row_choices(spec, row)
        examples.append(MCExample(prefix + render(spec, row), tuple(choices),
                                  gold_index(spec, row, choices)))
    return examples
