"""Resumable training state on disk.

``checkpoints/<study>/<run_id>/step-00000120.pt`` is a plain dict (model, optimizer, scaler, step,
tokens_seen, RNG states, metric history, config), written atomically (temp file, fsync, rename)
with ``step-00000120.pt.sha256`` beside it. The last ``keep`` checkpoints are kept. Loading walks
from the newest to the oldest and skips (with a warning) any whose checksum fails, so a file
truncated by a kill or a full disk never stops a resume.
"""

from __future__ import annotations

import io
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

from lmablate.errors import CheckpointError
from lmablate.io import atomic_write_bytes, atomic_write_text, fsync_dir

__all__ = ["save_checkpoint", "load_latest", "list_checkpoints"]

log = logging.getLogger("lmablate.engine.checkpoint")
NAME_RE = re.compile(r"^step-(\d{8})\.pt$")


def list_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """Checkpoint files, newest (highest step) first."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    found = [p for p in d.iterdir() if NAME_RE.match(p.name)]
    return sorted(found, key=lambda p: int(NAME_RE.match(p.name).group(1)), reverse=True)


def save_checkpoint(state: dict[str, Any], ckpt_dir: str | Path, step: int, keep: int = 2) -> Path:
    """Write ``state`` as step-{step:08d}.pt (+ .sha256) atomically; prune to ``keep`` newest."""
    import hashlib

    d = Path(ckpt_dir)
    d.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    path = d / f"step-{step:08d}.pt"
    try:
        atomic_write_bytes(path, data)
        atomic_write_text(path.with_name(path.name + ".sha256"),
                          hashlib.sha256(data).hexdigest() + "\n")
    except OSError as err:  # a full disk, a quota: the user's to fix, said in one line
        path.unlink(missing_ok=True)  # without its checksum it would only be skipped
        raise _unwritable(path, err) from err
    for old in list_checkpoints(d)[keep:]:
        for p in (old, old.with_name(old.name + ".sha256")):
            try:
                p.unlink()
            except FileNotFoundError:
                pass
    fsync_dir(d)
    return path


def _unwritable(path: Path, err: OSError) -> CheckpointError:
    previous = next((p for p in list_checkpoints(path.parent) if p != path), None)
    fallback = (f"the previous one, {previous}, is intact and a rerun resumes from it" if previous
                else "there is no earlier one, so a rerun starts the run over")
    return CheckpointError(f"{path}: cannot write the checkpoint ({err.strerror or err}); "
                           f"{fallback}")


def _verified_bytes(path: Path) -> bytes:
    import hashlib

    data = path.read_bytes()
    sums = path.with_name(path.name + ".sha256")
    if not sums.is_file():
        raise CheckpointError(f"{path}: no checksum file (write interrupted)")
    expected = sums.read_text().strip()
    if hashlib.sha256(data).hexdigest() != expected:
        raise CheckpointError(f"{path}: checksum mismatch (truncated or corrupt)")
    return data


def load_latest(ckpt_dir: str | Path, map_location: Any = "cpu") -> dict[str, Any] | None:
    """Newest checkpoint that passes its checksum, or None when there is none.

    Corrupt ones are reported and skipped (falling back to the previous one). Stale temp files of
    interrupted writes are removed.
    """
    d = Path(ckpt_dir)
    if d.is_dir():
        for tmp in d.glob(".step-*.tmp"):
            tmp.unlink(missing_ok=True)
    for path in list_checkpoints(d):
        try:
            data = _verified_bytes(path)
            state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=False)
        except (CheckpointError, OSError, RuntimeError, EOFError) as err:
            log.warning("skipping checkpoint %s: %s", path, err)
            continue
        state["_path"] = str(path)
        return state
    return None


def remove_all(ckpt_dir: str | Path) -> None:
    for p in list_checkpoints(ckpt_dir):
        p.unlink(missing_ok=True)
        p.with_name(p.name + ".sha256").unlink(missing_ok=True)
    try:
        os.rmdir(ckpt_dir)
    except OSError:
        pass
