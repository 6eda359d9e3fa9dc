"""Corpora, tokenizers and the HDF5 token store: formats, splits, limits, the loader, and one clear
line for every kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from lmablate.data.corpora import iter_documents, load_manifest, prepare_corpus, split_documents
from lmablate.data.tokenizer import build_tokenizer, load_tokenizer
from lmablate.data.tokens import Batches, TokenStore, encode_corpus, import_hdf5, val_windows
from lmablate.errors import ConfigError, DataError
from lmablate.study.config import TokenizerConfig
from lmablate.study.corpus_spec import PRESETS, resolve_corpora

DATA = Path(__file__).parent / "data"
FIRST_STORY = "Once upon a time there was a little boy named Ben."
STORIES = "".join(f"Story {i} is about a {['cat', 'dog', 'bird'][i % 3]} who likes number {i}.\n\n"
                  for i in range(400))


def corpus(tmp_path: Path, raw: dict, name: str = "c") -> dict:
    return resolve_corpora({name: raw}, tmp_path)[name]


def prepared(tmp_path: Path, raw: dict) -> dict:
    return load_manifest(prepare_corpus(corpus(tmp_path, raw), tmp_path / "corpus"))


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def tokenize(tmp_path: Path, raw: dict, *, kind: str = "bpe", vocab_size: int = 300,
             val_fraction: float = 0.1) -> tuple[Path, dict]:
    """prepare -> build tokenizer on the train side -> encode, as the workflow rules do."""
    manifest_path = prepare_corpus(corpus(tmp_path, raw), tmp_path / "corpus")
    manifest = load_manifest(manifest_path)
    tok = tmp_path / "tok" / "tokenizer.json"
    train_docs = (d for _, d in split_documents(manifest, val_fraction, split="train"))
    build_tokenizer(TokenizerConfig(kind=kind, vocab_size=vocab_size), train_docs, tok)
    out = tmp_path / "tokens.h5"
    return out, encode_corpus(manifest_path, tok, out, val_fraction=val_fraction)


def wikitext_parquet(path: Path) -> Path:
    """The excerpt as HF's wikitext-*-raw-v1 parquet: one row per line, blank lines empty."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    lines = (DATA / "wikitext2_valid_excerpt.txt").read_text().split("\n")[:-1]
    rows = [line + "\n" if line.strip() else "" for line in lines]
    pq.write_table(pa.table({"text": rows}), path)
    return path


# --------------------------------------------------------------------------------------------------
# corpus specs


def test_presets_resolve_with_their_sources() -> None:
    specs = resolve_corpora({}, Path("."))
    assert set(PRESETS) <= set(specs)
    assert specs["tinystories"]["files"] == ["TinyStories-train.txt"]
    assert specs["tinystories"]["val"] == ["TinyStories-valid.txt"]
    assert specs["wikitext-103-raw"]["files"] == ["wikitext-103-raw-v1/train-*.parquet"]
    assert specs["smollm-corpus"]["files"] == ["cosmopedia-v2/train-00000-of-*.parquet"]
    assert Path(specs["tinystories-1k"]["_abs"]).is_file()


