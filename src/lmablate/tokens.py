"""The HDF5 token store and the training loader.

File layout (``resources/tokens/<corpus>-<data_id>.h5``)::

    /train          uint16|uint32 (N,)  token ids, documents separated by the EOT id
    /val            uint16|uint32 (M,)
    /train_docs     int64 (D,)          start offset of each document in /train
    /val_docs       int64 (E,)
    attrs           vocab_size, eot_id, tokenizer_sha256, corpus manifest checksums, counts,
                    val_fraction, versions, created (provenance)

Encoding streams documents (never the whole corpus in memory) in batches through
``Tokenizer.encode_batch`` (parallel in Rust), appending to chunked, resizable datasets. The file is
written under a temporary name and renamed when complete.

The loader draws random contiguous windows of ``seq_len + 1`` tokens; window starts for step ``s``
come from ``numpy.random.default_rng([seed, s])``, so the data order is a pure function of
(seed, step) and a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .corpora import is_val, iter_documents, load_manifest
from .errors import DataError
from .io import fsync_dir, sha256_file
from .tokenizer import load_tokenizer

__all__ = ["encode_corpus", "open_store", "TokenStore", "Batches", "val_windows"]

CHUNK = 1 << 20  # tokens per HDF5 chunk


class _Appender:
    def __init__(self, f: h5py.File, name: str, dtype: Any):
        self.ds = f.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype,
                                   chunks=(CHUNK,))
        self.docs: list[int] = []
        self.n = 0
        self.buf: list[np.ndarray] = []
        self.buffered = 0

    def add(self, ids: list[int]) -> None:
        self.docs.append(self.n + self.buffered)
        self.buf.append(np.asarray(ids, dtype=self.ds.dtype))
        self.buffered += len(ids)
        if self.buffered >= CHUNK:
            self.flush()

    def flush(self) -> None:
        if not self.buf:
            return
        block = np.concatenate(self.buf)
        self.ds.resize((self.n + len(block),))
        self.ds[self.n:] = block
        self.n += len(block)
        self.buf, self.buffered = [], 0


def _batched(docs: Iterable[str], size: int) -> Iterable[list[str]]:
    batch: list[str] = []
    for d in docs:
        batch.append(d)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def encode_corpus(manifest_path: str | Path, tokenizer_path: str | Path, out_path: str | Path, *,
                  val_fraction: float, batch_docs: int = 512, progress: bool = False) -> dict:
    """Tokenize a prepared corpus into an HDF5 token store; returns the counts written."""
    manifest = load_manifest(manifest_path)
    tok = load_tokenizer(tokenizer_path)
    meta_path = Path(tokenizer_path).with_name("tokenizer_meta.json")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    vocab = tok.get_vocab_size()
    eot = meta.get("eot_id")
    dtype = np.uint16 if vocab <= 1 << 16 else np.uint32
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    stats: dict[str, Any] = {}
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        total = sum(f["bytes"] for f in manifest["files"])
        bar = tqdm(total=total, unit="B", unit_scale=True, desc="tokenize")
    try:
        with h5py.File(tmp, "w") as f:
            splits = {"train": _Appender(f, "train", dtype), "val": _Appender(f, "val", dtype)}
            for batch in _batched(iter_documents(manifest, stats), batch_docs):
                encodings = tok.encode_batch_fast(batch) if hasattr(tok, "encode_batch_fast") \
                    else tok.encode_batch(batch)
                for doc, enc in zip(batch, encodings):
                    ids = enc.ids
                    if eot is not None:
                        ids = [*ids, eot]
                    splits["val" if is_val(doc, val_fraction) else "train"].add(ids)
                if bar is not None:
                    bar.update(sum(len(d.encode()) for d in batch))
            for name, app in splits.items():
                app.flush()
                f.create_dataset(f"{name}_docs", data=np.asarray(app.docs, dtype=np.int64))
            n_train, n_val = splits["train"].n, splits["val"].n
            if n_train == 0:
                raise DataError(f"corpus {manifest['corpus']!r} has no text: 0 training tokens")
            if n_val == 0:
                raise DataError(f"corpus {manifest['corpus']!r}: the validation split is empty; "
                                "raise data.val_fraction or use more text")
            import tokenizers

            attrs = {
                "format": "lmablate-tokens-1", "vocab_size": vocab,
                "eot_id": -1 if eot is None else eot, "dtype": np.dtype(dtype).name,
                "tokenizer_sha256": sha256_file(tokenizer_path), "corpus": manifest["corpus"],
                "corpus_files": json.dumps(manifest["files"]),
                "corpus_spec": json.dumps(manifest["spec"], sort_keys=True),
                "val_fraction": val_fraction, "train_tokens": n_train, "val_tokens": n_val,
                "train_documents": len(splits["train"].docs),
                "val_documents": len(splits["val"].docs),
                "replaced_chars": stats.get("replaced_chars", 0),
                "tokenizers_version": tokenizers.__version__, "h5py_version": h5py.__version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            f.attrs.update(attrs)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, out_path)
        fsync_dir(out_path.parent)
    finally:
        if bar is not None:
            bar.close()
        if tmp.exists():
            tmp.unlink()
    return {**attrs, "seconds": time.perf_counter() - t0, "bytes": stats.get("bytes", 0)}


class TokenStore:
    """Read side of a token store. Splits are loaded into memory when they fit (``max_bytes``),
    otherwise read from the HDF5 file window by window."""

    def __init__(self, path: str | Path, *, max_memory_bytes: int = 4 << 30):
        self.path = Path(path)
        try:
            self.file = h5py.File(self.path, "r")
            self.attrs = dict(self.file.attrs)
            for name in ("train", "val"):
                if name not in self.file:
                    raise KeyError(name)
        except (OSError, KeyError) as err:
            raise DataError(f"{self.path}: not a readable lmablate token store ({err}); delete it "
                            "and rerun to rebuild it") from None
        self.vocab_size = int(self.attrs["vocab_size"])
        self.eot_id = int(self.attrs.get("eot_id", -1))
        self._cache: dict[str, Any] = {}
        self.max_memory_bytes = max_memory_bytes

    def split(self, name: str) -> Any:
        """The split as a numpy array (in memory) or an h5py dataset (too large)."""
        if name not in self._cache:
            ds = self.file[name]
            self._cache[name] = ds[:] if ds.size * ds.dtype.itemsize <= self.max_memory_bytes \
                else ds
        return self._cache[name]

    def close(self) -> None:
        self.file.close()


def open_store(path: str | Path) -> TokenStore:
    return TokenStore(path)


class Batches:
    """Random windows of ``seq_len + 1`` tokens; batch ``i`` is a pure function of (seed, i)."""

    def __init__(self, tokens: Any, seq_len: int, batch_size: int, seed: int):
        if len(tokens) < seq_len + 2:
            raise DataError(f"the train split has {len(tokens)} tokens, fewer than one window of "
                            f"seq_len + 1 = {seq_len + 1}")
        self.tokens, self.seq_len, self.batch_size, self.seed = tokens, seq_len, batch_size, seed
        self.in_memory = isinstance(tokens, np.ndarray)
        self.offsets = np.arange(seq_len + 1, dtype=np.int64)

    def starts(self, index: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, index])
        return np.sort(rng.integers(0, len(self.tokens) - self.seq_len - 1, size=self.batch_size))

    def get(self, index: int) -> np.ndarray:
        """(batch_size, seq_len + 1) int64 window matrix for batch ``index``."""
        starts = self.starts(index)
        if self.in_memory:
            return self.tokens[starts[:, None] + self.offsets].astype(np.int64)
        return np.stack([self.tokens[s:s + self.seq_len + 1] for s in starts]).astype(np.int64)


def val_windows(tokens: Any, seq_len: int, max_tokens: int) -> np.ndarray:
    """Fixed, non-overlapping validation windows (n, seq_len + 1) covering up to max_tokens."""
    n = min((len(tokens) - 1) // seq_len, max(1, max_tokens // seq_len))
    if n < 1:
        raise DataError(f"the validation split has {len(tokens)} tokens, fewer than one window of "
                        f"seq_len + 1 = {seq_len + 1}; lower seq_len or raise data.val_fraction")
    data = np.asarray(tokens[: n * seq_len + 1]).astype(np.int64)
    idx = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)
    return data[idx]
