"""Corpora: where text comes from, how it is fetched, and how documents are read back.

A corpus is a named spec (``corpora:`` in the study, or a preset below)::

    source: file | url | hf | hdf5
    path / url / repo + files   where the text is
    format: txt | jsonl | parquet   (default: from the file extension)
    separator: "\\n\\n"          txt: string between documents
    text_field: text            jsonl/parquet: the column holding the text
    sha256: ...                 optional checksum (url sources)
    max_documents / max_bytes   optional limits

:func:`prepare_corpus` copies or downloads the files into ``resources/corpora/<name>/`` and writes
``manifest.json`` (files, sizes, sha256) last, atomically, so a manifest is proof the corpus is
complete. :func:`iter_documents` streams documents from a manifest without loading whole files.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigError, DataError, did_you_mean
from .io import atomic_write_text, sha256_file

__all__ = ["PRESETS", "PACKAGE_DATA", "resolve_corpora", "prepare_corpus", "iter_documents",
           "load_manifest"]

PACKAGE_DATA = Path(__file__).parent / "corpora_data"

PRESETS: dict[str, dict[str, Any]] = {
    # shipped with lmablate (offline): ~1,000 TinyStories validation stories, CDLA-Sharing-1.0
    "tinystories-1k": {"source": "file", "path": "package:tinystories_valid_1k.txt",
                       "separator": "\n\n"},
}

SOURCES = ("file", "url", "hf", "hdf5")
SPEC_KEYS = {
    "source": "file | url | hf | hdf5",
    "path": "file/hdf5: a path or glob (relative to the study file)",
    "url": "url: an http(s) URL",
    "repo": "hf: dataset repository id (owner/name)",
    "revision": "hf: branch, tag or commit",
    "files": "hf: file patterns inside the repo",
    "format": "txt | jsonl | parquet (default from the extension)",
    "separator": "txt: text between documents (default: a blank line)",
    "text_field": "jsonl/parquet: field holding the text (default: text)",
    "sha256": "expected SHA-256 of the downloaded file",
    "max_documents": "read at most this many documents",
    "max_bytes": "read at most this many bytes of text",
    "encoding_errors": "non-UTF-8 bytes: replace (count and report) or error",
    "train": "hdf5: file with the train token ids",
    "val": "hdf5: file with the validation token ids",
    "dataset": "hdf5: dataset name inside the files",
}
FORMATS = ("txt", "jsonl", "parquet")


def resolve_corpora(raw: Mapping[str, Any], base_dir: Path) -> dict[str, dict[str, Any]]:
    """Presets + the study's ``corpora:``, each checked. Paths stay as written (identity);
    ``_abs`` (not part of any identity) holds the absolute location."""
    out: dict[str, dict[str, Any]] = {}
    for name, spec in {**PRESETS, **dict(raw)}.items():
        key = f"corpora.{name}"
        if isinstance(spec, str) and spec in PRESETS:  # alias: `mycorpus: tinystories`
            spec = PRESETS[spec]
        if not isinstance(spec, Mapping):
            raise ConfigError(f"expected a mapping with a `source`, got {spec!r}", key=key)
        spec = dict(spec)
        for k in spec:
            if k not in SPEC_KEYS:
                raise ConfigError(f"unknown key{did_you_mean(str(k), SPEC_KEYS)}; expected one of: "
                                  f"{', '.join(SPEC_KEYS)}", key=f"{key}.{k}")
        source = spec.get("source")
        if source not in SOURCES:
            raise ConfigError(f"expected source one of {', '.join(SOURCES)}, got {source!r}"
                              f"{did_you_mean(str(source), SOURCES)}", key=f"{key}.source")
        fmt = spec.get("format")
        if fmt is not None and fmt not in FORMATS:
            raise ConfigError(f"expected one of {', '.join(FORMATS)}, got {fmt!r}",
                              key=f"{key}.format")
        if source == "file":
            path = spec.get("path")
            if not isinstance(path, str) or not path:
                raise ConfigError("a file corpus needs `path`", key=f"{key}.path")
            if path.startswith("package:"):
                spec["_abs"] = str(PACKAGE_DATA / path.removeprefix("package:"))
            else:
                spec["_abs"] = str((base_dir / os.path.expanduser(path)).resolve())
        spec["name"] = name
        out[name] = spec
    return out


def identity(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a spec that defines the corpus (no machine-specific absolute paths)."""
    return {k: v for k, v in spec.items() if not k.startswith("_")}


def _files_for(spec: Mapping[str, Any]) -> list[Path]:
    import glob

    pattern = spec["_abs"]
    files = sorted(Path(p) for p in glob.glob(pattern)) if any(c in pattern for c in "*?[") else [
        Path(pattern)]
    if not files or not all(f.is_file() for f in files):
        missing = next((f for f in files if not f.is_file()), pattern)
        raise DataError(f"corpus {spec['name']!r}: file not found: {missing}")
    return files


