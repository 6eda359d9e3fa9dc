"""Corpora: where text comes from, how it is fetched, and how documents are read back.

A corpus is a named spec (``corpora:`` in the study, or a preset below)::

    source: file | url | hf | hdf5
    path / url / repo + files   where the text is (hdf5: train + val + dataset)
    val                         optional explicit validation source, in the same form
    test                        optional test source, in the same form: tokenized as the split
                                ``test``, each run's final model is evaluated on it once
    format: txt | jsonl | parquet   (default: from the file extension)
    separator: "\\n\\n"          txt: string between documents
    text_field: text            jsonl/parquet: the column holding the text
    doc_start: regex            jsonl/parquet: a row matching it starts a new document and the
                                rows up to the next match are joined (WikiText: one row per line)
    sha256 / val_sha256 / test_sha256   optional checksums (url sources)
    max_documents / max_bytes   optional limits on the training text read
    max_tokens                  optional limit on the training tokens written
    preset: name                start from a preset and override some of its keys

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
from urllib.parse import urlparse

from lmablate.dicts import run_hash
from lmablate.errors import ConfigError, DataError, did_you_mean
from lmablate.io import atomic_write_text, sha256_file
from lmablate.study.config import unknown_key

__all__ = ["PRESETS", "PACKAGE_DATA", "resolve_corpora", "prepare_corpus", "iter_documents",
           "split_documents", "load_manifest", "is_val", "manifest_path"]

PACKAGE_DATA = Path(__file__).parent / "corpora_data"
CORPORA_DIR = "resources/corpora"  # prepared corpora of the workflow (rules/data.smk)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
HF_MAIN = "main"  # presets follow the default branch; pin `revision:` to a commit for exact reruns

PRESETS: dict[str, dict[str, Any]] = {
    # shipped with lmablate (offline): ~1,000 TinyStories validation stories, CDLA-Sharing-1.0
    "tinystories-1k": {"source": "file", "path": "package:tinystories_valid_1k.txt",
                       "separator": "\n\n"},
    # Eldan & Li 2023; stories separated by <|endoftext|> lines (~1.9 GB train, ~19 MB valid)
    "tinystories": {"source": "hf", "repo": "roneneldan/TinyStories", "revision": HF_MAIN,
                    "files": ["TinyStories-train.txt"], "val": ["TinyStories-valid.txt"],
                    "separator": "<|endoftext|>"},
    # Merity et al. 2016, raw (untokenized) text; parquet rows are lines, an article starts at a
    # ` = Title = ` row (sub-headings are ` = = ... = = `); its test split gives test perplexity
    "wikitext-2-raw": {"source": "hf", "repo": "Salesforce/wikitext", "revision": HF_MAIN,
                       "files": ["wikitext-2-raw-v1/train-*.parquet"],
                       "val": ["wikitext-2-raw-v1/validation-*.parquet"],
                       "test": ["wikitext-2-raw-v1/test-*.parquet"],
                       "text_field": "text", "doc_start": r"^ = [^=].* = \n?$"},
    "wikitext-103-raw": {"source": "hf", "repo": "Salesforce/wikitext", "revision": HF_MAIN,
                         "files": ["wikitext-103-raw-v1/train-*.parquet"],
                         "val": ["wikitext-103-raw-v1/validation-*.parquet"],
                         "test": ["wikitext-103-raw-v1/test-*.parquet"],
                         "text_field": "text", "doc_start": r"^ = [^=].* = \n?$"},
    # karpathy/char-rnn, 1.1 MB of Shakespeare; one document per speech (blank-line separated)
    "tinyshakespeare": {
        "source": "url",
        "url": "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/"
               "input.txt",
        "sha256": "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        "separator": "\n\n"},
    # first shard (~2 GB parquet) of the 10BT sample of FineWeb-Edu; ODC-By 1.0
    "fineweb-edu-sample": {"source": "hf", "repo": "HuggingFaceFW/fineweb-edu",
                           "revision": HF_MAIN, "files": ["sample/10BT/000_00000.parquet"],
                           "text_field": "text"},
    # SmolLM corpus, cosmopedia-v2 subset, first of its parquet shards
    "smollm-corpus": {"source": "hf", "repo": "HuggingFaceTB/smollm-corpus", "revision": HF_MAIN,
                      "files": ["cosmopedia-v2/train-00000-of-*.parquet"], "text_field": "text"},
}

SOURCES = ("file", "url", "hf", "hdf5")
SPEC_KEYS = {
    "source": "file | url | hf | hdf5",
    "preset": "start from this preset and override some of its keys",
    "path": "file: a path or glob (relative to the study file)",
    "url": "url: an http(s) URL",
    "repo": "hf: dataset repository id (owner/name)",
    "revision": "hf: branch, tag or commit (default: main)",
    "files": "hf: file patterns inside the repo",
    "val": "explicit validation source, same form as the training one (file: path or glob; url: "
           "URL; hf: file patterns; hdf5: file); default: split by document hash",
    "test": "explicit test source, same form as `val`; tokenized as split `test`, on which each "
            "run's final model is evaluated once (test_loss, test_ppl); default: none",
    "format": "txt | jsonl | parquet (default from the extension)",
    "separator": "txt: text between documents (default: a blank line)",
    "text_field": "jsonl/parquet: field holding the text (default: text)",
    "doc_start": "jsonl/parquet: regex; a row matching it starts a new document and the rows "
                 "until the next match are joined (default: one document per row)",
    "sha256": "url: expected SHA-256 of the downloaded file",
    "val_sha256": "url: expected SHA-256 of the downloaded validation file",
    "test_sha256": "url: expected SHA-256 of the downloaded test file",
    "max_documents": "read at most this many training documents",
    "max_bytes": "read at most this many bytes of training text",
    "max_tokens": "write at most this many training tokens",
    "encoding_errors": "non-UTF-8 bytes: replace (count and report) or error",
    "train": "hdf5: file with the train token ids",
    "dataset": "hdf5: dataset name inside the files (1-D stream, 2-D rows or ragged rows)",
    "mask": "hdf5: dataset of 0/1 flags (e.g. attention_mask) marking real tokens; padding is "
            "dropped",
    "vocab_size": "hdf5: vocabulary size (default: a kind: file tokenizer's, else max id + 1)",
    "eot_id": "hdf5: id appended after each row/document (default: none)",
}
TEXT_KEYS = {"format", "separator", "text_field", "doc_start", "max_documents", "max_bytes",
             "encoding_errors"}
SOURCE_KEYS = {
    "file": {"path", "val", "test", *TEXT_KEYS},
    "url": {"url", "val", "test", "sha256", "val_sha256", "test_sha256", *TEXT_KEYS},
    "hf": {"repo", "revision", "files", "val", "test", *TEXT_KEYS},
    "hdf5": {"train", "val", "test", "dataset", "mask", "vocab_size", "eot_id"},
}
COMMON_KEYS = {"source", "preset", "max_tokens"}
FORMATS = ("txt", "jsonl", "parquet")
ENCODING_ERRORS = ("replace", "error")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def resolve_corpora(raw: Mapping[str, Any], base_dir: Path) -> dict[str, dict[str, Any]]:
    """Presets + the study's ``corpora:``, each checked. Paths stay as written (identity);
    keys starting with ``_`` (not part of any identity) hold absolute locations."""
    out: dict[str, dict[str, Any]] = {}
    for name, spec in {**PRESETS, **dict(raw)}.items():
        key = f"corpora.{name}"
        if not NAME_RE.fullmatch(str(name)):  # names become directories under resources/
            raise ConfigError("corpus names may hold letters, digits, '.', '_' and '-' (and start "
                              "with a letter or digit)", key=key)
        if isinstance(spec, str):  # alias: `mycorpus: tinystories`
            spec = {"preset": spec}
        if not isinstance(spec, Mapping):
            raise ConfigError(f"expected a mapping with a `source`, got {spec!r}", key=key)
        spec = _apply_preset(dict(spec), key)
        _check_spec(spec, key)
        _locate(spec, base_dir)
        spec["name"] = name
        out[name] = spec
    return out


def _apply_preset(spec: dict[str, Any], key: str) -> dict[str, Any]:
    if "preset" not in spec:
        return spec
    preset = spec.pop("preset")
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}{did_you_mean(str(preset), PRESETS)}; "
                          f"expected one of: {', '.join(PRESETS)}", key=f"{key}.preset")
    return {**PRESETS[preset], **spec}


def _check_spec(spec: dict[str, Any], key: str) -> None:
    for k in spec:
        if k not in SPEC_KEYS:
            raise unknown_key(str(k), SPEC_KEYS, f"{key}.{k}")
    source = spec.get("source")
    if source not in SOURCES:
        raise ConfigError(f"expected source one of {', '.join(SOURCES)}, got {source!r}"
                          f"{did_you_mean(str(source), SOURCES)}", key=f"{key}.source")
    allowed = SOURCE_KEYS[source] | COMMON_KEYS
    for k in spec:
        if k not in allowed:
            raise ConfigError(f"does not apply to source {source!r} (its keys: "
                              f"{', '.join(sorted(allowed))})", key=f"{key}.{k}")

    def text(k: str, required: bool = False) -> None:
        v = spec.get(k)
        if (v is None and required) or (v is not None and (not isinstance(v, str) or not v)):
            raise ConfigError(f"expected a non-empty string, got {v!r}", key=f"{key}.{k}")

    def patterns(k: str, required: bool = False) -> None:
        v = spec.get(k)
        if v is None and not required:
            return
        items = [v] if isinstance(v, str) else v
        if not isinstance(items, list) or not items or not all(
                isinstance(p, str) and p for p in items):
            raise ConfigError(f"expected a file pattern or a list of them, got {v!r}",
                              key=f"{key}.{k}")

    def count(k: str, minimum: int = 1) -> None:
        v = spec.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < minimum):
            raise ConfigError(f"expected an integer >= {minimum}, got {v!r}", key=f"{key}.{k}")

    if source == "file":
        text("path", required=True)
        text("val")
        text("test")
    elif source == "url":
        for k in ("url", "val", "test"):
            text(k, required=k == "url")
            if k in spec:
                scheme = urlparse(spec[k]).scheme
                if scheme not in ("http", "https") or not urlparse(spec[k]).netloc:
                    raise ConfigError(f"expected an http(s) URL, got {spec[k]!r}", key=f"{key}.{k}")
        for k in ("sha256", "val_sha256", "test_sha256"):
            if k in spec and not (isinstance(spec[k], str) and SHA256_RE.match(spec[k].lower())):
                raise ConfigError(f"expected 64 hex digits, got {spec[k]!r}", key=f"{key}.{k}")
        for side in ("val", "test"):
            if f"{side}_sha256" in spec and side not in spec:
                raise ConfigError(f"{side}_sha256 needs a `{side}` URL",
                                  key=f"{key}.{side}_sha256")
    elif source == "hf":
        text("repo", required=True)
        text("revision")
        patterns("files", required=True)
        patterns("val")
        patterns("test")
    else:
        for k in ("train", "val", "dataset"):
            text(k, required=True)
        text("mask")
        text("test")
        count("vocab_size")
        count("eot_id", minimum=0)
    fmt = spec.get("format")
    if fmt is not None and fmt not in FORMATS:
        raise ConfigError(f"expected one of {', '.join(FORMATS)}, got {fmt!r}", key=f"{key}.format")
    for k in ("separator", "text_field"):
        text(k)
    if spec.get("encoding_errors", "replace") not in ENCODING_ERRORS:
        raise ConfigError(f"expected one of {', '.join(ENCODING_ERRORS)}, got "
                          f"{spec['encoding_errors']!r}", key=f"{key}.encoding_errors")
    if "doc_start" in spec:
        text("doc_start")
        try:
            re.compile(spec["doc_start"])
        except re.error as err:
            raise ConfigError(f"not a valid regular expression ({err})",
                              key=f"{key}.doc_start") from None
    for k in ("max_documents", "max_bytes", "max_tokens"):
        count(k)


ABS = {"path": "_abs", "train": "_abs_train", "val": "_abs_val", "test": "_abs_test"}


def local_path(path: str, base_dir: Path) -> str:
    """Absolute location of a path written in a study: relative to ``base_dir`` (the study
    file's folder), ``~`` expanded, ``package:name`` inside lmablate's shipped data."""
    if path.startswith("package:"):
        return str(PACKAGE_DATA / path.removeprefix("package:"))
    return str((base_dir / os.path.expanduser(path)).resolve())


def _locate(spec: dict[str, Any], base_dir: Path) -> None:
    """Absolute locations of local files, under ``_``-keys that stay out of the identity."""
    keys = {"file": ("path", "val", "test"), "hdf5": ("train", "val", "test")}.get(
        spec["source"], ())
    for k in keys:
        if k in spec:
            spec[ABS[k]] = local_path(spec[k], base_dir)


def portable(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec with absolute locations made relative to the working directory (or to the
    package data), so a workflow's params stay equal when the checkout moves."""
    out = dict(spec)
    for k in ABS.values():
        if k in out:
            p = Path(out[k])
            out[k] = ("package:" + p.relative_to(PACKAGE_DATA).as_posix()
                      if p.is_relative_to(PACKAGE_DATA) else os.path.relpath(p))
    return out


def located(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`portable`: absolute locations again, for the process that reads them."""
    out = dict(spec)
    for k in ABS.values():
        if k in out:
            out[k] = local_path(out[k], Path.cwd())
    return out


def identity(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a spec that defines the corpus (no machine-specific absolute paths)."""
    return {k: v for k, v in spec.items() if not k.startswith("_")}


def manifest_path(spec: Mapping[str, Any]) -> str:
    """Where the workflow prepares a text corpus: ``resources/corpora/<name>-<hash>/manifest.json``
    with the hash of the spec's identity, so a changed spec is prepared into a folder of its own
    and its job never deletes, or reuses, the corpus another spec of that name prepared."""
    return f"{CORPORA_DIR}/{spec['name']}-{run_hash(identity(spec))}/manifest.json"


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
