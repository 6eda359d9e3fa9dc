"""Corpora: how a corpus's text is fetched, checked, and read back as documents.

What a corpus is (its spec: ``source``, paths, formats, limits, presets) and how a study's
``corpora:`` block is checked is :mod:`lmablate.study.corpus_spec`.

Validation documents come from ``val`` when a corpus has one, otherwise from a deterministic
split by document hash (:func:`is_val`). Test documents come only from ``test``. Limits apply to
the training side only.

:func:`prepare_corpus` copies or downloads the files into a folder (the workflow's is
``resources/corpora/<name>-<hash of the spec>/``, :func:`manifest_path`) and writes
``manifest.json`` (files, sizes, sha256, split) last, atomically, so a manifest is proof the corpus
is complete. :func:`iter_documents` streams documents from a manifest without loading whole files.
``hdf5`` corpora hold token ids, not text: they skip this module's text path and are converted by
:func:`lmablate.data.tokens.import_hdf5`.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import json
import os
import re
import shutil
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from lmablate import paths
from lmablate.dicts import run_hash
from lmablate.errors import DataError
from lmablate.io import atomic_write_text, sha256_file
from lmablate.study.corpus_spec import identity

__all__ = ["prepare_corpus", "iter_documents", "split_documents", "load_manifest", "is_val",
           "manifest_path"]

def manifest_path(spec: Mapping[str, Any]) -> str:
    """Where the workflow prepares a text corpus: ``resources/corpora/<name>-<hash>/manifest.json``
    with the hash of the spec's identity, so a changed spec is prepared into a folder of its own
    and its job never deletes, or reuses, the corpus another spec of that name prepared."""
    return paths.fill(paths.CORPUS_MANIFEST, corpus=spec["name"],
                      corpus_hash=run_hash(identity(spec)))


def _glob(spec: Mapping[str, Any], key: str) -> list[Path]:
    import glob

    pattern = spec[key]
    files = sorted(Path(p) for p in glob.glob(pattern)) if any(c in pattern for c in "*?[") else [
        Path(pattern)]
    if not files:
        raise DataError(f"corpus {spec['name']!r}: no file matches {pattern}")
    for f in files:
        if not f.is_file():
            raise DataError(f"corpus {spec['name']!r}: file not found: {f}")
    return files


def prepare_corpus(spec: Mapping[str, Any], out_dir: str | Path, *, net: Any = None) -> Path:
    """Copy (file) or fetch (url, hf) the corpus into ``out_dir``; write ``manifest.json`` last.

    ``net`` (a :class:`lmablate.data.fetch.Net`) sets timeouts and retries of downloads; by default
    they come from the environment (see :mod:`lmablate.data.fetch`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    source = spec["source"]
    origin: dict[str, Any] = {}
    if source == "hdf5":
        raise DataError(f"corpus {spec['name']!r} holds token ids (source: hdf5); it is imported "
                        "with lmablate.data.tokens.import_hdf5, not prepared as text")
    if source == "file":
        files: list[tuple[Path, str]] = []
        for split, key in (("train", "_abs"), ("val", "_abs_val"), ("test", "_abs_test")):
            if key not in spec:
                continue
            for src in _glob(spec, key):
                if src.stat().st_size == 0:
                    raise DataError(f"corpus {spec['name']!r}: file is empty: {src}")
                dst = out_dir / f"{split}-{len(files):04d}-{src.name}"
                tmp = dst.with_name(dst.name + ".part")
                shutil.copyfile(src, tmp)
                os.replace(tmp, dst)
                files.append((dst, split))
    else:
        from lmablate.data import fetch

        files, origin = fetch.fetch(spec, out_dir, net=net)
    for f, _ in files:
        if f.stat().st_size == 0:
            raise DataError(f"corpus {spec['name']!r}: file is empty: {f}")
    manifest = {
        "corpus": spec["name"],
        "spec": identity(spec),
        **({"origin": origin} if origin else {}),
        "files": [{"path": f.relative_to(out_dir).as_posix(), "bytes": f.stat().st_size,
                   "sha256": sha256_file(f), "split": split} for f, split in files],
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


def _decode_error(path: Path, offset: int) -> DataError:
    return DataError(f"{path}: not valid UTF-8 at byte {offset} (set encoding_errors: replace to "
                     "replace and count bad bytes)")


# Non-UTF-8 bytes under `encoding_errors: replace`: each invalid sequence becomes one U+FFFD, and
# the codec error handler below counts them into the stats of the file being decoded (set around
# each decode call by _counting): replaced_chars (U+FFFD made), replaced_bytes, replaced_first.
_DECODING = threading.local()


def _count_and_replace(err: UnicodeError) -> tuple[str, int]:
    if not isinstance(err, UnicodeDecodeError):
        raise err
    where = getattr(_DECODING, "where", None)
    if where is not None:
        stats, path, base = where
        stats["replaced_chars"] = stats.get("replaced_chars", 0) + 1
        stats["replaced_bytes"] = stats.get("replaced_bytes", 0) + err.end - err.start
        stats.setdefault("replaced_first", f"byte offset {base + err.start} in {path}")
    return "\ufffd", err.end


codecs.register_error("lmablate.count", _count_and_replace)


@contextlib.contextmanager
def _counting(stats: dict, path: Path, base: int) -> Iterator[None]:
    """Decode errors inside the block count into ``stats`` (the object decoded starts at file
    offset ``base``)."""
    _DECODING.where = (stats, path, base)
    try:
        yield
    finally:
        _DECODING.where = None


def replaced_message(stats: Mapping[str, Any]) -> str | None:
    """The log line for a corpus with non-UTF-8 bytes (None when it had none)."""
    if not stats.get("replaced_chars"):
        return None
    return (f"{stats.get('replaced_bytes', 0)} bytes were not UTF-8 and became U+FFFD "
            f"({stats['replaced_chars']} characters; first at {stats.get('replaced_first')})")


def _iter_txt(path: Path, separator: str, errors: str, stats: dict) -> Iterator[str]:
    """Stream documents split on ``separator`` from a text file, 1 MiB at a time."""
    decoder = codecs.getincrementaldecoder("utf-8")(
        "strict" if errors == "error" else "lmablate.count")
    buf, offset = "", 0
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(1 << 20)
            pending = len(decoder.getstate()[0])  # bytes of a sequence cut by the last chunk
            try:
                with _counting(stats, path, offset - pending):
                    text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as err:
                raise _decode_error(path, offset - pending + err.start) from None
            offset += len(chunk)
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


def _iter_jsonl(path: Path, field: str, errors: str, stats: dict) -> Iterator[str]:
    with open(path, "rb") as fh:
        offset = 0
        for lineno, raw in enumerate(fh, 1):
            try:
                with _counting(stats, path, offset):
                    line = raw.decode("utf-8", "strict" if errors == "error" else "lmablate.count")
            except UnicodeDecodeError as err:
                raise _decode_error(path, offset + err.start) from None
            offset += len(raw)
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}: invalid JSON ({err.msg})") from None
            text = obj.get(field) if isinstance(obj, dict) else None
            if not isinstance(text, str):
                raise DataError(f"{path}:{lineno}: no string field {field!r}")
            yield text


def _iter_parquet(path: Path, field: str) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: not a readable parquet file ({err})") from None
    if field not in pf.schema_arrow.names:
        columns = ", ".join(pf.schema_arrow.names)
        raise DataError(f"{path}: no column {field!r} (columns: {columns})")
    for batch in pf.iter_batches(columns=[field], batch_size=4096):
        for text in batch.column(0).to_pylist():
            if isinstance(text, str):
                yield text


def _join_rows(rows: Iterator[str], doc_start: re.Pattern) -> Iterator[str]:
    """Rows up to the next row matching ``doc_start`` form one document (rows joined as is)."""
    parts: list[str] = []
    for row in rows:
        if doc_start.search(row) and parts:
            doc = "".join(parts).strip()
            if doc:
                yield doc
            parts = []
        parts.append(row)
    doc = "".join(parts).strip()
    if doc:
        yield doc


def _format_of(path: Path, spec: Mapping[str, Any]) -> str:
    if spec.get("format"):
        return spec["format"]
    suffixes = path.name.lower().split(".")[1:]
    for fmt in ("jsonl", "parquet"):
        if fmt in suffixes or (fmt == "jsonl" and "json" in suffixes):
            return fmt
    return "txt"


def _file_documents(path: Path, spec: Mapping[str, Any], stats: dict) -> Iterator[str]:
    fmt = _format_of(path, spec)
    errors = spec.get("encoding_errors", "replace")
    if fmt == "txt":
        yield from _iter_txt(path, spec.get("separator", "\n\n"), errors, stats)
        return
    field = spec.get("text_field", "text")
    rows = _iter_jsonl(path, field, errors, stats) if fmt == "jsonl" else _iter_parquet(path, field)
    if spec.get("doc_start"):
        yield from _join_rows(rows, re.compile(spec["doc_start"]))
    else:
        yield from (r for r in rows if r.strip())


def iter_documents(manifest: Mapping[str, Any], stats: dict | None = None, *,
                   split: str | None = None) -> Iterator[str]:
    """Documents of a prepared corpus, in file order; ``split`` picks the files of one side of
    an explicit train/val/test split (None: the train and val files; test files only by name).
    max_documents / max_bytes bound the training files; explicit val and test sources are read
    whole. ``stats`` accumulates documents, bytes
    and replaced_chars."""
    spec = manifest["spec"]
    stats = stats if stats is not None else {}
    max_docs, max_bytes = spec.get("max_documents"), spec.get("max_bytes")
    n_docs = n_bytes = 0

    def full() -> bool:
        return ((max_docs is not None and n_docs >= max_docs)
                or (max_bytes is not None and n_bytes >= max_bytes))

    for f in manifest["files"]:
        side = f.get("split", "train")
        if side != (split or side) or (split is None and side == "test") or (
                side == "train" and full()):
            continue
        path = Path(manifest["_dir"]) / f["path"]
        for doc in _file_documents(path, spec, stats):
            size = len(doc.encode())
            if side == "train":
                if full():
                    break
                n_docs += 1
                n_bytes += size
            stats["documents"] = stats.get("documents", 0) + 1
            stats["bytes"] = stats.get("bytes", 0) + size
            yield doc


def has_explicit_val(manifest: Mapping[str, Any]) -> bool:
    return any(f.get("split") == "val" for f in manifest["files"])


def has_test(manifest: Mapping[str, Any]) -> bool:
    """Whether the corpus names a test source (its documents form the token store's ``test``)."""
    return any(f.get("split") == "test" for f in manifest["files"])


def split_documents(manifest: Mapping[str, Any], val_fraction: float, stats: dict | None = None,
                    *, split: str | None = None) -> Iterator[tuple[str, str]]:
    """``(split, document)`` pairs: from the manifest's explicit val files when it has them,
    else by document hash. ``split`` keeps one side only (and skips reading the other side's
    files when the split is explicit), e.g. the train side for tokenizer training."""
    if has_explicit_val(manifest):
        for side in ("train", "val"):
            if split in (None, side):
                for doc in iter_documents(manifest, stats, split=side):
                    yield side, doc
        return
    for doc in iter_documents(manifest, stats):
        side = "val" if is_val(doc, val_fraction) else "train"
        if split in (None, side):
            yield side, doc


def is_val(doc: str, val_fraction: float) -> bool:
    """Deterministic split by document hash: same document, same side, on every machine."""
    h = int.from_bytes(hashlib.blake2b(doc.encode(), digest_size=8).digest(), "big")
    return h / 2**64 < val_fraction
