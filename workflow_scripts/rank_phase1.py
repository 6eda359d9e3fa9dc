"""Harvest the phase-1 runs of a two-phase study and write selected.json (the runs phase 2
trains)."""

import sys

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821 (snakemake is injected)

from lmablate.workflow.steps import rank_phase1_step, run_step

run_step(lambda: rank_phase1_step(snakemake.input.finals, snakemake.output.selected,
                                  snakemake.params.ranking, study=snakemake.params.study,
                                  baseline=snakemake.params.baseline,
                                  figure=snakemake.output.ranking,
                                  figures=snakemake.params.figures))
