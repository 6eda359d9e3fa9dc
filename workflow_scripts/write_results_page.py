"""Write the results page (findings, ranking, test split, losses per epoch, a two-phase study's
phase 1, runs, figures with captions) the report shows."""

import sys

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821 (snakemake is injected)

from lmablate.results.page import write_results_page
from lmablate.workflow.steps import run_step

run_step(lambda: write_results_page(snakemake.input.runs_csv, snakemake.input.summary,
                                    snakemake.output[0], study=snakemake.params.study,
                                    figures=snakemake.params.figures,
                                    curves=snakemake.input.curves,
                                    phase1_dir=snakemake.params.phase1_dir,
                                    maximize=snakemake.params.maximize))
