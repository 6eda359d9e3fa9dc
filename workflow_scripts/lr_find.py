"""LR range test of one run (lmablate.engine.lrfind.lr_range_test): lr_find.json and lr_find.png."""

import sys

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821 (snakemake is injected)

from pathlib import Path

from lmablate.engine.lrfind import lr_range_test
from lmablate.figures.sweeps import lr_finder
from lmablate.workflow.steps import run_step


def lr_find():
    result = lr_range_test(snakemake.params.run, snakemake.input.tokens,  # noqa: F821
                           Path(snakemake.output.result).parent,  # noqa: F821
                           run_id=snakemake.wildcards.run_id, threads=snakemake.threads,  # noqa: F821
                           **snakemake.params.options)  # noqa: F821
    lr_finder([result], snakemake.output.plot)  # noqa: F821


run_step(lr_find)
