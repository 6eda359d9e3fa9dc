"""Build the study's tokenizer from the train split of its corpus."""

import sys

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821 (snakemake is injected)

from lmablate.workflow.steps import run_step, train_tokenizer_step

run_step(lambda: train_tokenizer_step(snakemake.input.get("manifest") or None,
                                      snakemake.params.tokenizer, snakemake.params.val_fraction,
                                      snakemake.output.tokenizer))
