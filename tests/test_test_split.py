"""A corpus' test source: its own split in the token store, evaluated once on the final model."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import pandas as pd
import pytest
import torch
from conftest import planned, snakemake, write_yaml

from lmablate import from_dict
from lmablate.data.corpora import iter_documents, load_manifest, prepare_corpus, split_documents
from lmablate.data.tokenizer import build_tokenizer
from lmablate.data.tokens import TokenStore, encode_corpus
from lmablate.engine.train import train
from lmablate.errors import ConfigError, DataError
from lmablate.study.config import RunConfig
from lmablate.study.corpus_spec import PRESETS, resolve_corpora

DATA = Path(__file__).parent / "data"
TEST_TEXT = DATA / "wikitext2_test_excerpt.txt"
STORIES = {"source": "file", "path": "package:tinystories_valid_1k.txt", "separator": "\n\n",
           "max_documents": 300}
RUN = {"model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64},
       "train": {"tokens": 4096, "batch_size": 8, "seq_len": 32, "eval_every": 8,
                 "eval_tokens": 1024, "log_every": 4},
       "tokenizer": {"vocab_size": 300}}


def store(tmp_path: Path, **extra) -> Path:
    """prepare -> tokenizer on the train side -> token store, as the workflow's rules do."""
    spec = resolve_corpora({"c": {**STORIES, **extra}}, tmp_path)["c"]
    manifest = prepare_corpus(spec, tmp_path / "corpus")
    docs = (d for _, d in split_documents(load_manifest(manifest), 0.1, split="train"))
    cfg = from_dict(RunConfig, RUN).tokenizer
    build_tokenizer(cfg, docs, tmp_path / "tok" / "tokenizer.json")
    encode_corpus(manifest, tmp_path / "tok" / "tokenizer.json", tmp_path / "tokens.h5",
                  val_fraction=0.1)
    return tmp_path / "tokens.h5"


def test_the_test_source_is_its_own_split_and_never_train_or_val(tmp_path: Path) -> None:
    tokens = store(tmp_path, test=str(TEST_TEXT))
    manifest = load_manifest(tmp_path / "corpus" / "manifest.json")
    assert [f["split"] for f in manifest["files"]] == ["train", "test"]
    test_docs = list(iter_documents(manifest, split="test"))
    assert len(test_docs) == 1 and test_docs[0].startswith("= Robert <unk> =")
    hashed = [d for _, d in split_documents(manifest, 0.1)]  # the hash split skips test files
    assert len(hashed) == 300 and not any("Robert <unk>" in d for d in hashed)
    with h5py.File(tokens) as f:
        assert f.attrs["test_documents"] == 1
        assert f.attrs["test_tokens"] == f["test"].shape[0] > 1000
        assert list(f["test_docs"][:]) == [0]
        assert f.attrs["train_documents"] + f.attrs["val_documents"] == 300


def test_without_a_test_source_the_store_has_no_test_split(tmp_path: Path) -> None:
    tokens = store(tmp_path)
    s = TokenStore(tokens)
    assert not s.has_split("test") and "test_tokens" not in s.attrs
    s.close()


def test_final_model_is_evaluated_on_the_test_split_once(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    with_test = store(tmp_path / "a", test=str(TEST_TEXT))
    final = train(from_dict(RunConfig, RUN), with_test, tmp_path / "run", progress=False)
    assert final["test_loss"] > 0 and final["test_ppl"] == pytest.approx(
        torch.tensor(final["test_loss"]).exp().item(), rel=1e-5)
    assert final["test_eval_tokens"] > 1000
    assert final["test_loss"] != final["val_loss"]  # another text: not the validation numbers
    saved = json.loads((tmp_path / "run" / "final.json").read_text())
    assert saved["test_ppl"] == final["test_ppl"]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(x) for x in lines]
    assert {r["split"] for r in records} == {"train", "val"}  # no test evaluation during training
    plain = train(from_dict(RunConfig, RUN), store(tmp_path / "b"), tmp_path / "run2",
                  progress=False)
    assert not any(k.startswith("test_") for k in plain)


