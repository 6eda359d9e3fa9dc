"""Keep finished runs whose IDs were made with the older 8-digit hash (``lmablate migrate-ids``).

Run IDs end in 16 hex digits of a SHA-256 (:data:`lmablate.study.sweep.RUN_HASH_HEX`); they used
to end in its first 8, so a run's old ID is its new ID cut short
(:func:`lmablate.study.sweep.legacy_run_id`). A finished run under its old ID would be retrained
under the new one. :func:`migrate_ids` renames it instead, after checking that the old
directory's config.yaml resolves to the very config the new ID stands for
(:func:`lmablate.study.sweep.identity`): its results directory, checkpoints, logs and benchmarks,
and the run ID recorded in config.yaml, final.json and a two-phase study's selection and
early-stopping cohorts (one, or one per value of ``ranking.per``). Snakemake's metadata of the
old paths is not carried over, so Snakemake judges the renamed outputs by their modification
times alone (they are older than nothing they depend on).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmablate import paths
from lmablate.io import atomic_write_bytes, atomic_write_json, atomic_write_text, sha256_file
from lmablate.study.sweep import identity, legacy_run_id

__all__ = ["Rename", "legacy_runs", "migrate_ids"]


@dataclass
class Rename:
    """One finished run found under its old ID."""

    old: str
    new: str
    ok: bool  # its config.yaml resolves to the new ID's config
    why: str = ""  # why it is not renamed


def legacy_runs(runs_dir: str | Path, run_ids: Iterable[str]) -> dict[str, str]:
    """``{old_id: new_id}`` of the study's runs that sit under their old ID in ``runs_dir`` while
    the new ID's directory does not exist (one directory listing)."""
    try:
        present = set(os.listdir(runs_dir))
    except OSError:
        return {}
    out = {}
    for rid in run_ids:
        old = legacy_run_id(rid)
        if old != rid and old in present and rid not in present:
            out[old] = rid
    return out


def _identity_of(config_path: Path) -> dict[str, Any] | None:
    import yaml

    try:
        cfg = yaml.safe_load(config_path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(cfg, dict) or not all(isinstance(cfg.get(s), dict)
                                            for s in ("model", "train")):
        return None
    return identity(cfg, str(cfg.get("data_id", "")))


def plan_renames(root: Path, study: str, runs: Mapping[str, Any]) -> list[Rename]:
    """The renames :func:`migrate_ids` would make (``runs``: run ID -> :class:`~lmablate.Run`)."""
    runs_dir = root / paths.fill(paths.RUNS_DIR, study=study)
    out = []
    for old, new in sorted(legacy_runs(runs_dir, runs).items()):
        run = runs[new]
        got = _identity_of(runs_dir / old / "config.yaml")
        if got is None:
            out.append(Rename(old, new, False, "no readable config.yaml"))
        elif got != identity(run.sections, run.data_id):
            out.append(Rename(old, new, False, "its config.yaml resolves to another config"))
        else:
            out.append(Rename(old, new, True))
    return out


def _moves(root: Path, study: str, old: str, new: str) -> list[tuple[Path, Path]]:
    """Every path named after the old ID: results, checkpoints, LR range tests, logs and
    benchmarks (``<rule>/<old>.log``, ``<rule>/<old>.tsv``, ``<rule>/<old>/``)."""
    pairs = [(root / paths.fill(pattern, study=study, run_id=old),
              root / paths.fill(pattern, study=study, run_id=new))
             for pattern in (paths.RUN_DIR, paths.CHECKPOINT_DIR, paths.LR_FIND_DIR)]
    for top in ("logs", "benchmarks"):
        base = root / top / study
        for rule_dir in sorted(base.iterdir()) if base.is_dir() else []:
            for name in (old, f"{old}.log", f"{old}.tsv"):
                if (rule_dir / name).exists():
                    pairs.append((rule_dir / name, rule_dir / (new + name[len(old):])))
    return [(a, b) for a, b in pairs if a.exists() and not b.exists()]


def _rewrite_ids(run_dir: Path, old: str, new: str) -> None:
    """The run ID recorded in config.yaml and final.json (and final.json's config.yaml hash)."""
    import yaml

    cfg_path = run_dir / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    if cfg.get("run_id") == old:
        cfg["run_id"] = new
        atomic_write_text(cfg_path, yaml.safe_dump(cfg, sort_keys=False))
    final_path = run_dir / "final.json"
    if final_path.is_file():
        final = json.loads(final_path.read_text())
        if final.get("run_id") == old:
            final["run_id"] = new
        files = final.get("files")
        if isinstance(files, dict) and isinstance(files.get("config.yaml"), dict):
            files["config.yaml"] = {"size": cfg_path.stat().st_size,
                                    "sha256": sha256_file(cfg_path)}
        mtime = final_path.stat().st_mtime  # stays what it was: no newer than the other outputs
        atomic_write_json(final_path, final)
        os.utime(final_path, (mtime, mtime))


def _selection_files(root: Path, study: str) -> list[Path]:
    """A two-phase study's files that name runs by ID: phase 1's selected.json and its
    early-stopping cohorts, ``phase1-cohort.jsonl`` or with ``ranking.per`` one
    ``phase1-cohort-<value>.jsonl`` per value."""
    cohort = root / paths.fill(paths.COHORT, study=study, cohort="phase1-cohort")
    cohorts = sorted(cohort.parent.glob("phase1-cohort*.jsonl")) if cohort.parent.is_dir() else []
    return [root / paths.fill(paths.PHASE1_DIR, study=study) / "selected.json", *cohorts]


def _rewrite_selection(root: Path, study: str, mapping: Mapping[str, str]) -> None:
    """The run IDs a two-phase study's selection and cohorts record (:func:`_selection_files`),
    each file's modification time kept."""
    for path in _selection_files(root, study):
        if path.is_file():
            text = path.read_text()
            new = text
            for old, rid in mapping.items():
                new = new.replace(json.dumps(old), json.dumps(rid))
            if new != text:
                mtime = path.stat().st_mtime
                atomic_write_bytes(path, new.encode())
                os.utime(path, (mtime, mtime))


def migrate_ids(root: str | Path, study: str, runs: Mapping[str, Any], *, apply: bool = False
                ) -> list[Rename]:
    """Find (and with ``apply``, rename) the study's finished runs under their old IDs in the
    working directory ``root``; the renames, each marked whether its config matched."""
    root = Path(root)
    plan = plan_renames(root, study, runs)
    if apply:
        done = {}
        for r in plan:
            if not r.ok:
                continue
            cfg_path = root / paths.fill(paths.RUN_DIR, study=study, run_id=r.old) / "config.yaml"
            mtime = cfg_path.stat().st_mtime
            for src, dst in _moves(root, study, r.old, r.new):
                os.replace(src, dst)
            run_dir = root / paths.fill(paths.RUN_DIR, study=study, run_id=r.new)
            _rewrite_ids(run_dir, r.old, r.new)
            os.utime(run_dir / "config.yaml", (mtime, mtime))
            done[r.old] = r.new
        _rewrite_selection(root, study, done)
    return plan
