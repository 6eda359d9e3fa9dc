"""What a study evaluates: the ``eval_tasks:`` block, its task specs and the built-in tasks.

A task is rows (dicts) plus how to read them: a prompt ``template`` (a Python format string over
a row's fields), the answer ``choices`` (a fixed list, or the name of a field holding each row's
list) and the ``label`` field (an index into the choices, or the answer string). Rows come from

- ``jsonl``: local files (``eval``, optional ``train``), one JSON object per line;
- ``hub``: parquet files of a Hugging Face dataset (``repo``, file patterns ``eval``/``train``);
- ``continuation``: built from the validation documents of a corpus: a run of words as the
  context, the true next words against the same words shuffled. A sanity task: a model that
  learned anything about word order is far above its 50% chance level; an untrained one is at it.

Built-in tasks copy lm-evaluation-harness's prompts (``glue/sst2``, ``glue/rte``, ``glue/mrpc``,
``super_glue/boolq``), so zero-shot numbers compare with the harness's; ``smallbench`` is the four
of them (the parameter-allocation study's benchmark). A study names tasks, presets and its
own definitions::

    eval_tasks:
      tasks:
        - smallbench                         # a preset: sst2, rte, boolq, mrpc
        - {name: continuation, limit: 300}   # a built-in with a setting changed
        - {name: reviews, source: jsonl, eval: data/reviews_dev.jsonl, train: data/reviews.jsonl,
           template: "{text}\\nSentiment:", choices: [negative, positive], label: stars_label}
      mode: both            # zeroshot | finetune | both
      limit: 1000           # evaluation rows per task (the first ones, as lm-eval's --limit)

Run-independent preparation (downloading, building rows) is keyed by :func:`task_id`, a readable
name plus a hash of what defines the rows, so every run of every study shares one copy.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lmablate.errors import ConfigError, did_you_mean
from lmablate.study.config import F, from_dict

__all__ = ["TaskSpec", "FinetuneConfig", "HarnessConfig", "EvalConfig", "BUILTIN_TASKS",
           "TASK_PRESETS", "parse_eval_tasks", "task_id", "data_identity", "finetunable", "modes",
           "resolve_path", "DATA_FIELDS"]

Mode = Literal["zeroshot", "finetune", "both"]
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclass
class TaskSpec:
    """One multiple-choice task: where its rows come from and how a row becomes a prompt."""

    name: str = F("", "Name of the task (a built-in name merges these settings over it).")
    source: Literal["jsonl", "hub", "continuation"] = F(
        "jsonl", "Where rows come from: local jsonl files, a hub dataset's parquet files, or the "
        "validation documents of a corpus (true continuation vs the same words shuffled).")
    template: str = F("{context}", "Prompt: a Python format string over the row's fields.")
    choices: list | str | None = F(None, "Answers: a fixed list of strings, or the name of the "
                                   "row field that holds each row's list.")
    label: str = F("label", "Row field with the gold answer: an index into the choices or the "
                   "answer string.")
    target_delimiter: str = F(" ", "Text between the prompt and an answer (lm-eval's "
                              "target_delimiter).")
    fewshot_delimiter: str = F("\n\n", "Text after each few-shot example.")
    eval: str | None = F(None, "jsonl: file (relative to the study file); hub: file pattern in "
                         "the repo. The rows that are scored.")
    train: str | None = F(None, "Like eval: rows for fine-tuning and few-shot examples.")
    repo: str | None = F(None, "hub: dataset repository, e.g. nyu-mll/glue.")
    revision: str = F("main", "hub: branch, tag or commit.")
    corpus: str | None = F(None, "continuation: corpus name (default: the study's data.corpus).")
    context_words: int = F(32, "continuation: words of context per row.", ge=1)
    continuation_words: int = F(8, "continuation: words of each answer.", ge=2)
    mode: Mode | None = F(None, "Override eval_tasks.mode for this task.")
    num_fewshot: int | None = F(None, "Override eval_tasks.num_fewshot for this task.", ge=0)
    limit: int | None = F(None, "Override eval_tasks.limit for this task.", ge=1)

    def check(self) -> list[ConfigError]:
        issues = []
        if not NAME_RE.fullmatch(self.name):
            issues.append(ConfigError(f"expected a task name of letters, digits, '_' or '-' (it "
                                      f"names files and table columns), got {self.name!r}",
                                      key="name"))
        if self.source == "continuation":
            return issues
        if self.choices is None or (isinstance(self.choices, list) and (
                len(self.choices) < 2 or not all(isinstance(c, str) for c in self.choices))):
            issues.append(ConfigError(f"expected a list of at least 2 answer strings or a field "
                                      f"name, got {self.choices!r}", key="choices"))
        if not self.eval:
            issues.append(ConfigError(f"source {self.source!r} needs `eval` (a "
                                      f"{'file' if self.source == 'jsonl' else 'file pattern'})",
                                      key="eval"))
        if self.source == "hub" and not self.repo:
            issues.append(ConfigError("source 'hub' needs `repo` (e.g. nyu-mll/glue)", key="repo"))
        return issues


@dataclass
class FinetuneConfig:
    """GLUE-style fine-tuning for models too small to answer zero-shot: a fixed budget and seed."""

    epochs: float = F(3.0, "Passes over the (capped) train split.", gt=0)
    max_train: int = F(2000, "Train rows used (a seeded random subset when the split is "
                       "larger).", ge=1)
    batch_size: int = F(32, "Rows per optimiser step.", ge=1)
    lr: float | None = F(None, "AdamW learning rate; None = 1e-3 for the head alone, 1e-4 with "
                         "full fine-tuning.", gt=0)
    weight_decay: float = F(0.0, "AdamW weight decay.", ge=0)
    full: bool = F(False, "Train the whole model, not only the classification head.")
    pool: Literal["mean", "last"] = F("mean", "Hidden state the head reads: mean over the prompt's "
                                      "tokens or the last token.")
    seed: int = F(0, "Seed of the head's init, the train subset and the batch order.", ge=0)


@dataclass
class HarnessConfig:
    """Tasks run through lm-evaluation-harness (``lm-eval``) on every run, beside tasks.json."""

    tasks: list = F([], "lm-eval task names (e.g. [arc_easy, hellaswag]); empty = no harness rule.")
    num_fewshot: int | None = F(None, "Few-shot examples (None = each task's default).", ge=0)
    limit: int | None = F(None, "Rows per task (None = all).", ge=1)
    include_path: str | None = F(None, "Folder of extra task YAMLs (relative to the study file).")
    builtin_tasks: bool = F(True, "Also index lm-eval's built-in tasks (false: only include_path; "
                            "saves ~10 s per run).")


@dataclass
class EvalConfig:
    """The ``eval_tasks:`` block of a study."""

    tasks: list = F([], "Task names, presets (smallbench) or task mappings; after "
                    ":func:`parse_eval_tasks`, the resolved TaskSpecs.")
    mode: Mode = F("zeroshot", "zeroshot: log-likelihood of each answer (acc, acc_norm); "
                   "finetune: a classification head trained on the train split (acc); both.")
    num_fewshot: int = F(0, "Few-shot examples in each zero-shot prompt (sampled as lm-eval "
                         "does, from the train split).", ge=0)
    fewshot_seed: int = F(1234, "Seed of the few-shot sampler (lm-eval's default 1234).", ge=0)
    limit: int | None = F(None, "Evaluation rows per task: the first N (None = all).", ge=1)
    batch_size: int = F(32, "Sequences per forward pass when scoring.", ge=1)
    device: str = F("auto", "auto | cpu | cuda:N.")
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    harness: HarnessConfig = field(default_factory=HarnessConfig)


# --------------------------------------------------------------------------------------------------
# built-in tasks: lm-evaluation-harness's prompts over the hub's parquet files

_GLUE = "nyu-mll/glue"
BUILTIN_TASKS: dict[str, dict[str, Any]] = {
    "sst2": {"source": "hub", "repo": _GLUE, "eval": "sst2/validation-*.parquet",
             "train": "sst2/train-*.parquet",
             "template": "{sentence}\nQuestion: Is this sentence positive or negative?\nAnswer:",
             "choices": ["negative", "positive"]},
    "rte": {"source": "hub", "repo": _GLUE, "eval": "rte/validation-*.parquet",
            "train": "rte/train-*.parquet",
            "template": "{sentence1}\nQuestion: {sentence2} True or False?\nAnswer:",
            "choices": ["True", "False"]},
    "mrpc": {"source": "hub", "repo": _GLUE, "eval": "mrpc/validation-*.parquet",
             "train": "mrpc/train-*.parquet",
             "template": "Sentence 1: {sentence1}\nSentence 2: {sentence2}\nQuestion: Do both "
                         "sentences mean the same thing?\nAnswer:",
             "choices": ["no", "yes"]},
    "boolq": {"source": "hub", "repo": "aps/super_glue", "eval": "boolq/validation-*.parquet",
              "train": "boolq/train-*.parquet",
              "template": "{passage}\nQuestion: {question}?\nAnswer:", "choices": ["no", "yes"]},
    "continuation": {"source": "continuation", "template": "{context}", "choices": "choices"},
}
TASK_PRESETS: dict[str, list[str]] = {"smallbench": ["sst2", "rte", "boolq", "mrpc"]}

# per source, the fields that define a task's rows (the rest says how rows are prompted, scored)
SOURCE_FIELDS = {"jsonl": ("eval", "train"), "hub": ("repo", "revision", "eval", "train"),
                 "continuation": ("corpus", "context_words", "continuation_words")}
DATA_FIELDS = ("source", *dict.fromkeys(f for fs in SOURCE_FIELDS.values() for f in fs))


def _entries(raw: Any, key: str) -> list[tuple[str, dict[str, Any]]]:
    """(config key, task mapping) per task, presets expanded."""
    if not isinstance(raw, list):
        raise ConfigError(f"expected a list of task names or mappings, got {raw!r}", key=key)
    out = []
    for i, item in enumerate(raw):
        where = f"{key}[{i}]"
        if isinstance(item, str):
            if item in TASK_PRESETS:
                out += [(where, {"name": n}) for n in TASK_PRESETS[item]]
                continue
            if item not in BUILTIN_TASKS:
                known = [*TASK_PRESETS, *BUILTIN_TASKS]
                raise ConfigError(f"unknown task or preset {item!r}{did_you_mean(item, known)}; "
                                  f"built in: {', '.join(known)} (or define one as a mapping)",
                                  key=where)
            item = {"name": item}
        if not isinstance(item, Mapping):
            raise ConfigError(f"expected a task name or a mapping, got {item!r}", key=where)
        out.append((where, dict(item)))
    return out


def parse_eval_tasks(raw: Any, *, source: str | None = None) -> EvalConfig:
    """The ``eval_tasks:`` block as an :class:`EvalConfig` with its resolved task specs.

    Errors are one-line :class:`ConfigError` s naming ``eval_tasks.<key>`` (and ``source``).
    """
    try:
        if not isinstance(raw, Mapping):
            raise ConfigError(f"expected a mapping, got {raw!r}", key="eval_tasks")
        cfg = from_dict(EvalConfig, dict(raw), "eval_tasks")
        specs: list[TaskSpec] = []
        for where, item in _entries(cfg.tasks, "eval_tasks.tasks"):
            name = item.get("name")
            base = copy.deepcopy(BUILTIN_TASKS.get(name, {})) if isinstance(name, str) else {}
            spec = from_dict(TaskSpec, {**base, **item}, where)
            if any(s.name == spec.name for s in specs):
                raise ConfigError(f"task {spec.name!r} is listed twice", key=where)
            if (spec.mode or cfg.mode) == "finetune" and not finetunable(spec):
                raise ConfigError(f"task {spec.name!r} cannot be fine-tuned (it needs a `train` "
                                  "split and a fixed list of choices); give it mode: zeroshot",
                                  key=where)
            specs.append(spec)
        if not specs and not cfg.harness.tasks:
            raise ConfigError("no tasks: list task names, presets (smallbench) or mappings",
                              key="eval_tasks.tasks")
        cfg.tasks = specs
        return cfg
    except ConfigError as err:
        raise err.with_file(source) from None


def data_identity(spec: TaskSpec, *, corpus: str | None = None,
                  val_fraction: float | None = None) -> dict[str, Any]:
    """What defines a task's rows; a continuation task also depends on its corpus's split."""
    ident = {"source": spec.source}
    ident.update({k: getattr(spec, k) for k in SOURCE_FIELDS[spec.source]
                  if getattr(spec, k) is not None})
    if spec.source == "continuation":
        ident["corpus"] = spec.corpus or corpus
        ident["val_fraction"] = val_fraction
    return ident


def task_id(spec: TaskSpec, **study: Any) -> str:
    """``<name>-<hash of the rows' identity>``: the folder of the prepared rows."""
    from lmablate.dicts import run_hash

    return f"{spec.name}-{run_hash(data_identity(spec, **study))}"


def finetunable(spec: TaskSpec) -> bool:
    """Fine-tuning needs train rows and one label set (a classification head has fixed outputs)."""
    return bool(spec.train) and isinstance(spec.choices, list)


def modes(spec: TaskSpec, cfg: EvalConfig) -> list[str]:
    """The evaluations a task gets: ``both`` fine-tunes only the tasks that can be."""
    mode = spec.mode or cfg.mode
    if mode == "both":
        return ["zeroshot", "finetune"] if finetunable(spec) else ["zeroshot"]
    return [mode]


def resolve_path(path: str, base_dir: Path) -> Path:
    """A jsonl path relative to the study file's folder."""
    return (base_dir / Path(path).expanduser()).resolve()
