"""Finished runs stay trustworthy, failures say what broke, and nothing good is lost.

One tiny study (two runs) on a corpus with bytes that are not UTF-8 is run to completion; copies
of it then meet, with real snakemake:

- a deleted model.safetensors of a finished run: Snakemake re-plans that run's training;
- a truncated metrics.jsonl: the parse stops with one line naming the file and the fix;
- a byte changed in metrics.jsonl (same size): harvest fails with one line, the last good tables
  stay in results/<study>/last_good/ and no figure of the old tables poses as current;
- a file where the checkpoint folder belongs, and a read-only checkpoint folder: one
  ``lmablate: error:`` line naming the path in the job's log and on the terminal;
- finished runs under the older 8-digit run IDs: a note at parse, ``lmablate migrate-ids``
  renames them (dry run first) and Snakemake keeps them.

``run_step`` itself is checked on a full disk (/dev/full: for the outputs, and for the log).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import TINY_STUDY, fill, planned, snakemake, write_yaml

TRACEBACK = "Traceback (most recent call last)"
# bytes that are not UTF-8, put into the corpus: a Latin-1 e-acute, a lone continuation byte and
# a three-byte sequence cut short (3 sequences, 1 + 1 + 2 = 4 bytes)
BAD = (b"caf\xe9", b"\x80", b"\xe2\x82!")


def lines_of(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("lmablate: error:")]


def tables_of(root: Path, sub: str = "") -> dict[str, str]:
    base = root / "results" / "tiny" / sub
    return {name: hashlib.sha256((base / name).read_bytes()).hexdigest()
            for name in ("runs.csv", "runs.parquet", "curves.parquet", "summary.json",
                         "analysis.txt", "RESULTS.md")}


@dataclass
class Finished:
    path: Path
    run_ids: list[str]
    first_bad_offset: int

    def copy(self, dest: Path) -> Path:
        shutil.copytree(self.path, dest, symlinks=True)
        return dest

    def run(self, root: Path, rid: str) -> Path:
        return root / "results" / "tiny" / "runs" / rid


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Finished:
    from lmablate.study.corpus_spec import PACKAGE_DATA

    root = tmp_path_factory.mktemp("finished")
    text = (PACKAGE_DATA / "tinystories_valid_1k.txt").read_bytes()
    docs = text.split(b"\n\n")[:400]
    for i, bad in enumerate(BAD):  # into three documents
        docs[10 + 50 * i] = docs[10 + 50 * i] + b" " + bad
    corpus = b"\n\n".join(docs)
    (root / "corpus.txt").write_bytes(corpus)
    study = copy.deepcopy(TINY_STUDY)
    # relative to the study file: a copy of the folder is the same study
    study["corpora"] = {"tiny-stories": {"source": "file", "path": "corpus.txt",
                                         "separator": "\n\n"}}
    study["sweep"]["seeds"] = [0]
    write_yaml(root / "study.yaml", study)
    snakemake(root, "-c2")
    rules, _ = planned(root)
    assert not rules, rules  # the checks add no job to a finished study
    run_ids = sorted(p.name for p in (root / "results" / "tiny" / "runs").iterdir())
    assert len(run_ids) == 2
    return Finished(root, run_ids, corpus.index(BAD[0]) + 3)


def run_snakemake(root: Path, *args: str) -> tuple[int, str, str]:
    proc = snakemake(root, *args, check=False)
    return proc.returncode, proc.stdout, proc.stderr


# --------------------------------------------------------------------------------------------------
# non-UTF-8 corpus text is counted and reported


@pytest.mark.workflow
def test_non_utf8_bytes_are_reported_in_the_job_log_and_the_run_tables(finished: Finished):
    import pandas as pd

    log = "".join(p.read_text() for p in finished.path.glob("logs/tokenize_corpus/*.log"))
    assert re.search(rf"4 bytes were not UTF-8 and became U\+FFFD \(3 characters; first at byte "
                     rf"offset {finished.first_bad_offset} in \S+corpus\.txt\)", log), log
    runs = pd.read_csv(finished.path / "results" / "tiny" / "runs.csv")
    assert list(runs.data_replaced_chars) == [3, 3]
    analysis = (finished.path / "results" / "tiny" / "analysis.txt").read_text()
    assert "had bytes that were not UTF-8: up to 3 characters became U+FFFD" in analysis


@pytest.mark.parametrize("fmt", ["txt", "jsonl"])
def test_non_utf8_bytes_are_counted_with_the_first_offset(tmp_path: Path, fmt: str):
    from lmablate.data.corpora import iter_documents, replaced_message

    if fmt == "txt":
        data = b"A clean story.\n\nA caf\xe9 story with a real \xef\xbf\xbd.\n\nTwo \x80\x80."
    else:
        data = b'{"text": "A clean story."}\n{"text": "A caf\xe9 story."}\n{"text": "\x80\x80"}\n'
    (tmp_path / f"c.{fmt}").write_bytes(data)
    stats: dict = {}
    manifest = {"spec": {"source": "file"}, "files": [{"path": f"c.{fmt}"}], "_dir": str(tmp_path)}
    docs = list(iter_documents(manifest, stats))
    assert sum(d.count("\ufffd") for d in docs) == 3 + (fmt == "txt")  # a real U+FFFD stays
    first, path = data.index(b"\xe9"), tmp_path / f"c.{fmt}"
    assert replaced_message(stats) == ("3 bytes were not UTF-8 and became U+FFFD (3 characters; "
                                       f"first at byte offset {first} in {path})")


# --------------------------------------------------------------------------------------------------
# integrity of finished runs


@pytest.mark.workflow
def test_final_json_records_size_and_sha256_of_every_run_file(finished: Finished):
    for rid in finished.run_ids:
        d = finished.run(finished.path, rid)
        files = json.loads((d / "final.json").read_text())["files"]
        assert sorted(files) == sorted(["config.yaml", "metrics.jsonl", "trainer_state.json",
                                        "model.safetensors"])
        for name, entry in files.items():
            data = (d / name).read_bytes()
            assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@pytest.mark.workflow
def test_a_deleted_weights_file_makes_snakemake_retrain_that_run(finished: Finished,
                                                                 tmp_path: Path):
    root = finished.copy(tmp_path / "study")
    rid = finished.run_ids[0]
    (finished.run(root, rid) / "model.safetensors").unlink()
    rules, run_ids = planned(root)
    assert run_ids == {rid}, (rules, run_ids)
    assert rules["train_model"] == 1 and rules["harvest_metrics"] == 1


@pytest.mark.workflow
@pytest.mark.parametrize("lost", ["final.json", "run folder"])
def test_a_lost_final_json_or_run_folder_makes_snakemake_retrain_that_run(
        finished: Finished, tmp_path: Path, lost: str):
    root = finished.copy(tmp_path / "study")
    rid = finished.run_ids[1]
    d = finished.run(root, rid)
    if lost == "final.json":
        (d / "final.json").unlink()
    else:
        shutil.rmtree(d)
    rules, run_ids = planned(root)
    assert run_ids == {rid}, (rules, run_ids)
    assert rules["train_model"] == 1 and rules["harvest_metrics"] == 1


@pytest.mark.workflow
def test_an_intact_study_declares_no_run_file_to_snakemake(finished: Finished):
    """Only runs that lost or changed a file are declared file by file (scan_runs): a finished
    study's DAG stays as small as its tables need, however many runs it has."""
    from lmablate.engine.integrity import scan_runs

    runs = [finished.run(finished.path, rid) for rid in finished.run_ids]
    tables = finished.path / "results" / "tiny" / "runs.csv"
    assert scan_runs(runs, tables) == ([], [])
    assert scan_runs(runs, finished.path / "never-harvested.csv") == ([], [])


