"""LR range test of one run (lmablate.engine.lrfind.lr_range_test): lr_find.json and lr_find.png."""

import sys

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821 (snakemake is injected)

from pathlib import Path

from lmablate.engine.lrfind import lr_range_test
from lmablate.workflow.steps import run_step

run_step(lambda: lr_range_test(snakemake.params.run, snakemake.input.tokens,  # noqa: F821
                               Path(snakemake.output.result).parent,
                               run_id=snakemake.wildcards.run_id, threads=snakemake.threads,
                               **snakemake.params.options))
