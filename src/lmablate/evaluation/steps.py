"""The steps behind ``rules/evaluate.smk``, as plain functions (no Snakemake import).

:func:`study_eval` runs while the Snakefile parses (pure Python, nothing heavy imported): it
checks the study's ``eval_tasks:`` block and names the prepared folder of each task,
``resources/tasks/<task_id>/``, with the files its preparation reads. The step functions are what
``workflow_scripts/{prepare_eval_task,evaluate_tasks,evaluate_harness}.py`` call.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmablate import paths
from lmablate.data.corpora import manifest_path
from lmablate.errors import ConfigError
from lmablate.evaluation.runner import FT_SUFFIX
from lmablate.evaluation.specs import (
    DATA_FIELDS,
    EvalConfig,
    TaskSpec,
    data_identity,
    modes,
    parse_eval_tasks,
    resolve_path,
    task_id,
)
from lmablate.study.config import to_dict

__all__ = ["EvalPlan", "study_eval", "prepare_task_step", "evaluate_tasks_step",
           "evaluate_harness_step"]

HARNESS_KEYS = ("harness", "device", "batch_size", "fewshot_seed")


@dataclass
class EvalPlan:
    """A study's evaluation: its config, and per task the prepared folder and its inputs."""

    config: EvalConfig
    raw: dict[str, Any]  # the eval_tasks block as written (the evaluate rules' params)
    task_ids: dict[str, str]  # task name -> task id (folder under resources/tasks/)
    specs: dict[str, TaskSpec]  # task id -> spec
    inputs: dict[str, list[str]]  # task id -> files its preparation reads
    context: dict[str, dict[str, Any]]  # task id -> corpus, val_fraction (continuation tasks)
    base_dir: str  # folder of the study file (jsonl paths and include_path are relative to it)

    def tasks_params(self) -> dict[str, Any]:
        """The block without ``harness``: editing the harness tasks re-scores nothing else."""
        return {k: v for k, v in self.raw.items() if k != "harness"}

    def harness_params(self) -> dict[str, Any]:
        """What the harness rule reads (its tasks, the device, batch size and seed)."""
        return {k: v for k, v in self.raw.items() if k in HARNESS_KEYS}

    def identity(self, tid: str) -> dict[str, Any]:
        """What defines the rows of task ``tid`` (the preparation rule's params)."""
        ctx = self.context[tid]
        return data_identity(self.specs[tid], corpus=ctx.get("corpus"),
                             val_fraction=ctx.get("val_fraction"))

    def task_file(self, name: str) -> str:
        return paths.fill(paths.TASK, task_id=self.task_ids[name])

    def task_files(self) -> dict[str, str]:
        return {name: self.task_file(name) for name in self.task_ids}

    @property
    def harness(self) -> bool:
        return bool(self.config.harness.tasks)

    def evaluations(self) -> list[dict[str, Any]]:
        """What each run is scored on, one dict per tasks.json (or harness.json) entry: its
        ``key``, ``task``, ``mode`` (zeroshot, finetune, harness), ``limit`` (rows scored; None:
        all), ``num_fewshot``, fine-tuning ``epochs`` and ``max_train``, and ``task_file`` (the
        prepared rows' task.json; None for harness tasks). ``lmablate plan`` lists them."""
        cfg, out = self.config, []
        for spec in cfg.tasks:
            for mode in modes(spec, cfg):
                entry = {"key": spec.name + (FT_SUFFIX if mode == "finetune" else ""),
                         "task": spec.name, "mode": mode, "limit": spec.limit or cfg.limit,
                         "num_fewshot": cfg.num_fewshot if spec.num_fewshot is None
                         else spec.num_fewshot, "task_file": self.task_file(spec.name)}
                if mode == "finetune":
                    entry |= {"num_fewshot": None, "epochs": cfg.finetune.epochs,
                              "max_train": cfg.finetune.max_train}
                out.append(entry)
        h = cfg.harness
        out += [{"key": name, "task": name, "mode": "harness", "limit": h.limit,
                 "num_fewshot": h.num_fewshot, "task_file": None} for name in h.tasks]
        return out


