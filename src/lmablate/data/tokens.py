"""The HDF5 token store and the training loader.

File layout (``resources/tokens/<corpus>-<data_id>.h5``)::

    /train          uint16|uint32 (N,)  token ids, documents separated by the EOT id
    /val            uint16|uint32 (M,)
    /train_docs     int64 (D,)          start offset of each document in /train
    /val_docs       int64 (E,)
    /test, /test_docs                   only when the corpus names a ``test`` source
    attrs           format, vocab_size, eot_id, dtype, tokenizer_sha256, corpus, corpus_files
                    (path, bytes, sha256, split of each source file), corpus_spec, split
                    ("hash" or "explicit"), val_fraction, token/document counts, replaced_chars
                    (non-UTF-8 sequences that became U+FFFD), replaced_bytes, replaced_first,
                    versions, created (provenance)

Two writers fill it. :func:`encode_corpus` streams the documents of a prepared text corpus (never
the whole corpus in memory) in batches through ``Tokenizer.encode_batch_fast`` (parallel in Rust)
and appends them to chunked, resizable datasets, in whole chunks; reading and storing overlap the
encoding. :func:`import_hdf5` converts the token ids of a pre-tokenized corpus (``source: hdf5``,
a Trainer script's ``-p train.h5 -e valid.h5``) without any tokenizer training. Both write under a
temporary name and rename when complete.

The loader draws random contiguous windows of ``seq_len + 1`` tokens; window starts for step ``s``
come from ``numpy.random.default_rng([seed, s])``, so the data order is a pure function of
(seed, step) and a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from lmablate.data.corpora import (
    has_explicit_val,
    has_test,
    is_val,
    iter_documents,
    load_manifest,
    replaced_message,
)
from lmablate.data.tokenizer import load_tokenizer
from lmablate.errors import DataError
from lmablate.io import fsync_dir, sha256_file
from lmablate.study.corpus_spec import identity

__all__ = ["encode_corpus", "import_hdf5", "open_store", "TokenStore", "Batches", "val_windows"]

FORMAT = "lmablate-tokens-1"
CHUNK = 1 << 16  # tokens per HDF5 chunk: small enough that reading a random window from a split
#                  too large for memory touches 128 KiB, not megabytes (3x faster loader)
FLUSH = 1 << 20  # tokens buffered before a write (in whole chunks)
ROWS = 4096  # rows per read when importing row-shaped HDF5 datasets


def _dtype_for(vocab: int) -> type:
    return np.uint16 if vocab <= 1 << 16 else np.uint32


class _Appender:
    """One split being written: buffered, written to the dataset in whole chunks."""

    def __init__(self, f: h5py.File, name: str, dtype: Any):
        self.name = name
        self.ds = f.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype,
                                   chunks=(CHUNK,), fletcher32=True)
        self.docs = array("q")  # 8 bytes per document, not a Python int object each
        self.n = 0  # tokens in the dataset
        self.buf: list[np.ndarray] = []
        self.buffered = 0

    @property
    def tokens(self) -> int:
        return self.n + self.buffered

    def add(self, ids: np.ndarray, starts: Iterable[int]) -> None:
        """Append a block of tokens; ``starts`` are the offsets in it where documents begin."""
        base = self.tokens
        self.docs.extend(base + int(s) for s in starts)
        if len(ids):
            self.buf.append(np.asarray(ids, dtype=self.ds.dtype))
            self.buffered += len(ids)
        if self.buffered >= FLUSH:
            self.flush(final=False)

    def flush(self, final: bool = True) -> None:
        """Write the buffered tokens; all of them if ``final``, else whole chunks only."""
        if not self.buf:
            return
        block = np.concatenate(self.buf)
        upto = len(block) if final else len(block) // CHUNK * CHUNK
        self.ds.resize((self.n + upto,))
        self.ds[self.n:self.n + upto] = block[:upto]
        self.n += upto
        rest = block[upto:]
        self.buf, self.buffered = ([rest] if len(rest) else []), len(rest)

    def finish(self, f: h5py.File) -> None:
        self.flush()
        f.create_dataset(f"{self.name}_docs", data=np.frombuffer(self.docs, dtype=np.int64),
                         fletcher32=True)


def _truncate(ids: np.ndarray, starts: Sequence[int], room: int) -> tuple[np.ndarray, list[int]]:
    return ids[:room], [s for s in starts if s < room]


@contextmanager
def _store_file(out_path: str | Path) -> Iterator[h5py.File]:
    """An HDF5 file that appears at ``out_path`` only if the block completes (temp + rename).

    Temporary files of earlier attempts that were killed are removed first (Snakemake's lock
    makes this job the store's only writer); a full disk is one line naming the store."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    for stale in out_path.parent.glob(f".{out_path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    try:
        try:
            with h5py.File(tmp, "w") as f:
                yield f
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        except (OSError, RuntimeError) as err:  # h5py reports a failed write as RuntimeError
            if _disk_full(err):
                raise DataError(f"{out_path}: no space left on the device while writing the token "
                                f"store ({shutil.disk_usage(out_path.parent).free} bytes free in "
                                f"{out_path.parent})") from err
            raise
        os.replace(tmp, out_path)
        fsync_dir(out_path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def _disk_full(err: BaseException) -> bool:
    return (getattr(err, "errno", None) == errno.ENOSPC or "errno = 28" in str(err)
            or "No space left" in str(err))


def _provenance(**attrs: Any) -> dict[str, Any]:
    import tokenizers

    return {"format": FORMAT, **attrs, "tokenizers_version": tokenizers.__version__,
            "h5py_version": h5py.__version__, "numpy_version": np.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _check_splits(corpus: str, splits: Mapping[str, _Appender], explicit: bool) -> None:
    if "test" in splits and splits["test"].n == 0:
        raise DataError(f"corpus {corpus!r}: the test split is empty; its `test` source has no "
                        "documents")
    if splits["train"].n == 0:
        raise DataError(f"corpus {corpus!r} has no text: 0 training tokens")
    if splits["val"].n == 0:
        raise DataError(f"corpus {corpus!r}: the validation split is empty; " + (
            "its `val` source has no documents" if explicit else
            "raise data.val_fraction or use more text"))


# --------------------------------------------------------------------------------------------------
# text corpus -> tokens


def _batched(docs: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for d in docs:
        batch.append(d)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _encoded(docs: Iterable[str], size: int, encode: Callable[[list[str]], list]
             ) -> Iterator[tuple[list[str], list]]:
    """``(batch, encodings)`` pairs. Batch k+1 is encoded in a worker thread (the tokenizer
    releases the GIL) while the caller stores batch k, and the documents after it are read while
    batch k encodes, so the Python-side work overlaps the Rust-side work."""
    with ThreadPoolExecutor(1, thread_name_prefix="lmablate-encode") as pool:
        batches = _batched(docs, size)
        batch = next(batches, None)
        running = pool.submit(encode, batch) if batch else None
        while running is not None:
            following = next(batches, None)
            encodings = running.result()
            running = pool.submit(encode, following) if following else None
            yield batch, encodings
            batch = following


def encode_corpus(manifest_path: str | Path, tokenizer_path: str | Path, out_path: str | Path, *,
                  val_fraction: float, batch_docs: int = 512, progress: bool = False) -> dict:
    """Tokenize a prepared corpus into an HDF5 token store; returns the attributes written.

    Validation documents come from the corpus' explicit ``val`` files when it has them, else by
    document hash with ``val_fraction``; a corpus' ``test`` files become the split ``test``. The
    corpus' ``max_tokens`` caps the training tokens (the last document is cut); with a hash split,
    reading the hashed files stops there too."""
    manifest = load_manifest(manifest_path)
    tok = load_tokenizer(tokenizer_path)
    meta_path = Path(tokenizer_path).with_name("tokenizer_meta.json")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if meta.get("sha256") and sha256_file(tokenizer_path) != meta["sha256"]:
        raise DataError(f"{tokenizer_path}: changed since it was built (sha256 mismatch with "
                        "tokenizer_meta.json); delete it to rebuild it")
    vocab = tok.get_vocab_size()
    eot = meta.get("eot_id")
    dtype = _dtype_for(vocab)
    encode = tok.encode_batch_fast if hasattr(tok, "encode_batch_fast") else tok.encode_batch
    explicit = has_explicit_val(manifest)
    budget = manifest["spec"].get("max_tokens")
    stats: dict[str, Any] = {}
    t0 = time.perf_counter()
    streams: list[tuple[str | None, Iterable[str]]] = (
        [("train", iter_documents(manifest, stats, split="train")),
         ("val", iter_documents(manifest, stats, split="val"))] if explicit
        else [(None, iter_documents(manifest, stats))])
    sides = ["train", "val"]
    if has_test(manifest):
        sides.append("test")
        streams.append(("test", iter_documents(manifest, stats, split="test")))
    bar, full = None, False
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(f["bytes"] for f in manifest["files"]), unit="B", unit_scale=True,
                   desc="tokenize")
    try:
        with _store_file(out_path) as f:
            splits = {side: _Appender(f, side, dtype) for side in sides}
            for fixed, docs in streams:
                for batch, encodings in _encoded(docs, batch_docs, encode):
                    pending: dict[str, tuple[list[int], list[int]]] = {s: ([], [])
                                                                       for s in sides}
                    for doc, enc in zip(batch, encodings):
                        flat, starts = pending[fixed or ("val" if is_val(doc, val_fraction)
                                                         else "train")]
                        starts.append(len(flat))
                        flat.extend(enc.ids)
                        if eot is not None:
                            flat.append(eot)
                    full = False
                    for side, (flat, starts) in pending.items():
                        ids = np.array(flat, dtype=dtype)
                        if side == "train" and budget is not None and len(ids) and \
                                splits["train"].tokens + len(ids) >= budget:
                            ids, starts = _truncate(ids, starts, budget - splits["train"].tokens)
                            full = True
                        splits[side].add(ids, starts)
                    if bar is not None:
                        bar.update(sum(len(d.encode()) for d in batch))
                    if full:  # the next stream, if any, is another split
                        break
            for app in splits.values():
                app.finish(f)
            _check_splits(manifest["corpus"], splits, explicit)
            attrs = _provenance(
                vocab_size=vocab, eot_id=-1 if eot is None else eot, dtype=np.dtype(dtype).name,
                tokenizer_sha256=sha256_file(tokenizer_path), corpus=manifest["corpus"],
                corpus_files=json.dumps(manifest["files"]),
                corpus_spec=json.dumps(manifest["spec"], sort_keys=True),
                split="explicit" if explicit else "hash", val_fraction=val_fraction,
                train_tokens=splits["train"].n, val_tokens=splits["val"].n,
                train_documents=len(splits["train"].docs), val_documents=len(splits["val"].docs),
                replaced_chars=stats.get("replaced_chars", 0),
                replaced_bytes=stats.get("replaced_bytes", 0),
                replaced_first=stats.get("replaced_first", ""), **_test_attrs(splits))
            f.attrs.update(attrs)
    finally:
        if bar is not None:
            bar.close()
    if replaced := replaced_message(stats):  # the schema's promise: count and report
        logging.getLogger("lmablate").warning("%s: %s", manifest["corpus"], replaced)
    return {**attrs, "seconds": time.perf_counter() - t0, "bytes": stats.get("bytes", 0)}


def _test_attrs(splits: Mapping[str, _Appender]) -> dict[str, int]:
    """Size of the test split, for the store's attributes (none without a test source)."""
    if "test" not in splits:
        return {}
    return {"test_tokens": splits["test"].n, "test_documents": len(splits["test"].docs)}


# --------------------------------------------------------------------------------------------------
# pre-tokenized HDF5 -> tokens


def _open_h5(path: Path, what: str) -> h5py.File:
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise DataError(f"{path}: not a readable HDF5 file ({_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _dataset(f: h5py.File, name: str, path: Path) -> h5py.Dataset:
    obj = f.get(name)
    if not isinstance(obj, h5py.Dataset):
        names: list[str] = []
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        listed = ", ".join(names[:10]) or "none"
        raise DataError(f"{path}: no dataset {name!r} (datasets: {listed})")
    return obj


def _hdf5_blocks(path: Path, spec: Mapping[str, Any]) -> Iterator[tuple[np.ndarray, list[int]]]:
    """``(ids, document starts)`` blocks of one pre-tokenized file, in order.

    Layouts: a 1-D integer dataset is one token stream (one document); a 2-D one holds a document
    per row; a 1-D ragged (vlen) one too (a Hugging Face dataset's ``input_ids``). ``mask``
    drops padding, ``eot_id`` is appended after each document."""
    name, eot = spec["dataset"], spec.get("eot_id")
    with _open_h5(path, "hdf5 corpus file") as f:
        ds = _dataset(f, name, path)
        mask = _dataset(f, spec["mask"], path) if spec.get("mask") else None
        if mask is not None and mask.shape != ds.shape:
            raise DataError(f"{path}: mask {spec['mask']!r} has shape {mask.shape}, dataset "
                            f"{name!r} has {ds.shape}")
        vlen = h5py.check_vlen_dtype(ds.dtype)
        base = np.dtype(vlen if vlen is not None else ds.dtype)
        if base.kind not in "iu" or ds.ndim not in (1, 2) or (vlen is not None and ds.ndim != 1):
            raise DataError(f"{path}: dataset {name!r} ({ds.dtype}, shape {ds.shape}) is not "
                            "integer token ids (expected 1-D ids, 2-D rows or ragged rows)")
        tail = np.array([] if eot is None else [eot], dtype=np.int64)
        try:
            if vlen is None and ds.ndim == 1:
                for i in range(0, ds.shape[0], FLUSH):
                    ids = ds[i:i + FLUSH]
                    if mask is not None:
                        ids = ids[mask[i:i + FLUSH] != 0]
                    yield ids, [0] if i == 0 else []
                yield tail, []
            elif vlen is None:
                for i in range(0, ds.shape[0], ROWS):
                    rows = ds[i:i + ROWS]
                    keep = mask[i:i + ROWS] != 0 if mask is not None else np.ones(rows.shape, bool)
                    if eot is not None:
                        rows = np.concatenate([rows, np.full((len(rows), 1), eot, rows.dtype)], 1)
                        keep = np.concatenate([keep, np.ones((len(rows), 1), bool)], 1)
                    lengths = keep.sum(1)
                    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
                    yield rows[keep], offsets[lengths > 0].tolist()
            else:
                for i in range(0, ds.shape[0], ROWS):
                    rows, masks = ds[i:i + ROWS], mask[i:i + ROWS] if mask is not None else None
                    parts, starts, pos = [], [], 0
                    for j, row in enumerate(rows):
                        row = np.asarray(row).ravel()
                        if masks is not None:
                            row = row[np.asarray(masks[j]).ravel() != 0]
                        row = np.concatenate([row, tail]) if eot is not None else row
                        if len(row):
                            starts.append(pos)
                            parts.append(row)
                            pos += len(row)
                    yield (np.concatenate(parts) if parts else tail[:0]), starts
        except OSError as err:
            raise DataError(f"{path}: dataset {name!r} could not be read; the file is corrupt or "
                            f"truncated ({_first_line(err)})") from None


def import_hdf5(spec: Mapping[str, Any], out_path: str | Path, *,
                tokenizer_path: str | Path | None = None) -> dict:
    """Convert a pre-tokenized corpus (``source: hdf5``) into a token store; no tokenizer is
    trained. The ``train`` file gives the train split, ``val`` the validation split, an optional
    ``test`` file the test split.

    The vocabulary size is, in order: the tokenizer's (``tokenizer: {kind: file, path: ...}``,
    passed here as ``tokenizer_path``), the spec's ``vocab_size``, else the largest id + 1. A first
    pass over both files checks every id against it, so a bad id fails before anything is written.
    """
    t0 = time.perf_counter()
    sources = {"train": Path(spec["_abs_train"]), "val": Path(spec["_abs_val"])}
    if spec.get("_abs_test"):
        sources["test"] = Path(spec["_abs_test"])
    name = spec["name"]
    tok_sha = ""
    if tokenizer_path is not None:
        vocab, origin = load_tokenizer(tokenizer_path).get_vocab_size(), "the tokenizer's"
        tok_sha = sha256_file(tokenizer_path)
    elif spec.get("vocab_size"):
        vocab, origin = int(spec["vocab_size"]), "vocab_size"
    else:
        vocab, origin = None, ""
    hi = -1
    for path in sources.values():
        for ids, _ in _hdf5_blocks(path, spec):
            if not len(ids):
                continue
            lo, top = int(ids.min()), int(ids.max())
            if lo < 0:
                raise DataError(f"{path}: dataset {spec['dataset']!r} holds a negative token id "
                                f"({lo}); padding must be dropped with `mask:`")
            if vocab is not None and top >= vocab:
                raise DataError(f"{path}: dataset {spec['dataset']!r} holds token id {top}, "
                                f"outside {origin} vocabulary of {vocab}")
            hi = max(hi, top)
    vocab = vocab if vocab is not None else hi + 1
    eot = spec.get("eot_id")
    dtype = _dtype_for(vocab)
    budget = spec.get("max_tokens")
    with _store_file(out_path) as f:
        splits = {s: _Appender(f, s, dtype) for s in sources}
        for split, path in sources.items():
            app = splits[split]
            for ids, starts in _hdf5_blocks(path, spec):
                if split == "train" and budget is not None and app.tokens + len(ids) >= budget:
                    app.add(*_truncate(ids, starts, budget - app.tokens))
                    break
                app.add(ids, starts)
        for app in splits.values():
            app.finish(f)
        _check_splits(name, splits, explicit=True)
        files = [{"path": str(p), "bytes": p.stat().st_size, "sha256": sha256_file(p),
                  "split": s} for s, p in sources.items()]
        attrs = _provenance(
            vocab_size=vocab, eot_id=-1 if eot is None else eot, dtype=np.dtype(dtype).name,
            tokenizer_sha256=tok_sha, corpus=name, corpus_files=json.dumps(files),
            corpus_spec=json.dumps(identity(spec), sort_keys=True), split="explicit",
            val_fraction=0.0, train_tokens=splits["train"].n, val_tokens=splits["val"].n,
            train_documents=len(splits["train"].docs), val_documents=len(splits["val"].docs),
            replaced_chars=0, **_test_attrs(splits))
        f.attrs.update(attrs)
    return {**attrs, "seconds": time.perf_counter() - t0}


# --------------------------------------------------------------------------------------------------
# reading


class TokenStore:
    """Read side of a token store. Splits are loaded into memory when they fit
    (``max_memory_bytes``), otherwise read from the HDF5 file window by window."""

    def __init__(self, path: str | Path, *, max_memory_bytes: int = 4 << 30):
        self.path = Path(path)
        hint = "delete it and rerun to rebuild it"
        if not self.path.is_file():
            raise DataError(f"{self.path}: token store not found")
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as err:
            raise DataError(f"{self.path}: not a readable lmablate token store; the file is "
                            f"corrupt or truncated ({_first_line(err)}); {hint}") from None
        self.attrs = dict(self.file.attrs)
        missing = [k for k in ("train", "val") if not isinstance(self.file.get(k), h5py.Dataset)]
        if self.attrs.get("format") != FORMAT or "vocab_size" not in self.attrs or missing:
            self.file.close()
            what = f"no {'/'.join(missing)} dataset" if missing else "no lmablate format attributes"
            raise DataError(f"{self.path}: not an lmablate token store ({what}); {hint}")
        self.vocab_size = int(self.attrs["vocab_size"])
        self.eot_id = int(self.attrs.get("eot_id", -1))
        self._cache: dict[str, Any] = {}
        self.max_memory_bytes = max_memory_bytes

    def has_split(self, name: str) -> bool:
        """Whether the store holds split ``name`` (``test`` only where the corpus names one)."""
        return isinstance(self.file.get(name), h5py.Dataset)

    def split(self, name: str) -> Any:
        """The split as a numpy array (in memory) or an h5py dataset (too large)."""
        if name not in self._cache:
            ds = self.file[name]
            if ds.size * ds.dtype.itemsize > self.max_memory_bytes:
                self._cache[name] = ds
            else:
                try:
                    self._cache[name] = ds[:]
                except OSError as err:
                    raise DataError(f"{self.path}: split {name!r} could not be read; the file is "
                                    f"corrupt or truncated ({_first_line(err)}); delete it and "
                                    "rerun to rebuild it") from None
        return self._cache[name]

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> TokenStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_store(path: str | Path) -> TokenStore:
    return TokenStore(path)


class Batches:
    """Random windows of ``seq_len + 1`` tokens; batch ``i`` is a pure function of (seed, i).

    In memory, a batch is one gather of whole rows from a strided window view of the token array
    (no index matrix), followed by one cast to int64."""

    def __init__(self, tokens: Any, seq_len: int, batch_size: int, seed: int):
        if len(tokens) < seq_len + 2:
            raise DataError(f"the train split has {len(tokens)} tokens, fewer than one window of "
                            f"seq_len + 1 = {seq_len + 1}")
        self.tokens, self.seq_len, self.batch_size, self.seed = tokens, seq_len, batch_size, seed
        self.in_memory = isinstance(tokens, np.ndarray)
        if self.in_memory:
            self.windows = np.lib.stride_tricks.sliding_window_view(tokens, seq_len + 1)

    def starts(self, index: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, index])
        return np.sort(rng.integers(0, len(self.tokens) - self.seq_len - 1, size=self.batch_size))

    def get(self, index: int) -> np.ndarray:
        """(batch_size, seq_len + 1) int64 window matrix for batch ``index``."""
        starts = self.starts(index)
        if self.in_memory:
            out = np.empty((self.batch_size, self.seq_len + 1), dtype=np.int64)
            out[...] = self.windows[starts]
            return out
        return np.stack([self.tokens[s:s + self.seq_len + 1] for s in starts]).astype(np.int64)


def val_windows(tokens: Any, seq_len: int, max_tokens: int, split: str = "val") -> np.ndarray:
    """Fixed, non-overlapping evaluation windows (n, seq_len + 1) covering up to max_tokens of
    the validation split (or of ``split``: the test split)."""
    n = min((len(tokens) - 1) // seq_len, max(1, max_tokens // seq_len))
    if n < 1:
        hint = "raise data.val_fraction" if split == "val" else "use a larger test source"
        raise DataError(f"the {'validation' if split == 'val' else split} split has {len(tokens)} "
                        f"tokens, fewer than one window of seq_len + 1 = {seq_len + 1}; lower "
                        f"seq_len or {hint}")
    data = np.asarray(tokens[: n * seq_len + 1]).astype(np.int64)
    idx = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)
    return data[idx]
