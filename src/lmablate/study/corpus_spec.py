"""Corpus specs: the ``corpora:`` block of a study, its presets, and where their files are.

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

:func:`resolve_corpora` checks every spec while the study loads, before any job. Paths stay as
written (they are part of the corpus identity, :func:`identity`); their absolute locations go
under ``_``-keys (:func:`portable` / :func:`located` move them between machines). Fetching and
reading the text is :mod:`lmablate.data.corpora`'s.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lmablate.errors import ConfigError, did_you_mean
from lmablate.study.config import unknown_key

__all__ = ["PACKAGE_DATA", "PRESETS", "SPEC_KEYS", "identity", "local_path", "located",
           "portable", "resolve_corpora"]

# the corpora shipped with lmablate (``package:`` paths): data files of lmablate.data
PACKAGE_DATA = Path(__file__).parents[1] / "data" / "corpora_data"
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
