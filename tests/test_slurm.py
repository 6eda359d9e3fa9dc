"""The workflow through a real Slurm cluster (`.ci/slurm-up.sh` starts a single-node one), and
how profiles/slurm reads the cluster it is loaded on (shims stand in for other clusters)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, snakemake, write_yaml

PROFILE = REPO / "profiles" / "slurm"
# The profile picks the status command itself; tests only keep the Slurm logs to look into them.
KEEP_LOGS = ("--slurm-keep-successful-logs",)
# What the plugin prints when it guesses an account (profiles/slurm: honour_no_account).
ACCOUNT_NOISE = ("No SLURM account given", "not able to get a SLURM account",
                 "Unable to guess SLURM account", "returned empty results for account")


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


def needs_slurm(test):
    """Marks a test that submits real Slurm jobs (the profile tests below need no cluster)."""
    reason = _slurm_up()
    for mark in (pytest.mark.slurm, pytest.mark.workflow,
                 pytest.mark.skipif(reason is not None, reason=str(reason))):
        test = mark(test)
    return test


def _watch_squeue(seen: set[str], stop: threading.Event) -> None:
    while not stop.is_set():
        out = subprocess.run(["squeue", "-h", "-o", "%i|%j|%k"], capture_output=True, text=True)
        seen.update(line.strip() for line in out.stdout.splitlines() if line.strip())
        time.sleep(0.5)


def _path_without(tmp_path: Path, *names: str) -> str:
    """$PATH with every directory that holds one of ``names`` replaced by a copy (links) without
    them: a cluster where those commands are not installed."""
    dirs = []
    for d in os.environ["PATH"].split(os.pathsep):
        if d and any((Path(d) / n).exists() for n in names):
            shim = tmp_path / "path" / str(len(dirs))
            shim.mkdir(parents=True)
            for f in Path(d).iterdir():
                if f.name not in names:
                    (shim / f.name).symlink_to(f)
            d = str(shim)
        dirs.append(d)
    return os.pathsep.join([str(Path(sys.executable).parent), *dirs])


def _readme_slurm_command() -> list[str]:
    """The `snakemake --profile ...` line of README's "Running on Slurm" section."""
    section = (REPO / "README.md").read_text().split("## Running on Slurm", 1)[1]
    (line,) = [ln for ln in section.split("```", 2)[1].splitlines()
               if ln.startswith("snakemake ")]
    return shlex.split(line.split("#")[0])


