"""The results page shows what RESULTS.md shows: the test split's loss and perplexity per group
and the losses per epoch, from real runs (an `epochs` budget, a corpus with a `test:` source)
harvested and written as the workflow's write_results_page rule does."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
import torch

from lmablate import from_dict
from lmablate.engine.train import train
from lmablate.results.harvest import harvest
from lmablate.results.page import results_html, write_results_page
from lmablate.study.config import RunConfig

RUN = {"model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64},
       "train": {"epochs": 2, "batch_size": 4, "seq_len": 32, "eval_every": 1000,
                 "eval_tokens": 512, "log_every": 5, "final_eval_tokens": 1024},
       "tokenizer": {"vocab_size": 300}}


class Tables(HTMLParser):
    """Every <table> of a page as (class, header cells, rows of (text, right-aligned)), and the
    <h3> headings in order."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, tuple[list[str], list[list[tuple[str, bool]]]]] = {}
        self.headings: list[str] = []
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._num = False
        self._tag = ""

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self._tag = tag
        if tag == "table":
            self._table = attrs.get("class") or ""
            self.tables[self._table] = ([], [])
        elif tag == "tr" and self._table is not None:
            self.tables[self._table][1].append([])
        elif tag in ("th", "td"):
            self._cell, self._num = [], attrs.get("class") == "num"
        elif tag == "h3":
            self.headings.append("")

    def handle_endtag(self, tag):
        if tag in ("th", "td") and self._cell is not None:
            header, rows = self.tables[self._table]
            text = "".join(self._cell)
            if tag == "th":
                header.append(text)
            else:
                rows[-1].append((text, self._num))
            self._cell = None
        elif tag == "table":
            header, rows = self.tables[self._table]
            self.tables[self._table] = (header, [r for r in rows if r])
            self._table = None
        self._tag = ""

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        elif self._tag == "h3":
            self.headings[-1] += data


def tables(html: str) -> Tables:
    page = Tables()
    page.feed(html)
    page.close()
    return page


@pytest.fixture(scope="module")
def harvested(tmp_path_factory, split_tokens: Path) -> Path:
    """Two seeds of a 2-epoch run on the token store with a test split (40 shipped stories, the
    WikiText-2 test excerpt as the corpus' test source), harvested: the study's results
    directory."""
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("report_tables")
    for seed in (0, 1):
        cfg = from_dict(RunConfig, {**RUN, "train": {**RUN["train"], "seed": seed}})
        train(cfg, split_tokens, d / "runs" / f"r{seed}", run_id=f"r{seed}",
              meta={"study": "ep", "variant": "baseline", "seed": seed}, progress=False)
    harvest([d / "runs" / "r0", d / "runs" / "r1"], d / "out", study="ep")
    return d / "out"


def test_results_page_shows_the_test_split_and_the_losses_per_epoch(harvested: Path) -> None:
    out = harvested / "results.html"
    write_results_page(harvested / "runs.csv", harvested / "summary.json", out, study="ep",
                       curves=harvested / "curves.parquet")
    html = out.read_text()
    page = tables(html)
    assert "<code>test</code> source" in html  # RESULTS.md's note, its code spans as code
    # the same sections, in the same order, as RESULTS.md
    md = (harvested / "RESULTS.md").read_text()
    assert page.headings[:4] == ["Findings", "Ranking by final validation loss", "Test split",
                                 "Loss per epoch"]
    assert md.index("## Test split") < md.index("## Loss per epoch")
    # test split: the header and the row of RESULTS.md, numbers right-aligned
    header, rows = page.tables["test-split"]
    assert header == ["group", "n", "test loss", "95% CI (mean)", "test ppl (mean)", "val loss"]
    assert "| " + " | ".join(header) + " |" in md
    assert len(rows) == 1
    assert "| " + " | ".join(t for t, _ in rows[0]) + " |" in md
    assert [num for _, num in rows[0]] == [False] + [True] * 5
    summary = json.loads((harvested / "summary.json").read_text())
    test = summary["groups"]["baseline"]["test_loss"]
    assert rows[0][0][0] == "baseline" and rows[0][1][0] == "2"
    assert float(rows[0][2][0]) == pytest.approx(test["mean"], abs=5e-5)
    # losses per epoch: one row per run and epoch, the values of epochs.csv
    header, rows = page.tables["epochs"]
    assert header == ["run", "epoch", "train loss", "val loss", "val ppl"]
    epochs = pd.read_csv(harvested / "epochs.csv")
    assert [(t[0][0], int(t[1][0])) for t in rows] == list(zip(epochs.run_id, epochs.epoch))
    assert [(t[0][0], int(t[1][0])) for t in rows] == [(f"r{s}", e) for s in (0, 1)
                                                        for e in (1, 2)]
    for r, e in zip(rows, epochs.itertuples()):
        assert [float(c) for c, _ in r[2:]] == pytest.approx(
            [e.train_loss, e.val_loss, e.val_ppl], abs=5e-3)
        assert "| " + " | ".join(t for t, _ in r) + " |" in md
    # the runs table has each run's test loss and perplexity
    header, rows = page.tables["runs"]
    runs = pd.read_csv(harvested / "runs.csv").sort_values("run_id")
    col = header.index("test ppl")
    assert header[col - 1] == "test loss"
    assert [float(r[col][0]) for r in rows] == pytest.approx(list(runs.test_ppl), abs=5e-3)


def test_results_page_without_a_test_split_or_epochs_has_neither_table(harvested: Path) -> None:
    runs = pd.read_csv(harvested / "runs.csv").drop(columns=["test_loss", "test_ppl"])
    summary = json.loads((harvested / "summary.json").read_text())
    for group in summary["groups"].values():
        group.pop("test_loss"), group.pop("test_ppl")
    page = tables(results_html(runs, summary, "ep"))
    assert "Test split" not in page.headings and "Loss per epoch" not in page.headings
    assert set(page.tables) == {"ranking", "runs"}
    assert "test loss" not in page.tables["runs"][0]
