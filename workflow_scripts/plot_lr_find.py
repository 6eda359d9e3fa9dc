"""Every LR range test of the study in one figure."""

import sys

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821 (snakemake is injected)

import json

from lmablate.figures.sweeps import lr_finder
from lmablate.workflow.steps import run_step


def plot():
    results = [json.load(open(path)) for path in snakemake.input]  # noqa: F821
    lr_finder(results, snakemake.output[0])  # noqa: F821


run_step(plot)
