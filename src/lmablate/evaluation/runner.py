"""Evaluate one trained run on a study's tasks and write ``tasks.json``; read it back as columns.

``tasks.json``::

    {"run_id": ..., "status": "completed" | "skipped", "reason": null | "run diverged",
     "device": "cpu", "wall_s": 3.2,
     "tasks": {"sst2":    {"metric": "acc", "value": 0.51, "stderr": 0.017, "n": 872,
                           "chance": 0.5, "majority": 0.509, "mode": "zeroshot",
                           "num_fewshot": 0, "acc_norm": 0.50, "acc_norm_stderr": 0.017},
               "sst2_ft": {"metric": "acc", ..., "mode": "finetune", "n_train": 2000, ...}}}

``chance`` is the expected accuracy of a uniform guess (mean of 1/#choices); ``majority`` that of
always answering the most frequent gold answer of the scored rows. A run that did not complete
(diverged) is not scored: ``status: skipped`` and no tasks, so it never fails the workflow.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lmablate.errors import DataError
from lmablate.evaluation.specs import EvalConfig, TaskSpec, modes
from lmablate.io import atomic_write_json

__all__ = ["evaluate_run", "evaluate_task", "tasks_to_columns", "join_tasks", "FT_SUFFIX"]

log = logging.getLogger("lmablate.evaluation")
FT_SUFFIX = "_ft"  # tasks.json key of a task's fine-tuned result


def _levels(examples: list[Any]) -> dict[str, float]:
    golds = Counter(ex.gold for ex in examples)
    return {"chance": sum(1 / len(ex.choices) for ex in examples) / len(examples),
            "majority": max(golds.values()) / len(examples)}


def evaluate_task(run: Any, spec: TaskSpec, rows: Mapping[str, list[dict[str, Any]]],
                  cfg: EvalConfig) -> dict[str, dict[str, Any]]:
    """{tasks.json key: entry} of one task on one loaded run (zero-shot and/or fine-tuned)."""
    from lmablate.evaluation.finetune import finetune_classifier
    from lmablate.evaluation.prompts import build_examples
    from lmablate.evaluation.scoring import Scorer, score_multiple_choice

    limit = spec.limit or cfg.limit
    scored = rows["eval"][:limit] if limit else rows["eval"]
    train = rows.get("train")
    shots = cfg.num_fewshot if spec.num_fewshot is None else spec.num_fewshot
    examples = build_examples(spec, scored, train, num_fewshot=shots,
                              fewshot_seed=cfg.fewshot_seed)
    out = {}
    for mode in modes(spec, cfg):
        t0 = time.perf_counter()
        if mode == "zeroshot":
            res = score_multiple_choice(Scorer(run, batch_size=cfg.batch_size), examples,
                                        target_delimiter=spec.target_delimiter).metrics()
            entry = {"metric": "acc", "value": res["acc"], "stderr": res["acc_stderr"],
                     "n": len(examples), **_levels(examples), "mode": mode,
                     "num_fewshot": shots, "acc_norm": res["acc_norm"],
                     "acc_norm_stderr": res["acc_norm_stderr"]}
            key = spec.name
        else:
            if not train:
                raise DataError(f"task {spec.name!r}: fine-tuning needs train rows")
            res = finetune_classifier(run, spec, train, scored, cfg.finetune,
                                      batch_size=cfg.batch_size)
            entry = {"metric": "acc", "value": res.pop("acc"), "stderr": res.pop("acc_stderr"),
                     "n": res.pop("n"), **_levels(examples), "mode": mode, **res,
                     "full": cfg.finetune.full, "pool": cfg.finetune.pool}
            key = spec.name + FT_SUFFIX
        entry["wall_s"] = time.perf_counter() - t0
        log.info("%s (%s): %s %.4f +- %s, n=%d, chance %.3f", spec.name, mode, entry["metric"],
                 entry["value"], entry["stderr"], entry["n"], entry["chance"])
        out[key] = entry
    return out


def evaluate_run(run_dir: str | Path, cfg: EvalConfig, task_dirs: Mapping[str, str | Path],
                 out: str | Path | None = None, *, tokenizer: str | Path | None = None,
                 device: str = "auto") -> dict[str, Any]:
    """Score every task of ``cfg`` (prepared under ``task_dirs[name]``) on the run in
    ``run_dir``; write ``out`` (default ``run_dir/tasks.json``) and return its content."""
    from lmablate.engine.step import select_device
    from lmablate.evaluation.loading import load_run_model
    from lmablate.evaluation.sources import load_prepared

    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir / "tasks.json"
    final_path = run_dir / "final.json"
    final = json.loads(final_path.read_text()) if final_path.is_file() else {}
    result: dict[str, Any] = {"run_id": final.get("run_id", run_dir.name), "status": "completed",
                              "reason": None, "tasks": {}}
    if final.get("status") not in (None, "completed"):
        result.update(status="skipped", reason=f"run {final['status']}")
        atomic_write_json(out, result)
        return result
    missing = [s.name for s in cfg.tasks if s.name not in task_dirs]
    if missing:
        raise DataError(f"no prepared rows for task(s) {', '.join(missing)}")
    dev = select_device(device)
    run = load_run_model(run_dir, dev, tokenizer=tokenizer)
    for spec in cfg.tasks:
        result["tasks"].update(evaluate_task(run, spec, load_prepared(task_dirs[spec.name]), cfg))
    result.update(device=str(dev), wall_s=time.perf_counter() - t0)
    atomic_write_json(out, result)
    return result


# --------------------------------------------------------------------------------------------------
# tasks.json -> runs-table columns

_COLUMN_FIELDS = ("stderr", "n", "chance", "majority", "acc_norm")


def tasks_to_columns(tasks_json: Mapping[str, Any], prefix: str = "task") -> dict[str, Any]:
    """Flat columns of one run's tasks.json (or harness.json): ``task.<name>`` is the value of
    the task's metric; ``task.<name>.stderr``, ``.n``, ``.chance``, ``.majority``, ``.acc_norm``
    beside it; ``task.<name>.metric`` names the metric."""
    cols: dict[str, Any] = {}
    for name, entry in (tasks_json.get("tasks") or {}).items():
        cols[f"{prefix}.{name}"] = entry.get("value")
        cols[f"{prefix}.{name}.metric"] = entry.get("metric")
        for k in _COLUMN_FIELDS:
            if k in entry:
                cols[f"{prefix}.{name}.{k}"] = entry[k]
    return cols


def join_tasks(runs: Any, results_dir: str | Path, filename: str = "tasks.json",
               prefix: str = "task") -> Any:
    """``runs`` (a harvested runs table) with the columns of each run's ``filename`` added;
    runs without one get no values."""
    import pandas as pd

    rows = []
    for run_id in runs["run_id"]:
        path = Path(results_dir) / "runs" / str(run_id) / filename
        rows.append(tasks_to_columns(json.loads(path.read_text()), prefix)
                    if path.is_file() else {})
    extra = pd.DataFrame(rows, index=runs.index)
    return pd.concat([runs.drop(columns=[c for c in extra.columns if c in runs.columns]), extra],
                     axis=1)