def test_test_sources_are_checked_like_val_sources(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        resolve_corpora({"c": {"source": "url", "url": "https://x.org/a.txt", "test": "ftp://x"}},
                        tmp_path)
    assert str(err.value) == "corpora.c.test: expected an http(s) URL, got 'ftp://x'"
    with pytest.raises(ConfigError) as err:
        resolve_corpora({"c": {"source": "url", "url": "https://x.org/a.txt",
                               "test_sha256": "0" * 64}}, tmp_path)
    assert str(err.value) == "corpora.c.test_sha256: test_sha256 needs a `test` URL"
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    spec = resolve_corpora({"c": {**STORIES, "test": str(empty)}}, tmp_path)["c"]
    with pytest.raises(DataError, match="file is empty: .*empty.txt"):
        prepare_corpus(spec, tmp_path / "corpus")


def test_wikitext_presets_name_their_test_split() -> None:
    assert PRESETS["wikitext-2-raw"]["test"] == ["wikitext-2-raw-v1/test-*.parquet"]
    assert PRESETS["wikitext-103-raw"]["test"] == ["wikitext-103-raw-v1/test-*.parquet"]


@pytest.mark.workflow
@pytest.mark.slow
def test_workflow_reports_test_perplexity_and_losses_per_epoch(tmp_path: Path, tiny_study) -> None:
    """The study's corpus names a test source and the runs have an epochs budget: the workflow
    plans the same jobs as without them and RESULTS.md shows both tables."""
    corpus = tiny_study["corpora"]["tiny-stories"]
    corpus["max_documents"] = 60
    tiny_study["sweep"] = {"variants": {"baseline": {}}, "seeds": [0]}
    write_yaml(tmp_path / "study.yaml", tiny_study)
    rules_plain, _ = planned(tmp_path)
    (tmp_path / "test.txt").write_bytes(TEST_TEXT.read_bytes())
    corpus["test"] = "test.txt"
    tiny_study["defaults"]["train"] |= {"epochs": 2, "eval_every": 1000}
    write_yaml(tmp_path / "study.yaml", tiny_study)
    rules, _ = planned(tmp_path)
    assert rules == rules_plain  # no new job
    snakemake(tmp_path, "-c2")
    res = tmp_path / "results" / "tiny"
    runs = pd.read_csv(res / "runs.csv")
    assert runs.test_ppl.notna().all() and (runs.test_loss > 0).all()
    md = (res / "RESULTS.md").read_text()
    assert "## Test split" in md and "| baseline | 1 |" in md
    epochs = pd.read_csv(res / "epochs.csv")
    assert list(epochs.epoch) == [1, 2] and epochs.train_loss.notna().all()
    assert "## Loss per epoch" in md
    html = (res / "results.html").read_text()  # the results page shows both tables too
    assert '<table class="test-split">' in html and '<table class="epochs">' in html


def test_a_pretokenized_corpus_takes_its_test_file_as_is(tmp_path: Path) -> None:
    from lmablate.data.tokens import import_hdf5

    for name, rows in (("train.h5", [[5, 6, 7, 8]] * 20), ("valid.h5", [[9, 8, 7, 6]] * 5),
                       ("test.h5", [[4, 3, 2], [1, 2, 3]])):
        with h5py.File(tmp_path / name, "w") as f:
            f["input_ids"] = rows
    spec = resolve_corpora({"p": {"source": "hdf5", "train": "train.h5", "val": "valid.h5",
                                  "test": "test.h5", "dataset": "input_ids", "eot_id": 0}},
                           tmp_path)["p"]
    attrs = import_hdf5(spec, tmp_path / "tokens.h5")
    assert (attrs["test_tokens"], attrs["test_documents"]) == (8, 2)
    s = TokenStore(tmp_path / "tokens.h5")
    assert list(s.split("test")) == [4, 3, 2, 0, 1, 2, 3, 0]
    assert list(s.file["test_docs"][:]) == [0, 4]
    s.close()
