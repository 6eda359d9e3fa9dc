"""The workflow through a real Slurm cluster (`.ci/slurm-up.sh` starts a single-node one)."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time

import pandas as pd
import pytest

from conftest import REPO, snakemake, write_yaml

# CI's cluster has no accounting daemon, so status comes from squeue (profiles/slurm explains).
CI_FLAGS = ("--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2",
            "--slurm-no-account", "--slurm-keep-successful-logs")


def _slurm_up() -> str | None:
    """None when a Slurm controller answers, else the reason to skip."""
    if not shutil.which("sinfo") or not shutil.which("sbatch"):
        return "Slurm is not installed (run .ci/slurm-up.sh as root)"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                             timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo timed out: slurmctld is not answering"
    if out.returncode != 0 or not out.stdout.strip():
        return f"no Slurm controller answers ({out.stderr.strip()[:200]}); run .ci/slurm-up.sh"
    if not any(s.startswith(("idle", "mix", "alloc")) for s in out.stdout.split()):
        return f"no usable Slurm node (states: {out.stdout.split()})"
    return None


pytestmark = [pytest.mark.slurm, pytest.mark.workflow,
              pytest.mark.skipif(_slurm_up() is not None, reason=str(_slurm_up()))]


def _watch_squeue(seen: set[str], stop: threading.Event) -> None:
    while not stop.is_set():
        out = subprocess.run(["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True)
        seen.update(line.strip() for line in out.stdout.splitlines() if line.strip())
        time.sleep(0.5)


def test_study_runs_through_the_slurm_profile(tmp_path, tiny_study):
    write_yaml(tmp_path / "study.yaml", tiny_study)
    seen: set[str] = set()
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_squeue, args=(seen, stop), daemon=True)
    watcher.start()
    try:
        snakemake(tmp_path, "--profile", str(REPO / "profiles" / "slurm"), *CI_FLAGS,
                  timeout=1500)
    finally:
        stop.set()
        watcher.join()
    runs = pd.read_csv(tmp_path / "results" / "tiny" / "runs.csv")
    assert len(runs) == 4 and set(runs.status) == {"completed"}
    # every training job went through sbatch: the plugin keeps one Slurm log per job
    logs = list((tmp_path / ".snakemake" / "slurm_logs" / "rule_train_model").rglob("*.log"))
    assert len(logs) == 4, logs
    assert len(seen) >= 4, f"squeue showed only {seen}"
    # harvest and plots ran locally (localrules), not as Slurm jobs
    assert not (tmp_path / ".snakemake" / "slurm_logs" / "rule_harvest_metrics").exists()
