"""Downstream evaluation of trained runs: multiple-choice tasks, zero-shot or fine-tuned.

    specs     the ``eval_tasks:`` block, task specs, built-in tasks and the smallbench preset
    sources   task rows from jsonl, the Hugging Face hub or a corpus, prepared once per task
    loading   a run directory back as (model, tokenizer, config)
    scoring   batched log-likelihoods; acc / acc_norm as lm-evaluation-harness computes them
    prompts   rows -> prompts, answers, gold index, few-shot examples
    finetune  a classification head (or full fine-tuning) on the train split
    runner    one run's tasks.json, and tasks.json -> runs-table columns
    steps     what the workflow rules call (the study's task plan, prepare, evaluate)

The Snakefile imports this package while it parses, so torch and pandas load only
when a name that needs them is first used (module ``__getattr__``).
"""

from __future__ import annotations

import importlib
from typing import Any

from lmablate.evaluation.specs import (
    BUILTIN_TASKS,
    TASK_PRESETS,
    EvalConfig,
    FinetuneConfig,
    HarnessConfig,
    TaskSpec,
    parse_eval_tasks,
    task_id,
)
from lmablate.evaluation.steps import EvalPlan, study_eval

_LAZY = {
    "LoadedRun": "loading", "load_run_model": "loading", "tokenizer_path": "loading",
    "Scorer": "scoring", "MCExample": "scoring", "MCResult": "scoring",
    "score_multiple_choice": "scoring", "mean_stderr": "scoring",
    "build_examples": "prompts", "render": "prompts",
    "finetune_classifier": "finetune",
    "prepare_task": "sources", "load_prepared": "sources", "continuation_rows": "sources",
    "evaluate_run": "runner", "evaluate_task": "runner", "tasks_to_columns": "runner",
    "join_tasks": "runner",
}

__all__ = ["BUILTIN_TASKS", "TASK_PRESETS", "EvalConfig", "EvalPlan", "FinetuneConfig",
           "HarnessConfig", "TaskSpec", "parse_eval_tasks", "study_eval", "task_id", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
