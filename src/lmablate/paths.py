"""The workflow's file layout, each path written once.

Every pattern is a format string whose ``{fields}`` are Snakemake wildcards as they stand, and
Python paths once filled (:func:`fill`; fields not given stay wildcards)::

    fill(RUN_DIR, study="demo")                   'results/demo/runs/{run_id}'
    fill(RUN_DIR, study="demo", run_id="x-1a2b")  'results/demo/runs/x-1a2b'

Paths are relative to the working directory of the workflow (where ``snakemake`` runs)::

    resources/corpora/<corpus>-<hash>/manifest.json   a prepared text corpus
    resources/tokenizers/<dataset>/tokenizer.json      <dataset> = <corpus>-<data_id>
    resources/tokens/<dataset>.h5                      the token store
    resources/tasks/<task_id>/task.json                a prepared downstream task
    resources/hub                                      Hugging Face hub downloads
    results/<study>/runs/<run_id>/                     one run's files (final.json, ...)
    results/<study>/lr_find/<run_id>/                  one run's LR range test
    results/<study>/plots/<name>.png                   the study's figures
    results/<study>/phase1/                            a two-phase study's phase 1
    checkpoints/<study>/<run_id>/                      resumable training state

A base module: every package may use it.
"""

from __future__ import annotations

import re

RESOURCES = "resources"
CORPORA_DIR = f"{RESOURCES}/corpora"
CORPUS_MANIFEST = f"{CORPORA_DIR}/{{corpus}}-{{corpus_hash}}/manifest.json"
TOKENIZER_DIR = f"{RESOURCES}/tokenizers/{{dataset}}"
TOKENIZER = f"{TOKENIZER_DIR}/tokenizer.json"
TOKENIZER_META = f"{TOKENIZER_DIR}/tokenizer_meta.json"
TOKENS = f"{RESOURCES}/tokens/{{dataset}}.h5"
TASKS_DIR = f"{RESOURCES}/tasks"
TASK = f"{TASKS_DIR}/{{task_id}}/task.json"
HUB_CACHE = f"{RESOURCES}/hub"

RESULTS = "results"
STUDY_DIR = f"{RESULTS}/{{study}}"
RUNS_DIR = f"{STUDY_DIR}/runs"
RUN_DIR = f"{RUNS_DIR}/{{run_id}}"
LR_FIND_DIR = f"{STUDY_DIR}/lr_find/{{run_id}}"
PLOT = f"{STUDY_DIR}/plots/{{name}}.png"
PHASE1_DIR = f"{STUDY_DIR}/phase1"
PHASE1_PLOT = f"{PHASE1_DIR}/plots/{{name}}.png"
HF_DIR = f"{STUDY_DIR}/hf/{{run_id}}"
TENSORBOARD_DIR = f"{STUDY_DIR}/tensorboard"

CHECKPOINTS = "checkpoints"
STUDY_CHECKPOINTS = f"{CHECKPOINTS}/{{study}}"
CHECKPOINT_DIR = f"{STUDY_CHECKPOINTS}/{{run_id}}"
COHORT = f"{STUDY_CHECKPOINTS}/{{cohort}}.jsonl"  # phase-1 early stopping (ranking.per)

_FIELD = re.compile(r"\{(\w+)\}")


def fill(pattern: str, **values: object) -> str:
    """``pattern`` with the given fields filled in; the others stay ``{wildcards}``."""
    return _FIELD.sub(lambda m: str(values[m[1]]) if m[1] in values else m[0], pattern)


def dataset(corpus: str, data_id: str) -> str:
    """The name of a tokenizer and token store: ``<corpus>-<data_id>``."""
    return f"{corpus}-{data_id}"


def tokens(corpus: str, data_id: str) -> str:
    """A run's token store, ``resources/tokens/<corpus>-<data_id>.h5``."""
    return fill(TOKENS, dataset=dataset(corpus, data_id))


def tokenizer(corpus: str, data_id: str) -> str:
    """A run's tokenizer, ``resources/tokenizers/<corpus>-<data_id>/tokenizer.json``."""
    return fill(TOKENIZER, dataset=dataset(corpus, data_id))
