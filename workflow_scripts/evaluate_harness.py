"""Run the study's lm-evaluation-harness tasks on one trained run (harness.json)."""

import sys

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821 (snakemake is injected)

from pathlib import Path

from lmablate.evaluation.steps import evaluate_harness_step
from lmablate.workflow.steps import run_step

run_step(lambda: evaluate_harness_step(Path(snakemake.input.final).parent,
                                       snakemake.params.eval_tasks, snakemake.output.harness,
                                       tokenizer=snakemake.input.tokenizer,
                                       base_dir=snakemake.params.base_dir,
                                       threads=snakemake.threads))
