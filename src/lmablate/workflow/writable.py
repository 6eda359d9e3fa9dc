"""The folders a workflow writes, checked before any job runs.

A read-only ``results/`` (or ``resources/``, ``checkpoints/``, ``logs/``, ``benchmarks/``) would
otherwise stop Snakemake itself part-way, after the jobs that write elsewhere, with its own
multi-line error (``Failed to create output directory ... OSError: [Errno 30]``, or
``ProtectedOutputException`` for read-only files it would remake). :func:`check_writable` names
the folder in one line instead, while the Snakefile parses.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from lmablate import paths
from lmablate.errors import LmablateError

__all__ = ["check_writable", "study_dirs", "unwritable"]

LOGS = "logs"  # Snakemake's job logs and benchmarks (rules/*.smk: log:, benchmark:)
BENCHMARKS = "benchmarks"


def study_dirs(study: str) -> list[str]:
    """The folders a workflow run of ``study`` writes in its working directory."""
    return [paths.fill(paths.STUDY_DIR, study=study), paths.RESOURCES,
            paths.fill(paths.STUDY_CHECKPOINTS, study=study), LOGS, BENCHMARKS]


def _existing(path: Path) -> Path:
    """``path``, or the nearest folder above it that exists (where it would be created)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def unwritable(path: str | Path) -> str | None:
    """Why the folder ``path`` (made if missing) cannot be written, or None if it can: the folder
    itself, or the nearest one above it that exists, must take new files. (A file in its place
    is left to the job that makes the folder, which names it.)"""
    path = Path(path)
    here = _existing(path)
    if not here.is_dir() or os.access(here, os.W_OK | os.X_OK):
        return None
    readonly = bool(os.statvfs(here).f_flag & os.ST_RDONLY)
    why = "a read-only file system" if readonly else "no write permission"
    what = "the workflow writes there" if here == path else f"the workflow makes {path}/ there"
    return f"{here if str(here) != '.' else Path.cwd()}: not writable ({why}); {what}"


def check_writable(dirs: Iterable[str | Path]) -> None:
    """Raise one line for the first of ``dirs`` that cannot be written (see :func:`unwritable`)."""
    for d in dirs:
        why = unwritable(d)
        if why:
            raise LmablateError(f"{why}. Make it writable, or run in another directory")
