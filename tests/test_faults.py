"""Faults a long study meets on a shared machine, with real processes, signals and file systems.

One uninterrupted run of the tiny study (4 runs) is the reference. Against it:

- the SIGKILL sweep: 20 kills of Snakemake's whole process group at seeded random points in
  every stage (corpus copy, tokenizer training, HDF5 writing, training, harvest, plotting); after
  the last, ``snakemake --unlock`` (the stale lock is Snakemake's, as its message says) and
  ``snakemake`` finish the study, and every final metric, curve, weight and token id is bitwise
  the reference's;
- a full disk (a real, small tmpfs) while a checkpoint or the HDF5 token store is written;
- corrupt or truncated checkpoints, token stores, tokenizers and metrics logs;
- two ``snakemake`` at once in one directory;
- a diverging run (recorded, the DAG succeeds) and a crashing run (the job fails loudly with its
  log path; ``--keep-going`` finishes the others).

Checks that fail today are strict xfails whose reason names the fix.
"""

from __future__ import annotations

import copy
import glob
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import REPO, TINY_STUDY, fill, write_yaml

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

STAGES = ("prepare_corpus", "train_tokenizer", "tokenize_corpus", "train_model", "harvest_metrics",
          "plot_study")
# keys whose values are measurements of the machine, not results (compared nowhere), and the
# checksums of metrics.jsonl, whose records hold some, and of the other run files (the files
# themselves are compared)
TIMING = re.compile(r"(per_s|_s|runtime|peak_mem_mb|seconds|created)$|^latency_ms"
                    r"|^metrics_sha256$|^files$")
TRACEBACK = "Traceback (most recent call last)"


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONWARNINGS": "ignore"}


def snakemake_cmd(workdir: Path, *args: str) -> list[str]:
    """The real snakemake CLI on this repo's Snakefile, with workdir/study.yaml as the study."""
    return [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
            "--configfile", str(workdir / "study.yaml"), *args]


def run(cmd: list[str], cwd: Path, timeout: float = 600) -> tuple[int, str]:
    proc = subprocess.run(cmd, cwd=cwd, env=env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout, check=False)
    return proc.returncode, proc.stdout


def snakemake(workdir: Path, *args: str) -> tuple[int, str]:
    return run(snakemake_cmd(workdir, *args), workdir)


def lmablate_train(workdir: Path, run_id: str, tokens: Path) -> subprocess.Popen:
    """``lmablate train`` as a real process (1 thread, CPU, as the workflow's training jobs)."""
    return subprocess.Popen(
        [sys.executable, "-m", "lmablate", "train", "study.yaml", run_id, "--tokens", str(tokens),
         "--threads", "1", "--device", "cpu"], cwd=workdir, env=env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True)


# --------------------------------------------------------------------------------------------------
# what must be bitwise equal between two runs of the study


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def deterministic(obj: object) -> object:
    """``obj`` without machine measurements (timings, memory); NaN survives as the JSON 'NaN'."""
    if isinstance(obj, dict):
        return {k: deterministic(v) for k, v in obj.items() if not TIMING.search(str(k))}
    if isinstance(obj, list):
        return [deterministic(v) for v in obj]
    return obj


def _canon(obj: object) -> str:
    """Canonical JSON; floats as Python's shortest exact repr, so equal text is equal bits."""
    return json.dumps(deterministic(obj), sort_keys=True,
                      default=lambda o: o.item() if hasattr(o, "item") else str(o))


def run_fingerprint(run_dir: Path) -> dict[str, str]:
    out = {}
    for name in ("final.json", "trainer_state.json"):
        out[name] = _canon(json.loads((run_dir / name).read_text()))
    out["metrics.jsonl"] = _canon([json.loads(line) for line in
                                   (run_dir / "metrics.jsonl").read_text().splitlines()])
    out["model.safetensors"] = weights_fingerprint(run_dir / "model.safetensors")
    out["config.yaml"] = _sha(run_dir / "config.yaml")
    return out


def weights_fingerprint(path: Path) -> str:
    """Every tensor's name, dtype, shape and bytes, and the metadata. (Not the file's bytes: the
    safetensors writer orders the metadata mapping differently from one process to the next.)"""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        tensors = {k: [str(t.dtype), list(t.shape), hashlib.sha256(t.numpy().tobytes()).hexdigest()]
                   for k in sorted(f.keys()) for t in [f.get_tensor(k)]}
        return _canon({"metadata": f.metadata(), "tensors": tensors})


