"""Collect every run of the study into runs.csv/parquet, curves.parquet, summary.json,
analysis.txt (a copy of the tables in results/<study>/last_good/)."""

import sys

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821 (snakemake is injected)

from pathlib import Path

from lmablate.workflow.steps import harvest_step, run_step

run_step(lambda: harvest_step(snakemake.input.finals, Path(snakemake.output.summary).parent,
                              study=snakemake.params.study, baseline=snakemake.params.baseline,
                              figures=snakemake.params.figures, shared=snakemake.params.shared,
                              settings=snakemake.params.settings,
                              swept=snakemake.params.swept))
