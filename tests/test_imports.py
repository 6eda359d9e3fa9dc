"""The Snakefile's parse path imports no torch: every `snakemake` invocation (a dry run, each
job's own parse of the workflow) would otherwise pay torch's import (~1-2 s) before any work."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, snakemake, write_yaml

HEAVY = ("torch", "transformers", "matplotlib")


def snakefile_imports() -> list[str]:
    """The lmablate modules the Snakefile and rules/*.smk import at top level."""
    mods = set()
    for path in [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]:
        for line in path.read_text().splitlines():
            m = re.match(r"(?:import|from) (lmablate[\w.]*)", line)
            if m:
                mods.add(m.group(1))
    return sorted(mods)


def test_the_snakefile_imports_lmablate_modules_and_they_load_no_torch() -> None:
    mods = snakefile_imports()
    assert {"lmablate", "lmablate.paths", "lmablate.workflow.dag"} <= set(mods)
    code = (f"import sys\nimport {', '.join(mods)}\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"{mods} import {out.stdout.strip()}"


@pytest.mark.workflow
def test_snakemake_dry_run_of_the_default_study_imports_no_torch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real `snakemake -n` of config.yaml (run table, eval plan, figures, resources all
    evaluated), its imports traced with -X importtime."""
    write_yaml(tmp_path / "study.yaml", yaml.safe_load((REPO / "config.yaml").read_text()))
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")
    proc = snakemake(tmp_path, "-n")
    imported = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    assert "lmablate.study.sweep" in imported and "train_model" in proc.stdout + proc.stderr
    assert not {m for m in imported if m.split(".")[0] in HEAVY}
