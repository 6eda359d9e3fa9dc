"""Integrity of finished runs: what final.json records of the files beside it, and the checks.

Training writes final.json last, with a manifest of the run's other outputs (size and SHA-256 of
config.yaml, metrics.jsonl, trainer_state.json, model.safetensors). Two checks read it:

- :func:`scan_runs`, at every Snakefile parse: one ``stat`` per file (sizes and times only, so
  it stays fast for thousands of runs). A file whose size changed stops the workflow with one
  line naming the file and how to retrain the run (:func:`damage_message`). The runs Snakemake
  must look at again (a file missing, or changed since the last harvest) come back too: their
  files become targets of ``rule all`` and inputs of harvest, so Snakemake re-trains a run that
  lost a file and re-harvests one that changed. Every other run stays out of those lists:
  Snakemake's DAG of a large study costs time per declared file.
- :func:`verify_run`, in harvest: sizes again, and the full hash of the small files harvest
  reads anyway (config.yaml; metrics.jsonl is checked against its own ``metrics_sha256``).

Runs finished before final.json held a manifest have none and are not checked.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lmablate.errors import DataError
from lmablate.io import sha256_file

__all__ = ["MANIFEST_FILES", "file_manifest", "size_problem", "damaged_runs", "scan_runs",
           "damage_message", "verify_run"]

# the run's outputs final.json vouches for (final.json itself is the Snakemake marker)
MANIFEST_FILES = ("config.yaml", "metrics.jsonl", "trainer_state.json", "model.safetensors")
# hashed in full by harvest (it reads them anyway); the others are checked by size
HASHED_BY_HARVEST = ("config.yaml", "metrics.jsonl")


def file_manifest(run_dir: str | Path, names: Iterable[str] = MANIFEST_FILES
                  ) -> dict[str, dict[str, Any]]:
    """``{name: {"size": bytes, "sha256": hex}}`` of the run's files, for final.json."""
    d = Path(run_dir)
    return {name: {"size": (d / name).stat().st_size, "sha256": sha256_file(d / name)}
            for name in names}


def size_problem(path: Path, entry: Mapping[str, Any]) -> str | None:
    """Why ``path`` is not the file final.json recorded (by size), or None."""
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return "missing"
    if size != entry.get("size"):
        return f"{size} bytes, but the run finished with {entry.get('size')}"
    return None


def _manifest(final_path: Path) -> Mapping[str, Any] | None:
    try:
        final = json.loads(final_path.read_bytes())
    except (OSError, ValueError):
        return None  # no final.json yet, or a torn one: Snakemake and harvest deal with those
    files = final.get("files") if isinstance(final, dict) else None
    return files if isinstance(files, Mapping) else None


def damaged_runs(run_dirs: Iterable[str | Path], *, missing: bool = False
                 ) -> list[tuple[Path, str, str]]:
    """``(run_dir, file, problem)`` of every finished run whose files differ in size from what
    its final.json recorded; ``missing``: report missing files too (Snakemake re-plans those)."""
    out = []
    for d in map(Path, run_dirs):
        files = _manifest(d / "final.json")
        for name, entry in (files or {}).items():
            problem = size_problem(d / name, entry) if isinstance(entry, Mapping) else None
            if problem and (missing or problem != "missing"):
                out.append((d, name, problem))
    return out


def scan_runs(run_dirs: Iterable[str | Path], tables: str | Path
              ) -> tuple[list[tuple[Path, str, str]], list[Path]]:
    """``(damaged, recheck)`` of the runs in ``run_dirs``, with one ``stat`` per file.

    ``damaged``: ``(run_dir, file, problem)`` of finished runs whose files differ in size from
    what their final.json recorded (as :func:`damaged_runs`). ``recheck``: the runs Snakemake has
    to look at again although the study's harvested ``tables`` (runs.csv) exist and are up to
    date in its eyes (Snakemake does not follow a missing or newer input of a job whose outputs
    are present): a run with a file missing (final.json too, once the study has been harvested,
    or while other files of the run exist), or with a file newer than ``tables``.
    """
    try:
        harvested: float | None = os.stat(tables).st_mtime
    except OSError:
        harvested = None
    damaged: list[tuple[Path, str, str]] = []
    recheck: list[Path] = []
    for d in map(Path, run_dirs):
        files = _manifest(d / "final.json")
        if files is None:
            if (d / "final.json").exists() or harvested is not None or d.is_dir():
                recheck.append(d)
            continue
        again = False
        for name, entry in files.items():
            if not isinstance(entry, Mapping):
                continue
            try:
                st = os.stat(d / name)
            except FileNotFoundError:
                again = True
                continue
            if st.st_size != entry.get("size"):
                damaged.append((d, name, f"{st.st_size} bytes, but the run finished with "
                                         f"{entry.get('size')}"))
            elif harvested is not None and st.st_mtime > harvested:
                again = True
        if again:
            recheck.append(d)
    return damaged, recheck


def damage_message(run_dir: Path, name: str, problem: str) -> str:
    """One line: the damaged file, and how to retrain the run (or restore the file)."""
    return (f"{run_dir / name}: {problem} (changed since the run finished); restore it, or "
            f"delete {run_dir / 'final.json'} and rerun snakemake to retrain this run")


def verify_run(run_dir: str | Path, final: Mapping[str, Any]) -> None:
    """Raise DataError naming the first file of a finished run that is not the one final.json
    recorded: sizes of all, SHA-256 of :data:`HASHED_BY_HARVEST` except metrics.jsonl (whose
    hash the reader checks while parsing it)."""
    d = Path(run_dir)
    files = final.get("files")
    if not isinstance(files, Mapping):
        return
    for name, entry in files.items():
        if not isinstance(entry, Mapping):
            continue
        problem = size_problem(d / name, entry)
        if problem is None and name in HASHED_BY_HARVEST and name != "metrics.jsonl" \
                and sha256_file(d / name) != entry.get("sha256"):
            problem = "sha256 mismatch"
        if problem:
            raise DataError(damage_message(d, name, problem))
