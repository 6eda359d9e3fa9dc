"""Train one run (resuming from checkpoints/<study>/<run_id>/ if a checkpoint exists)."""

import sys

from lmablate.workflow.steps import open_attempt_log

# Snakemake deletes the log before each attempt; train.log beside the checkpoints keeps the
# earlier attempts' lines (a requeue, a retry), and the log gets them back plus a marker line.
sys.stderr = open_attempt_log(snakemake.log[0],  # noqa: F821 (snakemake is injected)
                              f"{snakemake.params.ckpt_dir}/train.log")  # noqa: F821

from pathlib import Path

from lmablate.workflow.steps import run_step, train_run_step

# execution and logging settings are read here, not passed as params: changing them must not
# re-run runs (rules/common.smk puts the study's checked `logging:` block in the config)
execution = snakemake.config.get("execution") or {}
run_step(lambda: train_run_step(snakemake.params.run, snakemake.input.tokens,
                                Path(snakemake.output.final).parent, study=snakemake.params.study,
                                ckpt_dir=snakemake.params.ckpt_dir, threads=snakemake.threads,
                                runs_per_gpu=execution.get("runs_per_gpu"),
                                tracking=snakemake.config.get("logging"),
                                **snakemake.params.phase))