def token_store_fingerprint(path: Path) -> str:
    import h5py

    with h5py.File(path, "r") as f:
        parts = [hashlib.sha256(f[k][:].tobytes()).hexdigest() for k in sorted(f.keys())]
        attrs = {k: str(v) for k, v in f.attrs.items() if k != "created"}
    return _canon({"datasets": parts, "attrs": attrs})


def fingerprint(root: Path) -> dict[str, str]:
    """Every final metric, curve, weight, the tokenizer and the token ids of the study in root."""
    import pandas as pd

    res = root / "results" / "tiny"
    out: dict[str, str] = {}
    for d in sorted((res / "runs").iterdir()):
        out.update({f"{d.name}/{k}": v for k, v in run_fingerprint(d).items()})
    out["summary.json"] = _canon(json.loads((res / "summary.json").read_text()))
    runs = pd.read_parquet(res / "runs.parquet")
    runs = runs[[c for c in runs.columns if not TIMING.search(c)]].sort_values("run_id")
    out["runs.parquet"] = _canon(runs.to_dict("records"))
    out["curves.parquet"] = curves_fingerprint(root)
    for p in sorted(root.glob("resources/tokenizers/*/tokenizer.json")):
        out[str(p.relative_to(root))] = _sha(p)
    for p in sorted(root.glob("resources/tokens/*.h5")):
        out[str(p.relative_to(root))] = token_store_fingerprint(p)
    for p in sorted(root.glob("resources/corpora/*/manifest.json")):
        out[str(p.relative_to(root))] = _sha(p)
    for name in ("loss_curves.png", "final_val_loss.png"):
        assert (res / "plots" / name).read_bytes()[:4] == b"\x89PNG"
    return out


def curves_fingerprint(root: Path) -> str:
    import pandas as pd

    curves = pd.read_parquet(root / "results" / "tiny" / "curves.parquet")
    return _canon(curves[curves.metric.astype(str) != "tokens_per_s"].to_dict("records"))


