"""Prepare one downstream task's rows once (hub download, jsonl copy or corpus windows)."""

import sys

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821 (snakemake is injected)

from lmablate.evaluation.steps import prepare_task_step
from lmablate.workflow.steps import run_step

run_step(lambda: prepare_task_step(snakemake.params.name, snakemake.params.identity,
                                   snakemake.output.task, base_dir=snakemake.params.base_dir,
                                   context=snakemake.params.context))
