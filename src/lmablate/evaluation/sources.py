"""Task rows from local jsonl, the Hugging Face hub or a corpus, prepared once per task.

:func:`prepare_task` writes ``<out_dir>/eval.jsonl`` (+ ``train.jsonl``) and ``task.json`` (where
the rows came from: file checksums, the hub commit) so every run reads the same rows, offline.

Hub tasks download parquet files with ``huggingface_hub``: the revision is resolved to a commit
first (``/api/datasets/<repo>/revision/<rev>``), file patterns are matched against the commit's
file list (``/api/datasets/<repo>/tree/<commit>``), then each file is fetched
(``/datasets/<repo>/resolve/<commit>/<file>``). ``HF_ENDPOINT`` (read at call time, so a mirror
or a test server can be set per process), ``HF_TOKEN`` and ``HF_HOME`` work as for the client.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lmablate.errors import DataError
from lmablate.evaluation.specs import TaskSpec, data_identity, resolve_path
from lmablate.io import atomic_write_json, atomic_write_text, sha256_file

__all__ = ["prepare_task", "load_prepared", "continuation_rows", "read_jsonl_rows",
           "hub_task_files"]

log = logging.getLogger("lmablate.evaluation")
SPLITS = ("eval", "train")


def read_jsonl_rows(path: str | Path, what: str) -> list[dict[str, Any]]:
    """Rows of a jsonl file; a bad line is a one-line DataError naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} file not found")
    rows = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{n}: not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    if not rows:
        raise DataError(f"{path}: {what} file has no rows")
    return rows


def continuation_rows(docs: Iterable[str], *, context_words: int = 32,
                      continuation_words: int = 8, seed: int = 0) -> list[dict[str, Any]]:
    """True continuation vs the same words shuffled, one row per non-overlapping window.

    Each window of ``context_words + continuation_words`` words becomes ``{"context", "choices",
    "label"}``; the answers have the same words (so the same bytes), only their order differs,
    and the true one is first or second at random. Windows whose words cannot be reordered into
    something different (all equal) are skipped.
    """
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    size = context_words + continuation_words
    for doc_index, doc in enumerate(docs):
        words = doc.split()
        for start in range(0, len(words) - size + 1, size):
            context = words[start:start + context_words]
            true = words[start + context_words:start + size]
            if len(set(true)) < 2:
                continue
            shuffled = true[:]
            while shuffled == true:
                rng.shuffle(shuffled)
            label = rng.randrange(2)
            answers = [" ".join(true), " ".join(shuffled)]
            rows.append({"context": " ".join(context),
                         "choices": answers if label == 0 else answers[::-1], "label": label,
                         "doc": doc_index})
    return rows


# --------------------------------------------------------------------------------------------------
# the hub


def _endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def _hub_error(spec: TaskSpec, endpoint: str, err: Exception, filename: str | None) -> DataError:
    from lmablate.data.fetch import hub_error

    return hub_error(f"task {spec.name!r}: hub dataset {spec.repo!r} at {endpoint}", err,
                     spec.revision, filename)


def hub_task_files(spec: TaskSpec, out_dir: str | Path) -> tuple[dict[str, list[Path]], dict]:
    """Download the files matching ``spec.eval`` / ``spec.train`` at one commit.

    Returns ({split: local paths}, origin {endpoint, repo, revision, commit, files}).
    """
    from huggingface_hub import HfApi, hf_hub_download

    endpoint = _endpoint()
    api = HfApi(endpoint=endpoint)
    try:
        commit = api.dataset_info(spec.repo, revision=spec.revision).sha or spec.revision
        available = api.list_repo_files(spec.repo, revision=commit, repo_type="dataset")
    except Exception as err:
        raise _hub_error(spec, endpoint, err, None) from None
    files: dict[str, list[Path]] = {}
    names: dict[str, list[str]] = {}
    for split in SPLITS:
        pattern = getattr(spec, split)
        if pattern is None:
            continue
        hits = sorted(f for f in available if fnmatch.fnmatchcase(f, pattern))
        if not hits:
            sample = ", ".join(sorted(available)[:8]) + (", ..." if len(available) > 8 else "")
            raise DataError(f"task {spec.name!r}: no file of hub dataset {spec.repo!r} matches "
                            f"{split} pattern {pattern!r} (files: {sample or 'none'})")
        names[split] = hits
        files[split] = []
        for name in hits:
            log.info("task %s: %s@%s %s", spec.name, spec.repo, commit[:12], name)
            try:
                path = hf_hub_download(spec.repo, name, repo_type="dataset", revision=commit,
                                       local_dir=Path(out_dir) / "hub", endpoint=endpoint)
            except Exception as err:
                raise _hub_error(spec, endpoint, err, name) from None
            files[split].append(Path(path))
    return files, {"endpoint": endpoint, "repo": spec.repo, "revision": spec.revision,
                   "commit": commit, "files": names}