@pytest.mark.workflow
def test_a_truncated_metrics_log_stops_the_parse_with_one_line(finished: Finished,
                                                               tmp_path: Path):
    root = finished.copy(tmp_path / "study")
    rid = finished.run_ids[1]
    d = finished.run(root, rid)
    size = (d / "metrics.jsonl").stat().st_size
    (d / "metrics.jsonl").write_bytes((d / "metrics.jsonl").read_bytes()[: size // 2])
    before = tables_of(root)
    status, out, err = run_snakemake(root, "-c1")
    assert status != 0
    lines = [ln for ln in err.splitlines() if ln.startswith("lmablate:")]
    rel = f"results/tiny/runs/{rid}"
    assert lines == [f"lmablate: {rel}/metrics.jsonl: {size // 2} bytes, but the run finished "
                     f"with {size} (changed since the run finished); restore it, or delete "
                     f"{rel}/final.json and rerun snakemake to retrain this run"], err[-3000:]
    assert TRACEBACK not in out + err
    assert tables_of(root) == before
    (d / "final.json").unlink()  # what the line says
    _, run_ids = planned(root)
    assert run_ids == {rid}


@pytest.mark.workflow
def test_a_changed_metrics_log_fails_harvest_and_keeps_the_last_good_tables(
        finished: Finished, tmp_path: Path):
    root = finished.copy(tmp_path / "study")
    res = root / "results" / "tiny"
    good = tables_of(root)
    assert tables_of(root, "last_good") == good
    figures = sorted(p.name for p in (res / "plots").glob("*.png"))
    assert figures
    rid = finished.run_ids[0]
    metrics = finished.run(root, rid) / "metrics.jsonl"
    data = bytearray(metrics.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size: only the checksum can tell
    metrics.write_bytes(bytes(data))
    status, out, err = run_snakemake(root, "-c1")  # a plain rerun notices (metrics is newer)
    assert status != 0
    log = (root / "logs" / "tiny" / "harvest_metrics.log").read_text()
    want = rf"^lmablate: error: results/tiny/runs/{rid}/metrics\.jsonl: changed since the run " \
           r"finished \(sha256 mismatch with final\.json\)"
    assert len(lines_of(log)) == 1 and re.search(want, lines_of(log)[0]), log[-3000:]
    assert lines_of(err) == lines_of(log), err[-3000:]
    assert TRACEBACK in log and TRACEBACK not in err
    assert not (res / "runs.csv").exists()  # Snakemake removed the failed job's outputs
    assert tables_of(root, "last_good") == good
    assert not list((res / "plots").glob("*.png"))  # no figure of old tables poses as current
    assert sorted(p.name for p in (res / "last_good" / "plots").glob("*.png")) == figures


# --------------------------------------------------------------------------------------------------
# every job failure is one line in its log and on the terminal


def with_variant(root: Path) -> str:
    """Add a variant to the study in root; its run ID."""
    from lmablate import read_study

    study = yaml.safe_load((root / "study.yaml").read_text())
    study["sweep"]["variants"]["eps"] = {"model.norm_eps": 1.0e-6}
    write_yaml(root / "study.yaml", study)
    return next(r.run_id for r in read_study(root / "study.yaml").runs if r.variant == "eps")


@pytest.mark.workflow
def test_a_file_where_the_checkpoint_folder_belongs_is_one_line(finished: Finished,
                                                                tmp_path: Path):
    root = finished.copy(tmp_path / "study")
    rid = with_variant(root)
    shutil.rmtree(root / "checkpoints" / "tiny")
    (root / "checkpoints" / "tiny").write_text("not a folder\n")
    status, out, err = run_snakemake(root, "-c1")
    assert status != 0
    log = (root / "logs" / "tiny" / "train_model" / f"{rid}.log").read_text()
    want = rf"^lmablate: error: checkpoints/tiny(/{re.escape(rid)})?: (Not a directory|File exists)"
    assert len(lines_of(log)) == 1 and re.search(want, lines_of(log)[0]), log[-3000:]
    assert lines_of(err) == lines_of(log), err[-3000:]
    assert TRACEBACK not in err


@pytest.fixture
def read_only(tmp_path: Path):
    """Mount a read-only tmpfs on a folder (a read-only file system stops root too)."""
    mounted: list[Path] = []

    def mount(path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()})")
        mounted.append(path)

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.workflow
def test_a_read_only_checkpoint_folder_is_one_line(finished: Finished, tmp_path: Path,
                                                   read_only):
    """The run's own checkpoint folder read-only: the training job fails with one line. (A
    read-only checkpoints/tiny or results/tiny stops the parse before any job: test_faults.)"""
    root = finished.copy(tmp_path / "study")
    rid = with_variant(root)
    read_only(root / "checkpoints" / "tiny" / rid)
    status, out, err = run_snakemake(root, "-c1")
    assert status != 0
    log = (root / "logs" / "tiny" / "train_model" / f"{rid}.log").read_text()
    want = rf"^lmablate: error: checkpoints/tiny/{re.escape(rid)}(/[^:/]+)?: Read-only file system$"
    assert len(lines_of(log)) == 1 and re.search(want, lines_of(log)[0]), log[-3000:]
    assert lines_of(err) == lines_of(log), err[-3000:]
    assert TRACEBACK not in err


@pytest.mark.workflow
def test_a_full_disk_for_the_log_and_the_checkpoints_is_one_line_on_the_terminal(
        finished: Finished, tmp_path: Path):
    """The training job's log and checkpoints on one full file system: the log stays empty, the
    terminal gets the one line."""
    root = finished.copy(tmp_path / "study")
    rid = with_variant(root)
    disk = root / "disk"
    disk.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()})")
    try:
        for name, link in (("logs", root / "logs" / "tiny" / "train_model"),
                           ("checkpoints", root / "checkpoints" / "tiny")):
            (disk / name).mkdir()
            shutil.rmtree(link)
            link.symlink_to(disk / name)
        fill(disk)
        status, out, err = run_snakemake(root, "-c1")
        log = (disk / "logs" / f"{rid}.log").read_text()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
    assert status != 0
    assert len(lines_of(err)) == 1 and "No space left on device" in lines_of(err)[0], err[-3000:]
    assert rid in lines_of(err)[0]
    assert TRACEBACK not in err and "Exception ignored" not in err
    assert log == ""