def study_eval(study: Any) -> EvalPlan | None:
    """The evaluation plan of a :class:`lmablate.Study`, or None without ``eval_tasks:``."""
    raw = study.doc.get("eval_tasks")
    if raw is None:
        return None
    cfg = parse_eval_tasks(raw, source=study.source)
    base_dir = Path(study.source).resolve().parent if study.source else Path.cwd()
    data = study.runs[0].config.data if study.runs else None
    plan = EvalPlan(cfg, dict(raw), {}, {}, {}, {}, str(base_dir))
    for i, spec in enumerate(cfg.tasks):
        context: dict[str, Any] = {}
        inputs: list[str] = []
        if spec.source == "continuation":
            corpus = spec.corpus or (data.corpus if data else None)
            if corpus not in study.corpora:
                raise ConfigError(f"corpus {corpus!r} is not a corpus of this study "
                                  f"({', '.join(study.corpora) or 'none'})",
                                  key=f"eval_tasks.tasks[{i}].corpus", file=study.source)
            context = {"corpus": corpus, "val_fraction": data.val_fraction if data else 0.05,
                       "manifest": manifest_path(study.corpora[corpus])}
            inputs = [context["manifest"]]
        elif spec.source == "jsonl":
            inputs = [str(resolve_path(p, base_dir)) for p in (spec.eval, spec.train) if p]
        tid = task_id(spec, corpus=context.get("corpus"), val_fraction=context.get("val_fraction"))
        plan.task_ids[spec.name] = tid
        plan.specs[tid], plan.inputs[tid], plan.context[tid] = spec, inputs, context
    return plan


def prepare_task_step(name: str, identity: Mapping[str, Any], out: str | Path, *,
                      base_dir: str, context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Prepare the rows of task ``name`` (defined by ``identity``, see :meth:`EvalPlan.identity`)
    into the folder of ``out`` (its task.json)."""
    from lmablate.evaluation.sources import prepare_task

    context = dict(context or {})
    spec = TaskSpec(name=name, **{k: v for k, v in identity.items() if k in DATA_FIELDS})
    corpus = context.get("corpus")
    return prepare_task(spec, Path(out).parent, base_dir=base_dir,
                        manifest=context.get("manifest") if corpus else None,
                        val_fraction=context.get("val_fraction"), corpus=corpus)


def evaluate_tasks_step(run_dir: str | Path, eval_tasks: Mapping[str, Any],
                        task_files: Mapping[str, str], out: str | Path, *,
                        tokenizer: str | None = None, threads: int | None = None) -> dict:
    """Score one run on the study's tasks (prepared folders given by their task.json)."""
    import torch

    from lmablate.evaluation.runner import evaluate_run
    from lmablate.gpu import claim_device

    if threads:
        torch.set_num_threads(threads)
    cfg = parse_eval_tasks(eval_tasks)
    dirs = {name: Path(path).parent for name, path in task_files.items()}
    with claim_device(cfg.device) as dev:
        return evaluate_run(run_dir, cfg, dirs, out, tokenizer=tokenizer, device=dev)


def evaluate_harness_step(run_dir: str | Path, eval_tasks: Mapping[str, Any], out: str | Path,
                          *, tokenizer: str | None = None, base_dir: str = ".",
                          threads: int | None = None) -> dict:
    """Run the study's lm-eval tasks on one run; harness.json in tasks.json's schema."""
    import torch

    from lmablate.evaluation.harness import harness_tasks_json, run_harness
    from lmablate.gpu import claim_device
    from lmablate.io import atomic_write_json

    if threads:
        torch.set_num_threads(threads)
    cfg = parse_eval_tasks(eval_tasks)
    h = cfg.harness
    final = json.loads((Path(run_dir) / "final.json").read_text())
    if final.get("status") != "completed":
        result = {"status": "skipped", "reason": f"run {final.get('status')}", "tasks": {}}
    else:
        include = str(resolve_path(h.include_path, Path(base_dir))) if h.include_path else None
        with claim_device(cfg.device) as dev:
            raw = run_harness(run_dir, h.tasks, tokenizer=tokenizer, device=dev,
                              batch_size=cfg.batch_size, num_fewshot=h.num_fewshot,
                              limit=h.limit, include_path=include,
                              include_defaults=h.builtin_tasks, seed=cfg.fewshot_seed)
        result = {**harness_tasks_json(raw), "harness": to_dict(h)}
    result["run_id"] = final.get("run_id", Path(run_dir).name)
    atomic_write_json(out, result)
    return result
