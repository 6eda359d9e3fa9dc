"""Score one trained run on the study's downstream tasks
(results/<study>/runs/<run_id>/tasks.json)."""

import sys

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821 (snakemake is injected)

from pathlib import Path

from lmablate.evaluation.steps import evaluate_tasks_step
from lmablate.workflow.steps import run_step

run_step(lambda: evaluate_tasks_step(Path(snakemake.input.final).parent,
                                     snakemake.params.eval_tasks, snakemake.params.task_files,
                                     snakemake.output.tasks, tokenizer=snakemake.input.tokenizer,
                                     threads=snakemake.threads))
