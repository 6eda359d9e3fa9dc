"""Draw the study's figures from the harvested tables."""

import sys

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821 (snakemake is injected)

from lmablate.workflow.steps import plot_study_step, run_step

run_step(lambda: plot_study_step(snakemake.input.runs, snakemake.input.curves,
                                 dict(snakemake.output.items()), baseline=snakemake.params.baseline,
                                 study=snakemake.params.study,
                                 figures=snakemake.params.figures))