@pytest.mark.parametrize(("raw", "message"), [
    pytest.param({"source": "file", "paht": "x"},
                 "corpora.c.paht: unknown key (did you mean 'path'?); expected one of: ",
                 id="typo"),
    pytest.param({"source": "files", "path": "x"},
                 "corpora.c.source: expected source one of file, url, hf, hdf5, got 'files' "
                 "(did you mean 'file'?)", id="source"),
    pytest.param({"source": "file", "path": "x", "repo": "a/b"},
                 "corpora.c.repo: does not apply to source 'file'", id="foreign-key"),
    pytest.param({"source": "file"}, "corpora.c.path: expected a non-empty string, got None",
                 id="no-path"),
    pytest.param({"source": "hf", "repo": "a/b"},
                 "corpora.c.files: expected a file pattern or a list of them, got None",
                 id="hf-no-files"),
    pytest.param({"source": "hdf5", "train": "a.h5", "val": "b.h5"},
                 "corpora.c.dataset: expected a non-empty string, got None", id="hdf5-no-dataset"),
    pytest.param({"source": "url", "url": "http://h/x", "sha256": "abc"},
                 "corpora.c.sha256: expected 64 hex digits, got 'abc'", id="sha256"),
    pytest.param({"source": "file", "path": "x", "max_documents": 0},
                 "corpora.c.max_documents: expected an integer >= 1, got 0", id="limit"),
    pytest.param({"source": "file", "path": "x", "encoding_errors": "ignore"},
                 "corpora.c.encoding_errors: expected one of replace, error, got 'ignore'",
                 id="encoding-policy"),
    pytest.param({"source": "file", "path": "x", "doc_start": "(["},
                 "corpora.c.doc_start: not a valid regular expression", id="regex"),
    pytest.param({"preset": "tinystory"},
                 "corpora.c.preset: unknown preset 'tinystory' (did you mean 'tinystories'?)",
                 id="preset"),
])
def test_bad_specs_are_one_line(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        corpus(Path("."), raw)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_preset_with_overrides_and_alias(tmp_path: Path) -> None:
    specs = resolve_corpora({"small": {"preset": "tinystories-1k", "max_documents": 10},
                             "same": "tinystories-1k"}, tmp_path)
    assert specs["small"]["max_documents"] == 10 and specs["small"]["separator"] == "\n\n"
    assert specs["same"]["_abs"] == specs["tinystories-1k"]["_abs"]


# --------------------------------------------------------------------------------------------------
# reading documents


def test_txt_with_endoftext_separator(tmp_path: Path) -> None:
    manifest = prepared(tmp_path, {"source": "file", "path": str(DATA / "tinystories_sample.txt"),
                                   "separator": "<|endoftext|>"})
    docs = list(iter_documents(manifest))
    assert len(docs) == 5 and all("<|endoftext|>" not in d for d in docs)
    assert docs[0].startswith(FIRST_STORY)
    assert docs[-1].endswith("they could play together.")


def test_jsonl_and_parquet_shards_by_glob(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "shards").mkdir()
    write(tmp_path / "shards/a-0.jsonl", "\n".join(json.dumps({"body": f"j{i}", "id": i})
                                                   for i in range(3)) + "\n\n")
    pq.write_table(pa.table({"body": ["p0", "  ", "p1"], "n": [1, 2, 3]}),
                   tmp_path / "shards/a-1.parquet")
    manifest = prepared(tmp_path, {"source": "file", "path": "shards/a-*", "text_field": "body"})
    assert list(iter_documents(manifest)) == ["j0", "j1", "j2", "p0", "p1"]


def test_wikitext_rows_are_joined_into_articles(tmp_path: Path) -> None:
    wikitext_parquet(tmp_path / "train-00000-of-00001.parquet")
    spec = {**{k: v for k, v in PRESETS["wikitext-2-raw"].items()
               if k in ("text_field", "doc_start")}, "source": "file",
            "path": "train-00000-of-00001.parquet"}
    docs = list(iter_documents(prepared(tmp_path, spec)))
    assert [d.splitlines()[0] for d in docs] == [
        "= Homarus gammarus = ", "= Frank <unk> = ", "= M @-@ 82 ( Michigan highway ) = "]
    assert " = = Description = = " in docs[0]  # sub-headings stay inside their article


def test_limits_bound_the_training_side(tmp_path: Path) -> None:
    write(tmp_path / "t.txt", STORIES)
    write(tmp_path / "v.txt", "Held one.\n\nHeld two.\n\nHeld three.")
    m = prepared(tmp_path, {"source": "file", "path": "t.txt", "val": "v.txt", "max_documents": 7})
    assert [s for s, _ in split_documents(m, 0.5)].count("train") == 7
    assert [d for s, d in split_documents(m, 0.5) if s == "val"] == [
        "Held one.", "Held two.", "Held three."]  # explicit val: read whole, hash split unused
    m = prepared(tmp_path, {"source": "file", "path": "t.txt", "max_bytes": 200})
    stats: dict = {}
    docs = list(iter_documents(m, stats))
    assert sum(len(d) for d in docs[:-1]) < 200 <= stats["bytes"]
    assert stats["documents"] == len(docs)


def test_hash_split_is_deterministic_and_complete(tmp_path: Path) -> None:
    write(tmp_path / "t.txt", STORIES)
    m = prepared(tmp_path, {"source": "file", "path": "t.txt"})
    first = list(split_documents(m, 0.2))
    assert first == list(split_documents(m, 0.2)) and len(first) == 400
    n_val = sum(s == "val" for s, _ in first)
    assert 40 < n_val < 120
    assert [d for s, d in first if s == "train"] == [d for _, d in split_documents(
        m, 0.2, split="train")]


# --------------------------------------------------------------------------------------------------
# bad text input -> one line


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        prepared(tmp_path, {"source": "file", "path": "nope.txt"})
    assert str(err.value) == f"corpus 'c': file not found: {tmp_path / 'nope.txt'}"
    with pytest.raises(DataError) as err:
        prepared(tmp_path, {"source": "file", "path": "nope-*.txt"})
    assert str(err.value) == f"corpus 'c': no file matches {tmp_path / 'nope-*.txt'}"


def test_empty_file_and_empty_corpus(tmp_path: Path) -> None:
    write(tmp_path / "empty.txt", "")
    with pytest.raises(DataError) as err:
        prepared(tmp_path, {"source": "file", "path": "empty.txt"})
    assert str(err.value) == f"corpus 'c': file is empty: {tmp_path / 'empty.txt'}"
    write(tmp_path / "blank.txt", "\n\n   \n\n\t\n")
    with pytest.raises(DataError) as err:
        tokenize(tmp_path, {"source": "file", "path": "blank.txt"})
    assert str(err.value) == ("the corpus has no training text: 0 documents on the train side of "
                              "the split")
    with pytest.raises(DataError) as err:
        tokenize(tmp_path, {"source": "file", "path": "blank.txt"}, kind="byte")
    assert str(err.value) == "corpus 'c' has no text: 0 training tokens"


def test_non_utf8_replaced_and_counted(tmp_path: Path) -> None:
    write(tmp_path / "latin1.txt", STORIES.encode() + "\n\nCaf\xe9 cr\xe8me.".encode("latin-1"))
    out, attrs = tokenize(tmp_path, {"source": "file", "path": "latin1.txt"}, kind="byte")
    assert attrs["replaced_chars"] == 2
    assert TokenStore(out).attrs["replaced_chars"] == 2


@pytest.mark.parametrize("fmt", ["txt", "jsonl"])
def test_non_utf8_error_policy(tmp_path: Path, fmt: str) -> None:
    bad = b"good text\n\nbad \xff\xfe here" if fmt == "txt" else (
        b'{"text": "fine"}\n{"text": "bad \xff"}\n')
    write(tmp_path / f"bad.{fmt}", bad)
    m = prepared(tmp_path, {"source": "file", "path": f"bad.{fmt}", "encoding_errors": "error"})
    with pytest.raises(DataError) as err:
        list(iter_documents(m))
    offset = bad.index(b"\xff")
    path = tmp_path / "corpus" / f"train-0000-bad.{fmt}"
    assert str(err.value) == (f"{path}: not valid UTF-8 at byte {offset} (set encoding_errors: "
                              "replace to replace and count bad bytes)")


def test_binary_file(tmp_path: Path) -> None:
    write(tmp_path / "model.bin", bytes(range(256)) * 8)
    m = prepared(tmp_path, {"source": "file", "path": "model.bin"})
    with pytest.raises(DataError) as err:
        list(iter_documents(m))
    assert str(err.value).endswith("model.bin: contains NUL bytes; this looks like a binary file, "
                                   "not text")


def test_bad_jsonl_lines(tmp_path: Path) -> None:
    write(tmp_path / "a.jsonl", '{"text": "ok"}\n{"text": 3}\n')
    with pytest.raises(DataError, match=r"a\.jsonl:2: no string field 'text'$"):
        list(iter_documents(prepared(tmp_path, {"source": "file", "path": "a.jsonl"})))
    write(tmp_path / "a.jsonl", '{"text": "ok"}\n{"text": \n')
    with pytest.raises(DataError, match=r"a\.jsonl:2: invalid JSON \(Expecting value\)$"):
        list(iter_documents(prepared(tmp_path, {"source": "file", "path": "a.jsonl"})))


# --------------------------------------------------------------------------------------------------
# tokenizers


def test_vocab_larger_than_the_corpus_supports(tmp_path: Path) -> None:
    write(tmp_path / "t.txt", "ab ab ab\n\nab ba\n\nba ab")
    with pytest.raises(DataError) as err:
        tokenize(tmp_path, {"source": "file", "path": "t.txt"}, vocab_size=4000)
    assert str(err.value).startswith("tokenizer.vocab_size 4000 is larger than this corpus "
                                     "supports: BPE stopped at ")
    assert "\n" not in str(err.value)


def test_tokenizer_json_that_does_not_load(tmp_path: Path) -> None:
    bad = write(tmp_path / "tokenizer.json", '{"model": {"type": "Nope"}}')
    with pytest.raises(DataError) as err:
        load_tokenizer(bad)
    assert str(err.value).startswith(f"{bad}: not a valid tokenizer.json (")
    assert "\n" not in str(err.value)
    with pytest.raises(DataError) as err:
        build_tokenizer(TokenizerConfig(kind="file", path=str(tmp_path / "gone.json")), [],
                        tmp_path / "out" / "tokenizer.json")
    assert str(err.value) == f"{tmp_path / 'gone.json'}: tokenizer file not found"


@pytest.mark.parametrize("kind", ["bpe", "byte", "char"])
def test_tokenizers_round_trip_the_store(tmp_path: Path, kind: str) -> None:
    write(tmp_path / "t.txt", STORIES)
    out, attrs = tokenize(tmp_path, {"source": "file", "path": "t.txt"}, kind=kind)
    tok = load_tokenizer(tmp_path / "tok" / "tokenizer.json")
    store = TokenStore(out)
    train, starts = store.split("train"), store.file["train_docs"][:]
    assert train.dtype == np.uint16 and store.eot_id == 0
    assert len(starts) == attrs["train_documents"] and starts[0] == 0
    # every document decodes back to its text and ends with the separator
    ends = [*starts[1:], len(train)]
    texts = {d for _, d in split_documents(load_manifest(tmp_path / "corpus/manifest.json"), 0.1,
                                           split="train")}
    for a, b in zip(starts[:5], ends[:5]):
        assert train[b - 1] == store.eot_id
        assert tok.decode(train[a:b - 1].tolist()) in texts
    for key in ("tokenizer_sha256", "corpus_files", "corpus_spec", "tokenizers_version", "created"):
        assert store.attrs[key]
    assert store.attrs["split"] == "hash" and store.attrs["format"] == "lmablate-tokens-1"


def test_bpe_training_reads_at_most_train_bytes(tmp_path: Path) -> None:
    seen: list[str] = []

    def docs():
        for i in range(10_000):
            d = f"document {i} with some words in it"
            seen.append(d)
            yield d
    build_tokenizer(TokenizerConfig(kind="bpe", vocab_size=270, train_bytes=3000), docs(),
                    tmp_path / "tokenizer.json")
    assert sum(len(d) for d in seen[:-1]) < 3000 <= sum(len(d) for d in seen)


# --------------------------------------------------------------------------------------------------
# the token store


def test_explicit_val_and_max_tokens(tmp_path: Path) -> None:
    write(tmp_path / "t.txt", STORIES)
    write(tmp_path / "v.txt", STORIES * 2)  # two batches of documents after the cut
    out, attrs = tokenize(tmp_path, {"source": "file", "path": "t.txt", "val": "v.txt",
                                     "max_tokens": 1234}, kind="byte")
    store = TokenStore(out)
    assert len(store.split("train")) == 1234 == attrs["train_tokens"]
    assert attrs["split"] == "explicit"
    val_docs = [d.strip() for d in (STORIES * 2).split("\n\n") if d.strip()]
    assert attrs["val_documents"] == len(val_docs)  # byte ids: one per byte, plus the separator
    assert attrs["val_tokens"] == sum(len(d) + 1 for d in val_docs)
    files = json.loads(store.attrs["corpus_files"])
    assert [f["split"] for f in files] == ["train", "val"] and all(len(f["sha256"]) == 64
                                                                   for f in files)


def test_max_tokens_stops_reading_with_a_hash_split(tmp_path: Path) -> None:
    write(tmp_path / "t.txt", STORIES * 10)
    _, attrs = tokenize(tmp_path, {"source": "file", "path": "t.txt", "max_tokens": 500},
                        kind="byte")
    assert attrs["train_tokens"] == 500 and attrs["val_tokens"] > 0
    assert attrs["bytes"] < len(STORIES) * 10 / 2  # the rest of the file was never read


def test_encoding_streams_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Documents are encoded batch by batch and written in whole chunks; the result does not
    depend on the batch size."""
    from lmablate.data import tokens
    monkeypatch.setattr(tokens, "CHUNK", 4096)
    monkeypatch.setattr(tokens, "FLUSH", 10_000)  # writes of 8192 tokens, the rest carried over
    write(tmp_path / "t.txt", STORIES * 3)
    m = prepare_corpus(corpus(tmp_path, {"source": "file", "path": "t.txt"}), tmp_path / "c")
    build_tokenizer(TokenizerConfig(kind="byte"), [], tmp_path / "tok/tokenizer.json")
    a = encode_corpus(m, tmp_path / "tok/tokenizer.json", tmp_path / "a.h5", val_fraction=0.1,
                      batch_docs=7)
    b = encode_corpus(m, tmp_path / "tok/tokenizer.json", tmp_path / "b.h5", val_fraction=0.1,
                      batch_docs=1000)
    assert a["train_tokens"] == b["train_tokens"] > 4 * 4096
    with h5py.File(tmp_path / "a.h5") as fa, h5py.File(tmp_path / "b.h5") as fb:
        assert fa["train"].chunks == (4096,)
        for k in ("train", "val", "train_docs", "val_docs"):
            assert np.array_equal(fa[k][:], fb[k][:])
    assert not list(tmp_path.glob(".*.tmp"))


def test_truncated_or_foreign_store(tmp_path: Path) -> None:
    write(tmp_path / "t.txt", STORIES)
    out, _ = tokenize(tmp_path, {"source": "file", "path": "t.txt"}, kind="byte")
    data = out.read_bytes()
    cut = write(tmp_path / "cut.h5", data[: len(data) // 2])
    with pytest.raises(DataError) as err:
        TokenStore(cut)
    assert str(err.value).startswith(f"{cut}: not a readable lmablate token store; the file is "
                                     "corrupt or truncated (")
    assert str(err.value).endswith("; delete it and rerun to rebuild it")
    assert "\n" not in str(err.value)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["input_ids"] = np.arange(10)
    with pytest.raises(DataError) as err:
        TokenStore(tmp_path / "other.h5")
    assert str(err.value) == (f"{tmp_path / 'other.h5'}: not an lmablate token store (no train/val "
                              "dataset); delete it and rerun to rebuild it")
    with pytest.raises(DataError, match="token store not found$"):
        TokenStore(tmp_path / "absent.h5")


def test_batches_are_a_function_of_seed_and_step(tmp_path: Path) -> None:
    write(tmp_path / "t.txt", STORIES * 5)
    out, _ = tokenize(tmp_path, {"source": "file", "path": "t.txt"}, kind="byte")
    mem = TokenStore(out)
    disk = TokenStore(out, max_memory_bytes=0)  # too large: windows read from the file
    train = mem.split("train")
    assert isinstance(train, np.ndarray) and isinstance(disk.split("train"), h5py.Dataset)
    a, b = Batches(train, 64, 8, seed=3), Batches(disk.split("train"), 64, 8, seed=3)
    for step in (0, 1, 17):
        x = a.get(step)
        assert x.shape == (8, 65) and x.dtype == np.int64
        assert np.array_equal(x, Batches(train, 64, 8, seed=3).get(step))  # fresh = resumed
        assert np.array_equal(x, b.get(step))
        for row, s in zip(x, a.starts(step)):
            assert np.array_equal(row, train[s:s + 65])
    assert not np.array_equal(a.get(0), a.get(1))
    assert not np.array_equal(a.get(0), Batches(train, 64, 8, seed=4).get(0))
    v = val_windows(mem.split("val"), 32, 256)
    assert v.shape == (8, 33) and np.array_equal(v[1], mem.split("val")[32:65])


def test_too_short_for_one_window() -> None:
    with pytest.raises(DataError, match=r"^the train split has 10 tokens, fewer than one window"):
        Batches(np.arange(10, dtype=np.uint16), 16, 2, 0)


# --------------------------------------------------------------------------------------------------
# pre-tokenized HDF5 (seed 000)


def seed000_h5(path: Path, rows: list[list[int]], width: int = 8) -> Path:
    """The layout of seed 000's distill_prostt5 files: ragged int32 rows padded to a fixed width
    with 0, and an attention_mask beside them."""
    vlen = h5py.vlen_dtype(np.int32)
    with h5py.File(path, "w") as f:
        ids = f.create_dataset("input_ids", (len(rows),), dtype=vlen)
        mask = f.create_dataset("attention_mask", (len(rows),), dtype=vlen)
        for i, r in enumerate(rows):
            ids[i] = np.array(r + [0] * (width - len(r)), np.int32)
            mask[i] = np.array([1] * len(r) + [0] * (width - len(r)), np.int32)
    return path


def hdf5_spec(tmp_path: Path, **extra: object) -> dict:
    return corpus(tmp_path, {"source": "hdf5", "train": "train.h5", "val": "valid.h5",
                             "dataset": "input_ids", **extra}, name="prost")


def test_import_seed000_ragged_rows_with_mask(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = [[2, *rng.integers(5, 25, size=rng.integers(1, 6)).tolist(), 3] for _ in range(50)]
    seed000_h5(tmp_path / "train.h5", rows[:40])
    seed000_h5(tmp_path / "valid.h5", rows[40:])
    attrs = import_hdf5(hdf5_spec(tmp_path, mask="attention_mask"), tmp_path / "tokens.h5")
    store = TokenStore(tmp_path / "tokens.h5")
    train = store.split("train")
    assert train.tolist() == [t for r in rows[:40] for t in r]  # padding dropped, rows in order
    assert store.file["train_docs"][:].tolist() == np.cumsum([0] + [len(r) for r in rows[:39]]
                                                             ).tolist()
    assert store.split("val").tolist() == [t for r in rows[40:] for t in r]
    assert attrs["vocab_size"] == max(max(r) for r in rows) + 1 and store.eot_id == -1
    assert attrs["split"] == "explicit" and attrs["tokenizer_sha256"] == ""
    assert [f["split"] for f in json.loads(attrs["corpus_files"])] == ["train", "val"]


def test_import_2d_rows_and_stream_with_eot_and_vocab(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "train.h5", "w") as f:
        f["ids"] = np.array([[5, 6, 7], [8, 9, 10]], np.int64)
    with h5py.File(tmp_path / "valid.h5", "w") as f:
        f["ids"] = np.array([11, 12, 13, 14], np.uint16)  # a 1-D stream: one document
    attrs = import_hdf5(hdf5_spec(tmp_path, dataset="ids", eot_id=1, vocab_size=70000),
                        tmp_path / "tokens.h5")
    store = TokenStore(tmp_path / "tokens.h5")
    assert store.split("train").tolist() == [5, 6, 7, 1, 8, 9, 10, 1]
    assert store.file["train_docs"][:].tolist() == [0, 4]
    assert store.split("val").tolist() == [11, 12, 13, 14, 1]
    assert store.split("train").dtype == np.uint32 and attrs["vocab_size"] == 70000


def test_import_max_tokens_cuts_the_train_split(tmp_path: Path) -> None:
    seed000_h5(tmp_path / "train.h5", [[2, 10 + i, 3] for i in range(20)])
    seed000_h5(tmp_path / "valid.h5", [[2, 9, 3]] * 3)
    import_hdf5(hdf5_spec(tmp_path, mask="attention_mask", max_tokens=7), tmp_path / "tokens.h5")
    store = TokenStore(tmp_path / "tokens.h5")
    assert store.split("train").tolist() == [2, 10, 3, 2, 11, 3, 2]
    assert store.file["train_docs"][:].tolist() == [0, 3, 6] and len(store.split("val")) == 9


def test_import_uses_a_file_tokenizers_vocab(tmp_path: Path) -> None:
    seed000_h5(tmp_path / "train.h5", [[2, 40, 3]] * 5)
    seed000_h5(tmp_path / "valid.h5", [[2, 41, 3]])
    build_tokenizer(TokenizerConfig(kind="byte"), [], tmp_path / "tok/tokenizer.json")
    attrs = import_hdf5(hdf5_spec(tmp_path, mask="attention_mask"), tmp_path / "tokens.h5",
                        tokenizer_path=tmp_path / "tok/tokenizer.json")
    assert attrs["vocab_size"] == 257 and len(attrs["tokenizer_sha256"]) == 64


@pytest.mark.parametrize(("case", "message"), [
    ("id-range", ("{dir}/train.h5: dataset 'input_ids' holds token id 40, outside vocab_size "
                  "vocabulary of 30")),
    ("no-dataset", "{dir}/train.h5: no dataset 'tokens' (datasets: attention_mask, input_ids)"),
    ("truncated", "{dir}/train.h5: not a readable HDF5 file ("),
    ("missing", "{dir}/valid.h5: hdf5 corpus file not found"),
    ("floats", ("{dir}/train.h5: dataset 'input_ids' (float32, shape (3,)) is not integer "
                "token ids (expected 1-D ids, 2-D rows or ragged rows)")),
    ("negative", ("{dir}/train.h5: dataset 'input_ids' holds a negative token id (-100); "
                  "padding must be dropped with `mask:`")),
    ("empty-val", ("corpus 'prost': the validation split is empty; its `val` source has no "
                   "documents")),
])
def test_bad_hdf5_input(tmp_path: Path, case: str, message: str) -> None:
    seed000_h5(tmp_path / "train.h5", [[2, 40, 3]] * 5)
    seed000_h5(tmp_path / "valid.h5", [[2, 7, 3]])
    extra: dict = {}
    if case == "id-range":
        extra["vocab_size"] = 30
    elif case == "no-dataset":
        extra["dataset"] = "tokens"
    elif case == "truncated":
        data = (tmp_path / "train.h5").read_bytes()
        write(tmp_path / "train.h5", data[:len(data) // 3])
    elif case == "missing":
        (tmp_path / "valid.h5").unlink()
    elif case in ("floats", "negative"):
        with h5py.File(tmp_path / "train.h5", "w") as f:
            f["input_ids"] = (np.array([1.5, 2, 3], np.float32) if case == "floats"
                              else np.array([4, -100, 5], np.int32))
    elif case == "empty-val":
        with h5py.File(tmp_path / "valid.h5", "w") as f:
            f["input_ids"] = np.zeros((0, 4), np.int32)
    with pytest.raises(DataError) as err:
        import_hdf5(hdf5_spec(tmp_path, **extra), tmp_path / "tokens.h5")
    assert str(err.value).startswith(message.format(dir=tmp_path)) and "\n" not in str(err.value)
    assert not (tmp_path / "tokens.h5").exists() and not list(tmp_path.glob(".tokens.h5.*"))


def test_hdf5_corpus_is_not_prepared_as_text(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"^corpus 'prost' holds token ids \(source: hdf5\)"):
        prepare_corpus(hdf5_spec(tmp_path), tmp_path / "c")