def prepare_corpus(spec: Mapping[str, Any], out_dir: str | Path) -> Path:
    """Copy (file) or fetch the corpus into ``out_dir``; write ``manifest.json`` last."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    source = spec["source"]
    if source == "file":
        files = []
        for i, src in enumerate(_files_for(spec)):
            if src.stat().st_size == 0:
                raise DataError(f"corpus {spec['name']!r}: file is empty: {src}")
            dst = out_dir / f"{i:04d}-{src.name}"
            tmp = dst.with_name(dst.name + ".part")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
            files.append(dst)
    else:
        from . import fetch  # network sources live in fetch.py

        files = fetch.fetch(spec, out_dir)
    manifest = {
        "corpus": spec["name"],
        "spec": identity(spec),
        "files": [{"path": f.name, "bytes": f.stat().st_size, "sha256": sha256_file(f)}
                  for f in files],
    }
    path = out_dir / "manifest.json"
    atomic_write_text(path, json.dumps(manifest, indent=2) + "\n")
    return path


def load_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: corpus manifest unreadable ({err})") from None
    manifest["_dir"] = str(path.parent)
    return manifest


def verify_manifest(manifest: Mapping[str, Any]) -> None:
    """Re-hash every file of a prepared corpus; raise DataError naming a changed file."""
    for f in manifest["files"]:
        p = Path(manifest["_dir"]) / f["path"]
        if not p.is_file() or sha256_file(p) != f["sha256"]:
            raise DataError(f"{p}: corpus file changed or missing since it was prepared "
                            "(checksum mismatch); delete it and rerun")


def _iter_txt(path: Path, separator: str, errors: str, stats: dict) -> Iterator[str]:
    """Stream documents split on ``separator`` from a text file, 1 MiB at a time."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict" if errors == "error" else "replace")
    buf, offset = "", 0
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(1 << 20)
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as err:
                raise DataError(f"{path}: not valid UTF-8 at byte {offset + err.start} (set "
                                "encoding_errors: replace to replace and count bad bytes)") from None
            offset += len(chunk)
            bad = text.count("\ufffd")
            if bad:
                stats["replaced_chars"] = stats.get("replaced_chars", 0) + bad
            if "\x00" in text:
                raise DataError(f"{path}: contains NUL bytes; this looks like a binary file, "
                                "not text")
            buf += text
            *docs, buf = buf.split(separator)
            for d in docs:
                if d.strip():
                    yield d.strip()
            if not chunk:
                break
    if buf.strip():
        yield buf.strip()


def _iter_jsonl(path: Path, field: str, stats: dict) -> Iterator[str]:
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}: invalid JSON ({err.msg})") from None
            text = obj.get(field) if isinstance(obj, dict) else None
            if not isinstance(text, str):
                raise DataError(f"{path}:{lineno}: no string field {field!r}")
            if text.strip():
                yield text


def _iter_parquet(path: Path, field: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    if field not in pf.schema_arrow.names:
        raise DataError(f"{path}: no column {field!r} (columns: {', '.join(pf.schema_arrow.names)})")
    for batch in pf.iter_batches(columns=[field], batch_size=4096):
        for text in batch.column(0).to_pylist():
            if isinstance(text, str) and text.strip():
                yield text


def _format_of(path: Path, spec: Mapping[str, Any]) -> str:
    if spec.get("format"):
        return spec["format"]
    suffixes = path.name.lower().split(".")[1:]
    for fmt in ("jsonl", "parquet"):
        if fmt in suffixes or (fmt == "jsonl" and "json" in suffixes):
            return fmt
    return "txt"


def iter_documents(manifest: Mapping[str, Any], stats: dict | None = None) -> Iterator[str]:
    """Documents of a prepared corpus, in file order, honouring max_documents / max_bytes."""
    spec = manifest["spec"]
    stats = stats if stats is not None else {}
    sep = spec.get("separator", "\n\n")
    field = spec.get("text_field", "text")
    errors = spec.get("encoding_errors", "replace")
    max_docs, max_bytes = spec.get("max_documents"), spec.get("max_bytes")
    n_docs = n_bytes = 0
    for f in manifest["files"]:
        path = Path(manifest["_dir"]) / f["path"]
        fmt = _format_of(path, spec)
        docs = (_iter_txt(path, sep, errors, stats) if fmt == "txt" else
                _iter_jsonl(path, field, stats) if fmt == "jsonl" else _iter_parquet(path, field))
        for doc in docs:
            if max_docs is not None and n_docs >= max_docs:
                return
            if max_bytes is not None and n_bytes >= max_bytes:
                return
            n_docs += 1
            n_bytes += len(doc.encode())
            stats["documents"], stats["bytes"] = n_docs, n_bytes
            yield doc


def is_val(doc: str, val_fraction: float) -> bool:
    """Deterministic split by document hash: same document, same side, on every machine."""
    h = int.from_bytes(hashlib.blake2b(doc.encode(), digest_size=8).digest(), "big")
    return h / 2**64 < val_fraction
