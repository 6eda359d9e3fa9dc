"""The workflow through a real Slurm cluster (`.ci/slurm-up.sh` starts a single-node one)."""

from __future__ import annotations

import json
import os
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


def test_one_failing_job_does_not_stop_the_others(tmp_path, tiny_study):
    # `long_ctx` passes every parse-time check but its job fails at run time: its windows are
    # longer than the validation split (~5k tokens), a DataError inside train().
    variants = {"baseline": {}, "post_norm": {"model.norm_position": "post"},
                "long_ctx": {"train.seq_len": 8192}}
    tiny_study["sweep"] = {"variants": variants, "seeds": [0]}
    write_yaml(tmp_path / "study.yaml", tiny_study)
    # no --keep-going here: profiles/slurm sets it, and that is what is tested
    proc = snakemake(tmp_path, "--profile", str(REPO / "profiles" / "slurm"), *CI_FLAGS,
                     "--set-resources", "train_model:cpus_per_task=1", "train_model:mem_mb=2000",
                     check=False, timeout=1500)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-4000:]
    runs_dir = tmp_path / "results" / "tiny" / "runs"
    finished = {p.parent.name.split("-")[0] for p in runs_dir.glob("*/final.json")}
    assert finished == {"baseline", "post_norm"}, out[-4000:]
    assert "Error in rule train_model" in out and "long_ctx" in out, out[-4000:]
    # the job's one-line error is in the run's log and in its (kept) Slurm log
    error = "lmablate: error: the validation split has"
    logs = list((tmp_path / "logs" / "tiny" / "train_model").glob("long_ctx-*.log"))
    assert len(logs) == 1 and error in logs[0].read_text()
    slurm_logs = (tmp_path / ".snakemake" / "slurm_logs").glob("*train_model/**/*.log")
    assert any(error in log.read_text() for log in slurm_logs), out[-4000:]


# The commented "several runs in ONE Slurm job on ONE GPU" recipe of profiles/slurm, switched on.
ONE_GPU_GROUP_LINES = ('    # gpu: 0\n', '    # gres: "gpu:1"\n', '    # train_serial: 1\n',
                       '# resources:\n', '#   train_serial: 1\n', '# set-resource-scopes:\n',
                       '#   train_serial: local\n')


def test_grouped_runs_share_one_gpu_request_and_their_time_limits_add_up(tmp_path, monkeypatch,
                                                                         tiny_study):
    text = (REPO / "profiles" / "slurm" / "config.yaml").read_text()
    for line in ONE_GPU_GROUP_LINES:
        assert text.count(line) == 1, line
        text = text.replace(line, line.replace("# ", "", 1))
    text = text.replace("    cpus_per_task: 2\n", "    cpus_per_task: 1\n")  # 2 jobs at once in CI
    (tmp_path / "profile").mkdir()
    (tmp_path / "profile" / "config.yaml").write_text(text)
    # CI's node has no GPU: a shim sbatch records each call, then submits it without --gres
    shim = tmp_path / "bin" / "sbatch"
    shim.parent.mkdir()
    shim.write_text(f"#!/bin/bash\nprintf '%s\\n' \"$*\" >> {tmp_path}/sbatch.calls\n"
                    "args=(); for a in \"$@\"; do [[ $a == --gres=* ]] || args+=(\"$a\"); done\n"
                    f"exec {shutil.which('sbatch')} \"${{args[@]}}\"\n")
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim.parent}:{os.environ['PATH']}")
    write_yaml(tmp_path / "study.yaml", tiny_study)
    snakemake(tmp_path, "--profile", str(tmp_path / "profile"), *CI_FLAGS,
              "--group-components", "train=2", timeout=1500)
    runs = pd.read_csv(tmp_path / "results" / "tiny" / "runs.csv")
    assert len(runs) == 4 and set(runs.status) == {"completed"}
    calls = [c.split(" --wrap=")[0] for c in (tmp_path / "sbatch.calls").read_text().splitlines()
             if "--comment rule_train_train_model" in c]
    assert len(calls) == 2, calls  # 4 runs in 2 Slurm jobs
    for call in calls:
        # one GPU for both runs (not --gpus=2); they run one after another, so the time limit
        # is the sum of two 30-minute limits and memory/CPUs are one run's
        assert "--gres=gpu:1" in call and "--gpus" not in call, call
        assert " -t 60 " in call and " --mem 8000 " in call and "--cpus-per-task=1" in call, call