def _parquet_rows(paths: list[Path]) -> list[dict[str, Any]]:
    import pandas as pd

    rows: list[dict[str, Any]] = []
    for p in paths:
        try:
            df = pd.read_parquet(p)
        except Exception as err:
            raise DataError(f"{p}: not a readable parquet file ({type(err).__name__})") from None
        rows += df.to_dict("records")
    return rows


# --------------------------------------------------------------------------------------------------
# preparation


def prepare_task(spec: TaskSpec, out_dir: str | Path, *, base_dir: str | Path = ".",
                 manifest: str | Path | None = None, val_fraction: float | None = None,
                 corpus: str | None = None) -> dict[str, Any]:
    """Fetch or build the task's rows into ``out_dir``; returns task.json's content.

    ``base_dir``: folder jsonl paths are relative to (the study file's). ``manifest`` and
    ``val_fraction``: the corpus and split a continuation task reads its documents from.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict[str, Any]]] = {}
    origin: dict[str, Any]
    if spec.source == "jsonl":
        origin = {"files": {}}
        for split in SPLITS:
            name = getattr(spec, split)
            if name is None:
                continue
            path = resolve_path(name, Path(base_dir))
            rows[split] = read_jsonl_rows(path, f"task {spec.name!r} {split}")
            origin["files"][split] = {"path": str(path), "sha256": sha256_file(path)}
    elif spec.source == "hub":
        files, origin = hub_task_files(spec, out)
        rows = {split: _parquet_rows(paths) for split, paths in files.items()}
    else:
        from lmablate.data.corpora import load_manifest, split_documents

        if manifest is None or val_fraction is None:
            raise DataError(f"task {spec.name!r}: a continuation task needs the corpus manifest "
                            "and its val_fraction")
        man = load_manifest(manifest)
        docs = (doc for _, doc in split_documents(man, val_fraction, split="val"))
        rows["eval"] = continuation_rows(docs, context_words=spec.context_words,
                                         continuation_words=spec.continuation_words)
        if not rows["eval"]:
            raise DataError(f"task {spec.name!r}: the validation documents of {manifest} have no "
                            f"window of {spec.context_words + spec.continuation_words} words")
        origin = {"manifest": str(manifest), "val_fraction": val_fraction}
    for split, items in rows.items():
        text = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in items)
        atomic_write_text(out / f"{split}.jsonl", text)
    meta = {"name": spec.name, "identity": data_identity(spec, corpus=corpus,
                                                          val_fraction=val_fraction),
            "origin": origin, "rows": {split: len(items) for split, items in rows.items()}}
    atomic_write_json(out / "task.json", meta)
    log.info("task %s: %s", spec.name, meta["rows"])
    return meta


def load_prepared(task_dir: str | Path) -> dict[str, list[dict[str, Any]]]:
    """{split: rows} of a prepared task folder (``eval`` always, ``train`` when it has one)."""
    d = Path(task_dir)
    if not (d / "task.json").is_file():
        raise DataError(f"{d / 'task.json'}: missing; prepare the task first (prepare_task)")
    out = {"eval": read_jsonl_rows(d / "eval.jsonl", "eval")}
    if (d / "train.jsonl").is_file():
        out["train"] = read_jsonl_rows(d / "train.jsonl", "train")
    return out
