"""The top-level keys a study file may hold, each with the help text the schema shows, and the
``execution:`` keys with their bounds.

:mod:`lmablate.study.load` refuses any other key; :mod:`lmablate.study.schema` describes each.
"""

from __future__ import annotations

__all__ = ["EXECUTION_KEYS", "TOP_KEYS"]

TOP_KEYS = {
    "study": "Name of the study; outputs go to results/<study>/.",
    "description": "Free text shown in the report.",
    "include": "A base study file (path relative to this one) merged under this one.",
    "scale": "Name of an entry of `scales` to apply (e.g. smoke).",
    "scales": "Named sets of dotted overrides, e.g. smoke: {defaults.train.tokens: 20000}.",
    "overrides": "Dotted overrides applied last, e.g. {defaults.train.lr: 1e-3} (from snakemake: "
                 "--config 'overrides={defaults.train.lr: 1e-3}').",
    "data": "Corpus choice and train/val split (defaults for every run).",
    "corpora": "Corpus definitions by name (source: file|url|hf|hdf5).",
    "tokenizer": "Tokenizer (kind: bpe|byte|char|file).",
    "defaults": "Model and train settings every run starts from.",
    "sweep": "variants / grid / zip / where / seeds.",
    "baseline": "Variant that deltas, plots and tests compare against (default: baseline).",
    "eval_tasks": "Downstream tasks scored on every run (lmablate.evaluation): tasks (names, "
                  "presets such as smallbench, or mappings), mode, limit, finetune, harness.",
    "ranking": "Two-phase ranking: every run trains a short budget first and the top_k "
               "go on to the full budget (lmablate.study.phases): tokens, top_k, metric, per, "
               "early_stop, resume.",
    "lr_find": "LR range test (lmablate lr-find) of some runs as part of the workflow: true, or "
               "{runs, min_lr, max_lr, steps}; draws plots/lr_finder.png.",
    "figures": "Pick and name the study's figures (default: every figure its sweep axes support).",
    "execution": "Where/how runs execute (threads, device packing); not part of run identity.",
    "logging": "Experiment trackers every run logs to (curves, config, final metrics): "
               "tensorboard, mlflow, wandb (true or their settings); not part of run identity.",
}

# `execution:` settings (rules/*.smk, workflow_scripts/train_model.py): their least and largest
# values (a node's threads, GPUs and memory; a year of wall time; a throughput no GPU reaches)
EXECUTION_KEYS = {"train_threads": (1, 1024), "gpus_per_run": (0, 64),
                  "train_mem_mb": (1, 16 << 20), "train_runtime_min": (1, 366 * 24 * 60),
                  "eval_runtime_min": (1, 366 * 24 * 60), "runs_per_gpu": (1, 64),
                  "tokens_per_s": (1, 10**9)}
