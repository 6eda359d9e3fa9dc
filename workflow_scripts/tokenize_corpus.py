"""Encode the corpus into the HDF5 token store (train/val), or import pre-tokenized HDF5."""

import sys

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821 (snakemake is injected)

from lmablate.workflow.steps import run_step, tokenize_step

run_step(lambda: tokenize_step(snakemake.params.spec, snakemake.input.get("manifest") or None,
                               snakemake.input.get("tokenizer"), snakemake.output.tokens,
                               snakemake.params.val_fraction))