def _readme_command_in_a_copy(root: Path, study: dict, env: dict | None = None,
                              timeout: float = 1500) -> subprocess.CompletedProcess:
    """Run README's Slurm command as a user would: in a copy of the repository (its files as git
    lists them) whose config.yaml is ``study``, from its root, nothing added. A timeout bounds
    it (a hang fails the test instead of blocking it)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    for name in files:
        src, dst = REPO / name, root / name
        if src.is_symlink() or src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst, follow_symlinks=False)
    write_yaml(root / "config.yaml", study)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # `snakemake`
    return subprocess.run(_readme_slurm_command(), cwd=root, env=env, capture_output=True,
                          text=True, timeout=timeout)


@needs_slurm
def test_readme_command_runs_a_study_and_squeue_names_each_run(tmp_path, tiny_study):
    """`snakemake --profile slurm` from the repository root on the CI cluster (sacct present,
    accounting disabled): it finishes, every training run was a Slurm job whose comment names
    its run ID while it ran, and no account warning was printed."""
    seen: set[str] = set()
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_squeue, args=(seen, stop), daemon=True)
    watcher.start()
    try:
        proc = _readme_command_in_a_copy(tmp_path, tiny_study)
    finally:
        stop.set()
        watcher.join()
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    runs = pd.read_csv(tmp_path / "results" / "tiny" / "runs.csv")
    assert len(runs) == 4 and set(runs.status) == {"completed"}
    for rid in runs.run_id:
        named = [s for s in seen if s.endswith(f"|rule_train_model_wildcards_{rid}")]
        assert named and all(s.split("|")[1].startswith("lmablate_") for s in named), seen
    assert not [n for n in ACCOUNT_NOISE if n in out], out[-6000:]
    # harvest and plots ran locally (localrules), not as Slurm jobs
    assert not (tmp_path / ".snakemake" / "slurm_logs" / "rule_harvest_metrics").exists()


@needs_slurm
def test_grouped_job_trains_several_runs(tmp_path, tiny_study):
    write_yaml(tmp_path / "study.yaml", tiny_study)
    snakemake(tmp_path, "--profile", str(PROFILE), *KEEP_LOGS,
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


@needs_slurm
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
         "--configfile", str(work / "study.yaml"), "--profile", str(PROFILE),
         *KEEP_LOGS], cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        runs_dir = work / "results" / "tiny" / "runs"
        deadline = time.monotonic() + 900
        job = None
        while job is None:  # wait until the training job has logged a few steps
            assert proc.poll() is None and time.monotonic() < deadline
            metrics = list(runs_dir.glob("*/metrics.jsonl"))
            if metrics and metrics[0].read_text().count("\n") >= 4:
                job = _train_job_id(f"rule_train_model_wildcards_{metrics[0].parent.name}")
            time.sleep(0.2)
        subprocess.run(["scontrol", "requeue", job], check=True)
        assert proc.wait(timeout=900) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    (rid,) = [p.name for p in runs_dir.iterdir()]
    log = (work / "logs" / "tiny" / "train_model" / f"{rid}.log").read_text()
    # the log keeps the first attempt's lines, up to the signal, then a marker, then the second's
    marks = [ln for ln in log.splitlines() if ln.startswith("=== lmablate: attempt ")]
    assert len(marks) == 2, log
    for n, mark in enumerate(marks):  # the same Slurm job, restarted once by the requeue
        assert mark.startswith(f"=== lmablate: attempt {n + 1} at ") and mark.endswith(
            f"SLURM_JOB_ID={job} SLURM_RESTART_COUNT={n}"), marks
    first, second = log.split(marks[1])
    assert "starting" in first and "resumed from" not in first, log
    assert re.search(r"step \d+/\d+ tokens", first), log
    assert re.search(r"signal 15: checkpointed at step \d+, exiting for requeue", first), log
    assert "resumed from" in second and "starting" not in second, log
    assert log == (work / "checkpoints" / "tiny" / rid / "train.log").read_text()
    final = json.loads((runs_dir / rid / "final.json").read_text())
    expected = json.loads((ref / "results" / "tiny" / "runs" / rid / "final.json").read_text())
    for key in ("val_loss", "best_val_loss", "val_acc", "final_train_loss", "steps", "tokens"):
        assert final[key] == expected[key], key


@needs_slurm
def test_one_failing_job_does_not_stop_the_others(tmp_path, tiny_study):
    # `long_ctx` passes every parse-time check (batch 1: one step fits the 8192-token budget) but
    # its job fails at run time: its windows are longer than the validation split (~5k tokens),
    # a DataError inside train().
    variants = {"baseline": {}, "post_norm": {"model.norm_position": "post"},
                "long_ctx": {"train.seq_len": 8192, "train.batch_size": 1}}
    tiny_study["sweep"] = {"variants": variants, "seeds": [0]}
    write_yaml(tmp_path / "study.yaml", tiny_study)
    # no --keep-going here: profiles/slurm sets it, and that is what is tested
    proc = snakemake(tmp_path, "--profile", str(PROFILE), *KEEP_LOGS,
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


@needs_slurm
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
    snakemake(tmp_path, "--profile", str(tmp_path / "profile"), *KEEP_LOGS,
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


@needs_slurm
def test_readme_command_works_where_sacct_is_not_installed(tmp_path, tiny_study):
    """The same command on a cluster without `sacct`: the profile polls with squeue and submits
    without an account (plugin 2.8.0 alone fails every submission there: it runs sacct to guess
    an account)."""
    tiny_study["sweep"] = {"seeds": [0]}
    path = _path_without(tmp_path / "shims", "sacct")
    proc = _readme_command_in_a_copy(tmp_path / "repo", tiny_study, env={"PATH": path})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    runs = pd.read_csv(tmp_path / "repo" / "results" / "tiny" / "runs.csv")
    assert list(runs.status) == ["completed"]
    assert not [n for n in ACCOUNT_NOISE if n in out], out[-6000:]


# profiles/slurm on clusters other than CI's: shims answer for `sacct` and `scontrol`
SACCT = {"works": "exit 0",
         "disabled": "echo 'Slurm accounting storage is disabled' >&2; exit 1",
         "broken": "echo 'sacct: error: Problem talking to the database: Connection refused' >&2"
                   "; exit 1"}
SCONTROL = {"300": "echo 'MinJobAge               = 300 sec'",
            "30": "echo 'MinJobAge               = 30 sec'",
            "down": "echo 'slurm_load_ctl_conf error: Unable to contact slurm controller' >&2"
                    "; exit 1"}


def _cluster_env(tmp_path: Path, sacct: str | None, scontrol: str, **env: str) -> dict:
    """The environment of a cluster whose `sacct` behaves as ``SACCT[sacct]`` (None: it is not
    installed) and whose `scontrol show config` as ``SCONTROL[scontrol]``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {"scontrol": SCONTROL[scontrol], **({"sacct": SACCT[sacct]} if sacct else {})}
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    path = _path_without(tmp_path, "sacct") if sacct is None else os.environ["PATH"]
    base = {k: v for k, v in os.environ.items() if k != "SLURM_ACCOUNT"}
    return {**base, "PATH": f"{bin_dir}{os.pathsep}{path}", **env}