def results_snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): _sha(p)
            for p in sorted((root / "results").rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------------
# the reference: one uninterrupted run


@dataclass
class Reference:
    path: Path
    fingerprint: dict[str, str]
    durations: dict[str, float]  # seconds per job of each rule (benchmarks/), for kill timing
    run_ids: list[str]
    tokens: Path

    def copy(self, dest: Path, study: dict | None = None) -> Path:
        """A copy of the finished study (mtimes and Snakemake's metadata kept)."""
        shutil.copytree(self.path, dest, symlinks=True)
        if study is not None:
            write_yaml(dest / "study.yaml", study)
        return dest


def _durations(root: Path) -> dict[str, float]:
    out = {}
    for rule in STAGES:
        secs = []
        for tsv in glob.glob(str(root / "benchmarks" / "**" / "*.tsv"), recursive=True):
            if f"/{rule}/" in tsv or tsv.endswith(f"/{rule}.tsv"):
                secs.append(float(Path(tsv).read_text().splitlines()[1].split("\t")[0]))
        assert secs, rule
        out[rule] = sum(secs) / len(secs)
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    path = tmp_path_factory.mktemp("reference")
    write_yaml(path / "study.yaml", TINY_STUDY)
    status, out = snakemake(path, "-c2")
    assert status == 0, out[-5000:]
    run_ids = sorted(p.name for p in (path / "results" / "tiny" / "runs").iterdir())
    assert len(run_ids) == 4
    tokens = next((path / "resources" / "tokens").glob("*.h5"))
    return Reference(path, fingerprint(path), _durations(path), run_ids, tokens)


def with_variants(**variants: dict) -> dict:
    study = copy.deepcopy(TINY_STUDY)
    study["sweep"]["variants"].update(variants)
    return study


def new_run_ids(root: Path, ref: Reference) -> list[str]:
    """Runs in root that the reference did not have."""
    return sorted(p.name for p in (root / "results" / "tiny" / "runs").iterdir()
                  if p.name not in ref.run_ids)


def damaged_runs(root: Path, ref: Reference) -> list[str]:
    """Finished runs of the reference whose fingerprint differs in root (or that are gone)."""
    bad = []
    for rid in ref.run_ids:
        d = root / "results" / "tiny" / "runs" / rid
        if not (d / "final.json").is_file():
            bad.append(f"{rid}: deleted")
        elif {f"{rid}/{k}": v for k, v in run_fingerprint(d).items()} != {
                k: v for k, v in ref.fingerprint.items() if k.startswith(f"{rid}/")}:
            bad.append(f"{rid}: changed")
    return bad


# --------------------------------------------------------------------------------------------------
# the SIGKILL sweep


class Watched:
    """A snakemake in its own session; its output is read in a thread, tracking which rules
    started (and when) and which jobs are running."""

    def __init__(self, cmd: list[str], cwd: Path):
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env(), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines: list[str] = []
        self.started: list[tuple[float, str]] = []
        self.running: dict[str, str] = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        rule = None
        for line in self.proc.stdout:
            self.lines.append(line)
            if m := re.match(r"^(?:local)?rule (\w+):", line.strip()):
                rule = m.group(1)
                if rule in STAGES:  # not all, nor write_results_page (one atomic write)
                    self.started.append((time.monotonic(), rule))
            elif (m := re.match(r"^jobid: (\d+)$", line.strip())) and rule not in (None, "all"):
                self.running[m.group(1)] = rule
                rule = None
            elif m := re.search(r"Finished jobid: (\d+)", line):
                self.running.pop(m.group(1), None)

    def finish(self, timeout: float = 600) -> int:
        """Wait for snakemake to exit; its exit status."""
        status = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        self.proc.stdout.close()
        return status

    def kill_group(self) -> None:
        """SIGKILL snakemake and every job it started (one process group); wait until all died."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.finish()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("processes of the killed group survived")


# New files that show a stage's job is running now: its log opened by the script, the HDF5
# store's temporary file, a checkpoint. (mtime after the attempt started, or not there before.)
STAGE_FILES = {
    "prepare_corpus": "logs/prepare_corpus/*.log",
    "train_tokenizer": "logs/train_tokenizer/*.log",
    "tokenize_corpus": "resources/tokens/.*.tmp",
    "train_model": "checkpoints/tiny/*/step-*.pt",
    "harvest_metrics": "logs/tiny/harvest_metrics.log",
    "plot_study": "logs/tiny/plot_study.log",
}

# (stage, trigger): "rule" = a random fraction of the stage's reference job time after Snakemake
# starts a job of it; "file" = right after a new file of STAGE_FILES shows a job of it at work
# (mid-write for the token store and checkpoints). A stage already done falls through to the
# next one that runs. Two to eight kills per stage, 20 in all.
KILLS = [("prepare_corpus", "file"), ("prepare_corpus", "rule"),
         ("train_tokenizer", "rule"), ("train_tokenizer", "file"),
         ("tokenize_corpus", "rule"), ("tokenize_corpus", "file"), ("tokenize_corpus", "file"),
         ("train_model", "rule"), ("train_model", "file"), ("train_model", "rule"),
         ("train_model", "file"), ("train_model", "rule"), ("train_model", "file"),
         ("train_model", "rule"), ("train_model", "rule"),
         ("harvest_metrics", "rule"), ("harvest_metrics", "file"),
         ("plot_study", "file"), ("plot_study", "file"), ("plot_study", "file")]


def _fresh(root: Path, pattern: str, t_wall: float, before: set[str]) -> bool:
    for p in glob.glob(str(root / pattern)):
        try:
            if p not in before or os.stat(p).st_mtime > t_wall:
                return True
        except FileNotFoundError:
            pass
    return False


@dataclass
class Kill:
    target: str
    trigger: str
    fired: str = ""  # the stage whose start fired it
    delay: float = 0.0
    running: list[str] = field(default_factory=list)  # rules of jobs running when it landed
    missed: bool = False  # the attempt finished before the kill was due
    resumed: bool = False  # a training job of this attempt resumed from a checkpoint


def _kill_once(root: Path, kill: Kill, frac: float, durations: dict[str, float]) -> None:
    t_wall = time.time()
    before = {s: set(glob.glob(str(root / p))) for s, p in STAGE_FILES.items()}
    sm = Watched(snakemake_cmd(root, "-c2"), root)
    due: float | None = None
    target = STAGES.index(kill.target)
    while due is None or time.monotonic() < due:
        if sm.proc.poll() is not None:
            kill.missed = True
            assert sm.finish() == 0, "".join(sm.lines)[-5000:]
            return
        if due is None:
            beyond = [(t, r) for t, r in sm.started if STAGES.index(r) > target]
            reached = [(t, r) for t, r in sm.started if STAGES.index(r) >= target]
            if kill.trigger == "file" and _fresh(root, STAGE_FILES[kill.target], t_wall,
                                                 before[kill.target]):
                kill.fired, kill.delay = kill.target, frac * 0.05
                due = time.monotonic() + kill.delay
            elif (kill.trigger == "rule" and reached) or beyond:
                t, rule = (reached if kill.trigger == "rule" else beyond)[0]
                kill.fired, kill.delay = rule, frac * durations[rule]
                due = t + kill.delay
        time.sleep(0.002)
    kill.running = sorted(set(sm.running.values()))
    sm.kill_group()
    kill.resumed = any("resumed from" in p.read_text(errors="replace")
                       for p in root.glob("logs/tiny/train_model/*.log"))
    status, out = snakemake(root, "--unlock")
    assert status == 0, out[-3000:]


def test_sigkill_at_20_points_then_rerun_gives_bitwise_the_uninterrupted_results(
        tmp_path: Path, reference: Reference) -> None:
    root = tmp_path / "killed"
    root.mkdir()
    write_yaml(root / "study.yaml", TINY_STUDY)
    rng = random.Random(11)
    kills = [Kill(stage, trigger) for stage, trigger in KILLS]
    for kill in kills:
        _kill_once(root, kill, rng.uniform(0.05, 0.6), reference.durations)
    table = "\n".join(f"{i:2d} {k.target:16s} {k.trigger:4s} fired@{k.fired:16s} "
                      f"+{k.delay:5.2f}s running={k.running} missed={k.missed} "
                      f"resumed={k.resumed}"
                      for i, k in enumerate(kills))
    print(table)  # shown with -s / -rP: where each kill landed
    status, out = snakemake(root, "-c2")
    assert status == 0, out[-5000:] + "\n" + table
    assert sum(not k.missed for k in kills) == 20, table
    assert any(k.resumed for k in kills), f"no training job resumed from a checkpoint\n{table}"
    hit = {rule for k in kills for rule in k.running}
    assert hit >= set(STAGES), f"stages never killed: {set(STAGES) - hit}\n{table}"
    got = fingerprint(root)
    assert got.keys() == reference.fingerprint.keys(), table
    diff = [k for k in got if got[k] != reference.fingerprint[k]]
    assert not diff, f"differ from the uninterrupted run: {diff}\n{table}"


# --------------------------------------------------------------------------------------------------
# two snakemake at once; a diverging run; a crashing run


def test_second_snakemake_is_locked_out_and_a_diverging_run_never_fails_the_dag(
        tmp_path: Path, reference: Reference) -> None:
    boom = {"train.lr": 10.0, "train.grad_clip": 0.0, "train.warmup": 0, "seeds": [0]}
    root = reference.copy(tmp_path / "two", with_variants(boom=boom))
    first = Watched(snakemake_cmd(root, "-c1"), root)
    deadline = time.monotonic() + 300
    while not any(r == "train_model" for _, r in first.started):
        assert first.proc.poll() is None and time.monotonic() < deadline, "".join(first.lines)
        time.sleep(0.01)
    status, out = snakemake(root, "-c1")
    assert status != 0
    assert "Directory cannot be locked" in out, out[-3000:]
    assert first.finish() == 0, "".join(first.lines)[-5000:]

    import pandas as pd

    runs = pd.read_csv(root / "results" / "tiny" / "runs.csv").set_index("run_id")
    (boom_id,) = new_run_ids(root, reference)
    assert runs.loc[boom_id, "status"] == "diverged"
    assert set(runs.loc[reference.run_ids, "status"]) == {"completed"}
    assert not damaged_runs(root, reference)


def test_a_crashing_run_fails_loudly_and_keep_going_finishes_the_others(
        tmp_path: Path, reference: Reference) -> None:
    """The crash is real, not injected: model.vocab_size below the tokenizer's vocabulary passes
    the parse-time checks (the vocabulary is known only once the tokenizer exists) and makes the
    training job raise."""
    study = with_variants(crash={"model.vocab_size": 64, "seeds": [0]},
                          eps={"model.norm_eps": 1.0e-6, "seeds": [0]})
    from lmablate import read_study

    root = reference.copy(tmp_path / "crash", study)
    before = results_snapshot(root)
    status, out = snakemake(root, "-c2", "--keep-going")
    assert status != 0
    runs = {r.variant: r.run_id for r in read_study(root / "study.yaml").runs}
    crash_id, eps_id = runs["crash"], runs["eps"]
    log = f"logs/tiny/train_model/{crash_id}.log"
    assert "Error in rule train_model" in out and log in out, out[-5000:]
    assert TRACEBACK in (root / log).read_text()
    assert json.loads((root / "results/tiny/runs" / eps_id / "final.json").read_text())[
        "status"] == "completed"
    assert not (root / "results/tiny/runs" / crash_id / "final.json").exists()
    after = results_snapshot(root)
    assert {k: v for k, v in after.items() if k in before} == before  # harvest did not run


# --------------------------------------------------------------------------------------------------
# a full disk: a real tmpfs too small for the next write


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}); a full disk needs one")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


@dataclass
class DiskFull:
    status: int
    terminal: str
    newest_valid_step: int | None
    full_at_step: int
    stray: list[str]
    resumed_status: int
    resumed_terminal: str
    final: dict[str, str]


@pytest.fixture(scope="module")
def checkpoint_disk_full(tmp_path_factory: pytest.TempPathFactory,
                         reference: Reference) -> DiskFull:
    """``lmablate train`` with checkpoints/ on a 4 MiB tmpfs that fills after the first
    checkpoint; then space is freed and the same command resumes."""
    from lmablate.engine.checkpoint import list_checkpoints, load_latest

    root = tmp_path_factory.mktemp("disk-full-checkpoint")
    write_yaml(root / "study.yaml", TINY_STUDY)
    run_id = reference.run_ids[0]
    ckpt = root / "checkpoints" / "tiny" / run_id
    with tmpfs(root / "checkpoints", "4m") as mount:
        proc = lmablate_train(root, run_id, reference.tokens)
        deadline = time.monotonic() + 300
        while not list(ckpt.glob("step-*.pt.sha256")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            time.sleep(0.002)
        full_at = int(re.search(r"step-(\d+)", str(list_checkpoints(ckpt)[0])).group(1))
        fill(mount)
        terminal, _ = proc.communicate(timeout=300)
        stray = [p.name for p in ckpt.iterdir() if p.name.endswith(".tmp")]
        state = load_latest(ckpt)
        (mount / "filler").unlink()
        again = lmablate_train(root, run_id, reference.tokens)
        again_out, _ = again.communicate(timeout=600)
        final = run_fingerprint(root / "results" / "tiny" / "runs" / run_id) \
            if again.returncode == 0 else {}
    return DiskFull(proc.returncode, terminal, state["step"] if state else None, full_at, stray,
                    again.returncode, again_out, final)


def test_disk_full_during_a_checkpoint_keeps_the_previous_one_and_resumes_bitwise(
        checkpoint_disk_full: DiskFull, reference: Reference) -> None:
    got = checkpoint_disk_full
    assert got.status != 0, got.terminal[-3000:]
    assert got.newest_valid_step is not None and got.newest_valid_step >= got.full_at_step
    assert not got.stray, got.stray
    assert got.resumed_status == 0, got.resumed_terminal[-3000:]
    assert "resumed from" in got.resumed_terminal
    rid = reference.run_ids[0]
    assert got.final == {k.split("/", 1)[1]: v for k, v in reference.fingerprint.items()
                         if k.startswith(f"{rid}/")}


def test_disk_full_during_a_checkpoint_is_one_clear_line(checkpoint_disk_full: DiskFull) -> None:
    out = checkpoint_disk_full.terminal
    lines = [ln for ln in out.splitlines() if ln.startswith("lmablate: error:")]
    assert len(lines) == 1 and re.search(r"step-\d{8}\.pt.*[Nn]o space left", lines[0]), out[-3000:]
    assert TRACEBACK not in out


@dataclass
class StoreFull:
    status: int
    terminal: str
    log: str
    tokens_dir: list[str]
    old_store_same: bool
    results_same: bool


@pytest.fixture(scope="module")
def token_store_disk_full(tmp_path_factory: pytest.TempPathFactory,
                          reference: Reference) -> StoreFull:
    """A new variant needs a second token store on a tmpfs that holds only the first one."""
    root = reference.copy(tmp_path_factory.mktemp("disk-full-store") / "study",
                          with_variants(vocab300={"tokenizer.vocab_size": 300, "seeds": [0]}))
    tokens = root / "resources" / "tokens"
    held = tmp_path_factory.mktemp("held")
    (store,) = [shutil.copy2(p, held) for p in tokens.glob("*.h5")]
    store = Path(store)
    before = results_snapshot(root)
    size = (store.stat().st_size // 4096 + 16) * 4096  # the store + 64 KiB
    with tmpfs(tokens, str(size)):
        shutil.copy2(store, tokens / store.name)
        status, out = snakemake(root, "-c1")
        listing = sorted(p.name for p in tokens.iterdir())
        same = _sha(tokens / store.name) == _sha(store)
    log = "\n".join(p.read_text() for p in root.glob("logs/tokenize_corpus/*.log")
                    if p.stem != store.stem)
    return StoreFull(status, out, log, listing, same, results_snapshot(root) == before)


def test_disk_full_while_writing_the_token_store_leaves_nothing_partial(
        token_store_disk_full: StoreFull) -> None:
    got = token_store_disk_full
    assert got.status != 0, got.terminal[-3000:]
    assert "Error in rule tokenize_corpus" in got.terminal
    assert len(got.tokens_dir) == 1 and got.tokens_dir[0].endswith(".h5"), got.tokens_dir
    assert got.old_store_same and got.results_same


def test_disk_full_while_writing_the_token_store_is_one_clear_line(
        token_store_disk_full: StoreFull) -> None:
    lines = [ln for ln in token_store_disk_full.log.splitlines()
             if ln.startswith("lmablate: error:")]
    assert len(lines) == 1 and re.search(r"\.h5: .*[Nn]o space left", lines[0]), \
        token_store_disk_full.log[-3000:]


# --------------------------------------------------------------------------------------------------
# a read-only folder: a real read-only bind mount (root writes through chmod a-w, not through it)


@contextmanager
def read_only(path: Path) -> Iterator[Path]:
    """``path`` bind-mounted read-only over itself while inside."""
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot bind-mount here ({proc.stderr.strip()}); a read-only folder needs it")
    try:
        proc = subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], capture_output=True,
                              text=True, check=False)
        if proc.returncode != 0:
            pytest.skip(f"cannot remount read-only here ({proc.stderr.strip()})")
        yield path
    finally:
        if subprocess.run(["umount", str(path)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


RO_CASES = {  # the folder made read-only: the folder the one line names, and what it says
    "results": ("results/tiny", "the workflow writes there"),
    "resources": ("resources", "the workflow writes there"),
    "checkpoints": ("checkpoints/tiny", "the workflow writes there"),
    "fresh-results": ("results", "the workflow makes results/tiny/ there"),
}


@pytest.mark.parametrize("case", list(RO_CASES))
def test_a_read_only_folder_is_one_line_before_any_job(tmp_path: Path, reference: Reference,
                                                       case: str) -> None:
    """A finished study with a new variant (or, fresh-, an empty directory) whose folder is
    read-only: Snakemake would stop part-way with its own error (`Failed to create output
    directory`, `ProtectedOutputException`); lmablate names the folder before any job. A dry run
    is not refused: it still plans the fresh study, and finds nothing to do in the finished one."""
    if case.startswith("fresh-"):
        root = tmp_path / "fresh"
        root.mkdir()
        write_yaml(root / "study.yaml", TINY_STUDY)
    else:
        root = reference.copy(tmp_path / "ro", with_variants(nope={"model.pos_emb": "none"}))
    folder = case.removeprefix("fresh-")
    named, says = RO_CASES[case]
    (root / folder).mkdir(exist_ok=True)
    write_yaml(root / "finished.yaml", TINY_STUDY)
    before = {str(p) for p in root.rglob("*")}
    with read_only(root / folder):
        status, out = snakemake(root, "-c1")
        planned_status, planned = run(
            [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(root),
             "--configfile", str(root / "finished.yaml"), "-n"], root)
    lines = [ln for ln in out.splitlines() if ln.startswith("lmablate:")]
    assert status == 1 and len(lines) == 1, out[-3000:]
    assert lines[0] == (f"lmablate: {named}: not writable (a read-only file system); {says}. "
                        "Make it writable, or run in another directory"), lines[0]
    assert TRACEBACK not in out and "Building DAG" not in out, out[-3000:]
    made = sorted(str(p) for p in root.rglob("*") if str(p) not in before
                  and "/.snakemake" not in str(p))
    assert not made, made  # no job ran
    assert planned_status == 0, planned[-3000:]
    assert ("train_model" if case.startswith("fresh-") else "Nothing to be done") in planned


# --------------------------------------------------------------------------------------------------
# corrupt or truncated files


def test_corrupt_checkpoint_is_skipped_and_the_run_resumes_from_the_previous_one(
        tmp_path: Path, reference: Reference) -> None:
    from lmablate.engine.checkpoint import list_checkpoints

    write_yaml(tmp_path / "study.yaml", TINY_STUDY)
    run_id = reference.run_ids[1]
    ckpt = tmp_path / "checkpoints" / "tiny" / run_id
    proc = lmablate_train(tmp_path, run_id, reference.tokens)
    deadline = time.monotonic() + 300
    while len(list(ckpt.glob("step-*.pt.sha256"))) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    newest, previous = list_checkpoints(ckpt)[:2]
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, same size: only the checksum can tell
    newest.write_bytes(bytes(data))
    again = lmablate_train(tmp_path, run_id, reference.tokens)
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out[-3000:]
    assert re.search(rf"skipping checkpoint \S*{newest.name}: .*checksum mismatch", out), out
    assert f"resumed from {previous.relative_to(tmp_path)}" in out, out
    got = run_fingerprint(tmp_path / "results" / "tiny" / "runs" / run_id)
    assert got == {k.split("/", 1)[1]: v for k, v in reference.fingerprint.items()
                   if k.startswith(f"{run_id}/")}


ENCODE = """
import sys
from lmablate.data.tokens import encode_corpus
encode_corpus(sys.argv[1], sys.argv[2], sys.argv[3], val_fraction=0.1)
"""


def test_killed_token_store_write_leaves_no_stale_temporary_file(tmp_path: Path,
                                                                 reference: Reference) -> None:
    manifest = next(reference.path.glob("resources/corpora/*/manifest.json"))
    tokenizer = next(reference.path.glob("resources/tokenizers/*/tokenizer.json"))
    out = tmp_path / "tokens.h5"
    cmd = [sys.executable, "-c", ENCODE, str(manifest), str(tokenizer), str(out)]
    killed = 0
    for _ in range(5):  # until a kill lands while the store is being written
        proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        while proc.poll() is None and not list(tmp_path.glob(".tokens.h5.*.tmp")):
            time.sleep(0.0005)
        proc.kill()
        proc.wait()
        if not out.exists():
            killed += 1
            break
        out.unlink()
    if not (killed and list(tmp_path.glob(".tokens.h5.*.tmp"))):
        pytest.fail("no kill landed while the store was written")  # not the expected failure
    subprocess.run(cmd, env=env(), check=True, stdout=subprocess.DEVNULL, timeout=300)
    assert out.is_file()
    stale = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert not stale, stale


@dataclass
class TruncatedStore:
    status: int
    terminal: str
    damage: list[str]  # finished runs deleted or changed by the failed rerun
    recovered_status: int
    recovered_terminal: str
    recovered_damage: list[str]


@pytest.fixture(scope="module")
def truncated_token_store(tmp_path_factory: pytest.TempPathFactory,
                          reference: Reference) -> TruncatedStore:
    """The token store is cut in half; then the user adds a variant (which must train on it)."""
    root = reference.copy(tmp_path_factory.mktemp("truncated-store") / "study",
                          with_variants(eps={"model.norm_eps": 1.0e-6, "seeds": [0]}))
    store = next((root / "resources" / "tokens").glob("*.h5"))
    store.write_bytes(store.read_bytes()[: store.stat().st_size // 2])
    status, out = snakemake(root, "-c2")
    damage = damaged_runs(root, reference)
    store.unlink()  # what the message says to do
    again, again_out = snakemake(root, "-c2")
    return TruncatedStore(status, out, damage, again, again_out,
                          damaged_runs(root, reference))


def test_truncated_token_store_is_reported_in_one_line_and_rebuilt_after_delete(
        truncated_token_store: TruncatedStore) -> None:
    got = truncated_token_store
    assert got.status != 0
    lines = [ln for ln in got.terminal.splitlines() if ln.startswith("lmablate: error:")
             and "resources/tokens/" in ln]
    assert lines and all(re.search(r"\.h5: not a readable lmablate token store; the file is "
                                   r"corrupt or truncated .*delete it and rerun", ln)
                         for ln in lines), got.terminal[-4000:]
    assert got.recovered_status == 0, got.recovered_terminal[-4000:]
    assert not got.recovered_damage, got.recovered_damage


def test_truncated_token_store_does_not_touch_finished_runs(
        truncated_token_store: TruncatedStore) -> None:
    assert not truncated_token_store.damage, truncated_token_store.damage


def test_truncated_tokenizer_is_reported_and_rebuilt_bitwise(tmp_path: Path,
                                                             reference: Reference) -> None:
    root = reference.copy(tmp_path / "study")
    (tok,) = root.glob("resources/tokenizers/*/tokenizer.json")
    tok.write_text(tok.read_text()[: tok.stat().st_size // 2])
    before = results_snapshot(root)
    status, out = snakemake(root, "-c1")
    assert status != 0
    log = next(root.glob("logs/tokenize_corpus/*.log")).read_text()
    lines = [ln for ln in log.splitlines() if ln.startswith("lmablate: error:")]
    assert len(lines) == 1 and re.search(r"tokenizer\.json: not a valid tokenizer\.json", lines[0])
    assert results_snapshot(root) == before
    # delete it, as one does with a broken generated file: rebuilt bitwise, results untouched
    tok.unlink()
    store = str(next(reference.path.glob("resources/tokens/*.h5")).relative_to(reference.path))
    status, out = snakemake(root, "-c1", store)
    assert status == 0, out[-3000:]
    got = fingerprint(root)
    assert {k: v for k, v in got.items() if k.startswith("resources/")} == {
        k: v for k, v in reference.fingerprint.items() if k.startswith("resources/")}
    assert results_snapshot(root) == before


def test_altered_tokenizer_is_detected_by_its_checksum(tmp_path: Path,
                                                       reference: Reference) -> None:
    root = reference.copy(tmp_path / "study")
    (tok,) = root.glob("resources/tokenizers/*/tokenizer.json")
    doc = json.loads(tok.read_text())
    merges = doc["model"]["merges"]
    merges[0], merges[-1] = merges[-1], merges[0]
    tok.write_text(json.dumps(doc, indent=2))
    status, out = snakemake(root, "-c1", "--until", "tokenize_corpus")
    log = "".join(p.read_text() for p in root.glob("logs/tokenize_corpus/*.log"))
    assert status != 0 and re.search(r"tokenizer\.json: .*(sha256|checksum)", log), out[-3000:]


def test_truncated_metrics_log_of_a_finished_run_is_detected(tmp_path: Path,
                                                             reference: Reference) -> None:
    root = reference.copy(tmp_path / "study")
    metrics = root / "results" / "tiny" / "runs" / reference.run_ids[0] / "metrics.jsonl"
    metrics.write_text(metrics.read_text()[: metrics.stat().st_size // 2])
    before = results_snapshot(root)
    status, out = snakemake(root, "-c1", "--forcerun", "harvest_metrics", "--until",
                            "harvest_metrics")
    # the parse compares the size with final.json's record: one line, before any job
    assert status != 0
    lines = [ln for ln in out.splitlines() if ln.startswith("lmablate:")]
    assert len(lines) == 1 and re.search(r"^lmablate: \S*metrics\.jsonl: \d+ bytes, but the run "
                                         r"finished with \d+", lines[0]), out[-3000:]
    assert TRACEBACK not in out and results_snapshot(root) == before


def test_flipped_bit_in_the_token_store_is_detected(tmp_path: Path, reference: Reference) -> None:
    import h5py

    from lmablate.data.tokens import TokenStore
    from lmablate.errors import DataError

    store = tmp_path / "tokens.h5"
    shutil.copy(reference.tokens, store)
    with h5py.File(store, "r") as f:
        where = f["train"].id.get_chunk_info(0).byte_offset + 100
    data = bytearray(store.read_bytes())
    data[where] ^= 0x01
    store.write_bytes(bytes(data))
    try:
        TokenStore(store).split("train")
    except DataError as err:
        assert re.search(r"tokens\.h5: .*corrupt", str(err)), err
    else:
        raise AssertionError("the flipped bit was read back without an error")


def test_results_are_as_readable_as_the_umask_allows(reference: Reference) -> None:
    umask = os.umask(0)
    os.umask(umask)
    modes = {str(p.relative_to(reference.path)): p.stat().st_mode & 0o777
             for p in (reference.path / "results").rglob("*") if p.is_file()}
    assert set(modes.values()) == {0o666 & ~umask}, modes
