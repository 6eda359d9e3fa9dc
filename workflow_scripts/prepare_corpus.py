"""Copy or download a corpus into resources/corpora/<corpus>/ (manifest.json written last)."""

import sys

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821 (snakemake is injected)

from pathlib import Path

from lmablate.data.corpora import prepare_corpus
from lmablate.study.corpus_spec import located
from lmablate.workflow.steps import run_step

run_step(lambda: prepare_corpus(located(snakemake.params.spec),
                                Path(snakemake.output.manifest).parent))