STEP = """
import sys
if sys.argv[1] != "-":
    sys.stderr = open(sys.argv[1], "w")
from lmablate.workflow.steps import run_step

def step():
    import logging
    logging.getLogger("lmablate").info("working")
    kind = sys.argv[2]
    if kind == "full":
        with open("/dev/full", "w") as fh:  # a full disk: the write is refused at flush
            fh.write("x" * 100)
    elif kind == "bug":
        {}["missing"]

run_step(step)
"""


@pytest.mark.parametrize(("log", "kind", "want", "logged"), [
    pytest.param("job.log", "full", r"/dev/full: No space left on device$", True, id="disk-full"),
    pytest.param("/dev/full", "full", r"/dev/full: No space left on device$", False,
                 id="disk-full-log-too"),
    pytest.param("job.log", "bug", r"KeyError: 'missing' \(unexpected: a bug in lmablate or a "
                 r"library it uses; the traceback is in the job's log\)$", True, id="bug"),
])
def test_run_step_ends_every_failure_in_one_line(tmp_path: Path, log: str, kind: str,
                                                 want: str, logged: bool):
    proc = subprocess.run([sys.executable, "-c", STEP, log, kind], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1:] == lines_of(proc.stderr), proc.stderr
    assert len(lines_of(proc.stderr)) == 1 and re.search(want, proc.stderr), proc.stderr
    assert TRACEBACK not in proc.stderr and "Exception ignored" not in proc.stderr
    if logged:
        text = (tmp_path / log).read_text()
        assert lines_of(text) == lines_of(proc.stderr) and TRACEBACK in text, text