def _load_profile(env: dict) -> subprocess.CompletedProcess:
    """profiles/slurm/config.yaml as snakemake reads it (YTE), printed as JSON."""
    code = ("import json, sys, yte\n"
            "print(json.dumps(yte.process_yaml(open(sys.argv[1]), require_use_yte=True)))")
    return subprocess.run([sys.executable, "-c", code, str(PROFILE / "config.yaml")], env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("sacct, status, init", [
    (None, "squeue", 2),          # (a) no sacct
    ("disabled", "squeue", 2),    # (b) sacct, accounting storage disabled (CI's cluster)
    ("broken", "squeue", 2),      # sacct cannot reach slurmdbd: squeue still sees jobs
    ("works", None, 40),          # (c) accounting: the plugin's default, sacct
])
def test_profile_picks_the_status_command_that_sees_finished_jobs(tmp_path, sacct, status,
                                                                   init):
    proc = _load_profile(_cluster_env(tmp_path, sacct, "300"))
    assert proc.returncode == 0, proc.stderr
    profile = json.loads(proc.stdout)
    assert profile.get("slurm-status-command") == status
    assert profile["slurm-init-seconds-before-status-checks"] == init
    # no SLURM_ACCOUNT: no -A, and the plugin is told so instead of guessing one
    assert profile["slurm-no-account"] is True
    assert "slurm_account" not in profile["default-resources"]
    assert profile["slurm-jobname-prefix"] == "lmablate"


def test_profile_passes_the_account_the_user_exports(tmp_path):
    proc = _load_profile(_cluster_env(tmp_path, "works", "300", SLURM_ACCOUNT="proj-42"))
    assert proc.returncode == 0, proc.stderr
    profile = json.loads(proc.stdout)
    # a Python literal: snakemake evaluates profile resource values
    assert profile["default-resources"]["slurm_account"] == "'proj-42'"
    assert "slurm-no-account" not in profile


@pytest.mark.parametrize("sacct, scontrol, message", [
    ("broken", "30", "slurm-status-command: sacct fails (sacct: error: Problem talking to the "
                     "database: Connection refused), and squeue forgets finished jobs after "
                     "MinJobAge=30 s (< 200 s)"),
    (None, "down", "slurm: no Slurm controller answers (scontrol show config: "
                   "slurm_load_ctl_conf error: Unable to contact slurm controller)"),
])
def test_snakemake_stops_at_once_with_one_line_where_no_status_command_works(
        tmp_path, tiny_study, sacct, scontrol, message):
    env = _cluster_env(tmp_path, sacct, scontrol)
    write_yaml(tmp_path / "study.yaml", tiny_study)
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--configfile",
           "study.yaml", "--profile", str(PROFILE), "-n"]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1 and time.monotonic() - t0 < 60
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("lmablate:")]
    assert len(lines) == 1 and lines[0].startswith(
        f"lmablate: profiles/slurm/config.yaml: {message}"), proc.stderr
    if sacct:  # it says what to pass, and passing it skips the check
        assert "pass --slurm-status-command sacct|squeue" in lines[0]
        proc = subprocess.run([*cmd, "--slurm-status-command", "squeue"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0 and "lmablate:" not in proc.stderr, proc.stderr[-3000:]
    else:
        assert "login node" in lines[0]


def test_each_attempt_log_starts_with_the_earlier_attempts_and_a_marker(tmp_path, monkeypatch):
    """What a requeue does to a run's log, without Slurm: Snakemake deletes the log before each
    attempt; the copy beside the checkpoints brings the earlier lines back."""
    from lmablate.workflow.steps import open_attempt_log

    log, history = tmp_path / "logs" / "run.log", tmp_path / "ckpt" / "run" / "train.log"
    log.parent.mkdir()
    for restart, text in enumerate(["first\npartial line", "second\n"]):
        monkeypatch.setenv("SLURM_JOB_ID", "7")
        monkeypatch.setenv("SLURM_RESTART_COUNT", str(restart))
        log.unlink(missing_ok=True)
        stream = open_attempt_log(log, history)
        stream.write(text)
        stream.close()
    lines = log.read_text().splitlines()
    assert [ln.split(" at ")[0] for ln in lines[::3]] == ["=== lmablate: attempt 1",
                                                         "=== lmablate: attempt 2"]
    assert lines[0].endswith(" SLURM_JOB_ID=7 SLURM_RESTART_COUNT=0")
    assert lines[3].endswith(" SLURM_JOB_ID=7 SLURM_RESTART_COUNT=1")
    assert lines[1:3] == ["first", "partial line"] and lines[4:] == ["second"]
    assert history.read_text() == log.read_text()
