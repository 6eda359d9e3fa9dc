"""Write one finished run as a Hugging Face model directory (config.json, weights, tokenizer)."""

import sys

sys.stderr = open(snakemake.log[0], "w")

from pathlib import Path

from lmablate.interop.exporthf import export_hf
from lmablate.workflow.steps import run_step

run_step(lambda: export_hf(Path(snakemake.input.final).parent, snakemake.output.hf,
                           tokenizer=snakemake.input.tokenizer))