# --------------------------------------------------------------------------------------------------
# run IDs made with the older 8-digit hash


def to_legacy(root: Path, run_ids: list[str]) -> dict[str, str]:
    """Make root look like a study finished by an lmablate whose run IDs had 8-digit hashes:
    every path and recorded ID renamed, Snakemake's metadata of the new paths gone."""
    from lmablate.study.sweep import legacy_run_id

    old_of = {rid: legacy_run_id(rid) for rid in run_ids}
    for rid, old in old_of.items():
        d = root / "results" / "tiny" / "runs"
        os.rename(d / rid, d / old)
        os.rename(root / "checkpoints" / "tiny" / rid, root / "checkpoints" / "tiny" / old)
        os.rename(root / "logs" / "tiny" / "train_model" / f"{rid}.log",
                  root / "logs" / "tiny" / "train_model" / f"{old}.log")
        for name in ("config.yaml", "final.json"):
            path = d / old / name
            mtime = path.stat().st_mtime
            data = json.loads(path.read_text()) if name == "final.json" else None
            if data is not None:
                data.pop("files")  # older final.json had no manifest
                path.write_text(json.dumps(data).replace(rid, old))
            else:
                path.write_text(path.read_text().replace(rid, old))
            os.utime(path, (mtime, mtime))
    shutil.rmtree(root / ".snakemake" / "metadata")
    return old_of


def lmablate_cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmablate", *args], cwd=root,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


