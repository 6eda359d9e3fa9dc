"""The bare Snakefile's one script: create the job's outputs (bench/bare/Snakefile)."""

from pathlib import Path

for out in snakemake.output:  # noqa: F821 (snakemake is injected)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).touch()
