"""The workflow through a real Slurm cluster (`.ci/slurm-up.sh` starts a single-node one)."""

from __future__ import annotations

import json
import shutil
import sys
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
    # (train_model is in group "train": without --group-components each group is one job)
    logs = list((tmp_path / ".snakemake" / "slurm_logs").glob("*train_model/**/*.log"))
    assert len(logs) == 4, logs
    assert len(seen) >= 4, f"squeue showed only {seen}"
    # harvest and plots ran locally (localrules), not as Slurm jobs
    assert not (tmp_path / ".snakemake" / "slurm_logs" / "rule_harvest_metrics").exists()


def test_grouped_job_trains_several_runs(tmp_path, tiny_study):
    write_yaml(tmp_path / "study.yaml", tiny_study)
    snakemake(tmp_path, "--profile", str(REPO / "profiles" / "slurm"), *CI_FLAGS,
              "--group-components", "train=2", "--set-resources", "train_model:cpus_per_task=1",
              "train_model:mem_mb=4000", timeout=1500)
    runs = pd.read_csv(tmp_path / "results" / "tiny" / "runs.csv")
    assert len(runs) == 4 and set(runs.status) == {"completed"}
    groups = sorted((tmp_path / ".snakemake" / "slurm_logs").glob("group_train*/*.log"))
    assert len(groups) == 2, groups  # 4 runs in 2 Slurm jobs
    for log in groups:
        text = log.read_text()
        assert sum(rid in text for rid in runs.run_id) == 2, text[-2000:]


def _train_job_id(comment: str = "train_model") -> str | None:
    out = subprocess.run(["squeue", "-h", "-o", "%i %k %T"], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        job, com, state = (line.split() + ["", "", ""])[:3]
        if comment in com and state == "RUNNING":
            return job
    return None


def test_requeued_training_job_resumes_and_matches_an_uninterrupted_run(tmp_path, tiny_study):
    tiny_study["sweep"] = {"seeds": [0]}
    tiny_study["defaults"]["train"].update(tokens=40960, checkpoint_every=2)
    ref, work = tmp_path / "ref", tmp_path / "slurm"
    for d in (ref, work):
        d.mkdir()
        write_yaml(d / "study.yaml", tiny_study)
    snakemake(ref, "-c1")  # the uninterrupted reference, trained locally

    proc = subprocess.Popen(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(work),
         "--configfile", str(work / "study.yaml"), "--profile", str(REPO / "profiles" / "slurm"),
         *CI_FLAGS], cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        runs_dir = work / "results" / "tiny" / "runs"
        deadline = time.monotonic() + 900
        job = None
        while job is None:  # wait until the training job has logged a few steps
            assert proc.poll() is None and time.monotonic() < deadline
            metrics = list(runs_dir.glob("*/metrics.jsonl"))
            if metrics and metrics[0].read_text().count("\n") >= 4:
                job = _train_job_id()
            time.sleep(0.2)
        subprocess.run(["scontrol", "requeue", job], check=True)
        assert proc.wait(timeout=900) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    (rid,) = [p.name for p in runs_dir.iterdir()]
    log = (work / "logs" / "tiny" / "train_model" / f"{rid}.log").read_text()
    assert "resumed from" in log
    final = json.loads((runs_dir / rid / "final.json").read_text())
    expected = json.loads((ref / "results" / "tiny" / "runs" / rid / "final.json").read_text())
    for key in ("val_loss", "best_val_loss", "val_acc", "final_train_loss", "steps", "tokens"):
        assert final[key] == expected[key], key