@pytest.mark.workflow
def test_runs_under_legacy_ids_are_migrated_and_kept(finished: Finished, tmp_path: Path):
    root = finished.copy(tmp_path / "study")
    old_of = to_legacy(root, finished.run_ids)
    proc = snakemake(root, "-n")
    assert f"lmablate: note: 2 finished runs of study tiny have IDs with the older 8-digit hash " \
           f"and would be retrained; keep them: lmablate migrate-ids {root / 'study.yaml'} " \
           "--apply" in proc.stderr, proc.stderr[-3000:]
    _, run_ids = planned(root)
    assert run_ids == set(finished.run_ids)  # without migration: both retrained

    runs_dir = root / "results" / "tiny" / "runs"
    dry = lmablate_cli(root, "migrate-ids", "study.yaml")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == [
        *sorted(f"results/tiny/runs/{old} -> {rid}" for rid, old in old_of.items()),
        "2 runs to rename (dry run; --apply renames them)"]
    assert sorted(p.name for p in runs_dir.iterdir()) == sorted(old_of.values())

    done = lmablate_cli(root, "migrate-ids", "study.yaml", "--apply")
    assert done.returncode == 0 and done.stdout.splitlines()[-1] == "2 runs renamed", done
    assert sorted(p.name for p in runs_dir.iterdir()) == finished.run_ids
    for rid in finished.run_ids:
        assert (root / "checkpoints" / "tiny" / rid).is_dir()
        assert (root / "logs" / "tiny" / "train_model" / f"{rid}.log").is_file()
        assert json.loads((runs_dir / rid / "final.json").read_text())["run_id"] == rid
        assert f"run_id: {rid}\n" in (runs_dir / rid / "config.yaml").read_text()
    proc = snakemake(root, "-n")
    assert "lmablate: note:" not in proc.stderr
    rules, run_ids = planned(root)
    assert not run_ids and "train_model" not in rules, rules


@pytest.mark.workflow
def test_migration_rewrites_the_selection_and_every_cohort(finished: Finished, tmp_path: Path):
    """A two-phase study names runs in phase 1's selected.json and its early-stopping cohorts:
    phase1-cohort.jsonl, or with ``ranking.per`` one phase1-cohort-<value>.jsonl per value.
    Migration rewrites the IDs in each and keeps its modification time."""
    root = finished.copy(tmp_path / "study")
    old_of = to_legacy(root, finished.run_ids)
    a, b = finished.run_ids
    ckpt = root / "checkpoints" / "tiny"
    cohorts = {ckpt / "phase1-cohort.jsonl": [a, b], ckpt / "phase1-cohort-0.25.jsonl": [a],
               ckpt / "phase1-cohort-swiglu.jsonl": [b, a]}
    for path, rids in cohorts.items():
        path.write_text("".join(json.dumps({"run_id": old_of[r], "tokens": 1024, "value": 3.5})
                                + "\n" for r in rids))
    selected = root / "results" / "tiny" / "phase1" / "selected.json"
    selected.parent.mkdir(parents=True)
    selected.write_text(json.dumps({"metric": "val_loss", "selected": [old_of[b]]}))
    for path in [*cohorts, selected]:
        os.utime(path, (1_700_000_000, 1_700_000_000))
    done = lmablate_cli(root, "migrate-ids", "study.yaml", "--apply")
    assert done.returncode == 0 and done.stdout.splitlines()[-1] == "2 runs renamed", done
    for path, rids in cohorts.items():
        assert [json.loads(x)["run_id"] for x in path.read_text().splitlines()] == rids, path
    assert json.loads(selected.read_text())["selected"] == [b]
    assert {p.stat().st_mtime for p in [*cohorts, selected]} == {1_700_000_000}


@pytest.mark.workflow
def test_a_legacy_run_whose_config_differs_is_not_renamed(finished: Finished, tmp_path: Path):
    root = finished.copy(tmp_path / "study")
    old_of = to_legacy(root, finished.run_ids[:1])
    (old,) = old_of.values()
    cfg = root / "results" / "tiny" / "runs" / old / "config.yaml"
    cfg.write_text(cfg.read_text().replace("lr: 0.003", "lr: 0.004"))
    proc = lmablate_cli(root, "migrate-ids", "study.yaml", "--apply")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        f"results/tiny/runs/{old}: not renamed (its config.yaml resolves to another config)",
        "0 runs renamed, 1 not renamed"]
    assert (root / "results" / "tiny" / "runs" / old).is_dir()
