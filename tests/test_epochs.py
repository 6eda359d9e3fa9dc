"""`epochs` budgets: an evaluation at each epoch boundary with the epoch's mean training loss;
harvest lists them per run and epoch (RESULTS.md, analysis.txt, epochs.csv), and the test split's
loss and perplexity per group."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from lmablate import from_dict
from lmablate.data.tokens import TokenStore
from lmablate.engine.schedule import epoch_ended
from lmablate.engine.train import train
from lmablate.results.harvest import harvest
from lmablate.study.config import RunConfig

RUN = {"model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64},
       "train": {"epochs": 3, "batch_size": 4, "seq_len": 32, "eval_every": 1000,
                 "eval_tokens": 512, "log_every": 5, "final_eval_tokens": 2048},
       "tokenizer": {"vocab_size": 300}}


def test_epoch_boundaries() -> None:
    assert [epoch_ended(t, 100, 250) for t in (100, 200, 300, 400, 500, 600)] == [
        None, None, 1, None, 2, None]
    assert epoch_ended(1000, 1000, 250) == 4  # a step spanning several epochs: the last one


def run(tokens: Path, out: Path, seed: int) -> tuple[dict, list[dict]]:
    cfg = from_dict(RunConfig, {**RUN, "train": {**RUN["train"], "seed": seed}})
    final = train(cfg, tokens, out, run_id=out.name,
                  meta={"study": "ep", "variant": "baseline", "seed": seed}, progress=False)
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return final, records


def test_each_epoch_is_evaluated_with_its_mean_training_loss(tmp_path: Path,
                                                             split_tokens: Path) -> None:
    torch.set_num_threads(1)
    split = len(TokenStore(split_tokens).split("train"))
    final, records = run(split_tokens, tmp_path / "r0", 0)
    assert final["epochs"] == pytest.approx(3, abs=128 / split)  # one step of 128 tokens
    per_epoch = [r for r in records if "epoch" in r]
    assert [r["epoch"] for r in per_epoch] == [1, 2, 3]
    for r in per_epoch:
        assert r["split"] == "val" and r["tokens"] >= r["epoch"] * split > r["tokens"] - 128
    trains = [r for r in records if r["split"] == "train"]
    first = [r["loss"] for r in trains if r["tokens"] <= per_epoch[0]["tokens"]]
    assert min(first) - 0.01 <= per_epoch[0]["epoch_train_loss"] <= max(first) + 0.01
    losses = [r["epoch_train_loss"] for r in per_epoch]
    assert losses[0] > losses[1] > losses[2]  # it learns; each epoch is its own mean
    assert per_epoch[-1]["loss"] < per_epoch[0]["loss"]
    assert final["test_loss"] > 0 and "test_ppl" in final


def test_harvest_lists_losses_per_epoch_and_the_test_split(tmp_path: Path,
                                                            split_tokens: Path) -> None:
    torch.set_num_threads(1)
    runs = [run(split_tokens, tmp_path / "runs" / f"r{s}", s) for s in (0, 1)]
    summary = harvest([tmp_path / "runs" / "r0", tmp_path / "runs" / "r1"], tmp_path / "out",
                      study="ep")
    table = pd.read_csv(tmp_path / "out" / "epochs.csv")
    assert list(table.columns) == ["run_id", "group", "seed", "epoch", "step", "tokens",
                                   "train_loss", "val_loss", "val_ppl"]
    assert list(zip(table.run_id, table.epoch)) == [(f"r{s}", e) for s in (0, 1) for e in (1, 2, 3)]
    rec = [r for r in runs[1][1] if r.get("epoch") == 2][0]
    row = table[(table.run_id == "r1") & (table.epoch == 2)].iloc[0]
    assert (row.train_loss, row.val_loss, row.val_ppl) == pytest.approx(
        (rec["epoch_train_loss"], rec["loss"], rec["ppl"]))
    md = (tmp_path / "out" / "RESULTS.md").read_text()
    assert "## Loss per epoch" in md
    assert f"| r1 | 2 | {row.train_loss:.4f} | {row.val_loss:.4f} | {row.val_ppl:.2f} |" in md
    test = summary["groups"]["baseline"]["test_loss"]
    assert test["n"] == 2 and test["mean"] == pytest.approx(
        sum(f["test_loss"] for f, _ in runs) / 2)
    assert "## Test split" in md
    assert "| group | n | test loss | 95% CI (mean) | test ppl (mean) | val loss |" in md
    ppl = summary["groups"]["baseline"]["test_ppl"]["mean"]
    assert f"| baseline | 2 | {test['mean']:.4f} |" in md and f"| {ppl:.2f} |" in md
    text = (tmp_path / "out" / "analysis.txt").read_text()
    assert "Test split (the corpus' `test` source" in text and "Loss per epoch" in text
    csv = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert list(csv.test_ppl) == pytest.approx([f["test_ppl"] for f, _ in runs])
    summary_runs = json.loads((tmp_path / "out" / "summary.json").read_text())["runs"]
    assert summary_runs["r0"]["test_loss"] == pytest.approx(runs[0][0]["test_loss"])
    assert yaml.safe_load((tmp_path / "runs" / "r0" / "config.yaml").read_text())["train"][
        "epochs"] == 3


def test_a_resumed_run_keeps_the_epoch_mean(tmp_path: Path, split_tokens: Path) -> None:
    """Stopped inside epoch 2 and resumed, the epoch's training-loss mean is the uninterrupted
    run's (the running sum is part of the checkpoint)."""
    torch.set_num_threads(1)
    _, whole = run(split_tokens, tmp_path / "whole", 0)
    cfg = from_dict(RunConfig, {**RUN, "train": {**RUN["train"], "seed": 0,
                                                 "checkpoint_every": 1}})
    mid = [r for r in whole if r.get("epoch") == 1][0]["step"] + 3
    stopped = train(cfg, split_tokens, tmp_path / "cut", run_id="cut", progress=False,
                    stop_after_steps=mid)
    assert stopped == {"status": "stopped", "step": mid}
    train(cfg, split_tokens, tmp_path / "cut", run_id="cut", progress=False)
    resumed = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().split("\n")
               if x]
    assert [(r["epoch"], r["epoch_train_loss"]) for r in resumed if "epoch" in r] == [
        (r["epoch"], r["epoch_train_loss"]) for r in whole if "epoch" in r]
