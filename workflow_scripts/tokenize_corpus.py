"""Encode the corpus into the HDF5 token store (train/val)."""

import sys

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821 (snakemake is injected)

from lmablate.tokens import encode_corpus
from lmablate.workflow import run_step

run_step(lambda: encode_corpus(snakemake.input.manifest, snakemake.input.tokenizer,
                               snakemake.output.tokens,
                               val_fraction=snakemake.params.val_fraction))
