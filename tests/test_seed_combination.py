"""The seeds' designs in combination, as a user would write them: one study on the shipped corpus
(with a test split) that ranks three learning rates in a short phase 1 with early stopping
(seed 003), trains the best at the full budget and scores it on downstream tasks, zero-shot and
fine-tuned (seeds 003, 004). Phase 2 trains and scores exactly the selected run; the stopped run
says where it stopped; the tables, RESULTS.md, results.html and the figures hold it all."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import matplotlib.image
import pandas as pd
import pytest
from conftest import REPO, jobs, planned, snakemake, write_yaml

from lmablate import study_from_dict
from lmablate.study.phases import ranking_of

TASKS = REPO / "tests" / "data" / "tasks" / "sst2"  # synthetic rows in SST-2's format
TEST_TEXT = REPO / "tests" / "data" / "wikitext2_test_excerpt.txt"
SLOW_LR, GOOD_LRS = 1e-5, (3e-3, 4e-3)


def combined_study(doc: dict, workdir: Path) -> dict:
    """The tiny study made two-phase with early stopping, downstream tasks and a test source."""
    for name in ("train.jsonl", "validation.jsonl"):
        shutil.copy(TASKS / name, workdir / f"sentiment_{name}")
    shutil.copy(TEST_TEXT, workdir / "test.txt")
    doc["corpora"]["tiny-stories"]["test"] = "test.txt"
    doc["defaults"]["train"] |= {"eval_every": 2, "eval_tokens": 1024, "log_every": 2}
    doc["sweep"] = {"grid": {"train.lr": [SLOW_LR, *GOOD_LRS]}, "seeds": [0]}
    # the slow LR falls 0.5 nats behind the others by 2k tokens: stopped 512 tokens later
    doc["ranking"] = {"tokens": 4096, "top_k": 1,
                      "early_stop": {"delta": 0.5, "metric": "loss", "tokens": 512}}
    doc["eval_tasks"] = {
        "tasks": [{"name": "continuation", "context_words": 12, "continuation_words": 6},
                  {"name": "sentiment", "source": "jsonl", "eval": "sentiment_validation.jsonl",
                   "train": "sentiment_train.jsonl", "mode": "both",
                   "template": "{sentence}\nQuestion: Is this sentence positive or negative?"
                               "\nAnswer:", "choices": ["negative", "positive"]}],
        "finetune": {"epochs": 1}}
    return doc


@pytest.mark.workflow
@pytest.mark.slow
def test_two_phase_study_with_early_stopping_and_tasks(tmp_path, tiny_study):
    doc = combined_study(tiny_study, tmp_path)
    write_yaml(tmp_path / "study.yaml", doc)
    study = study_from_dict(doc, source=str(tmp_path / "study.yaml"))
    ranking = ranking_of(study)
    by_lr = {r.config.train.lr: run_id for run_id, r in ranking.phase1.items()}
    slow = by_lr[SLOW_LR]

    # Early stopping compares each run with what its cohort logged so far, so which runs stop
    # depends on the order they train in: the two good LRs train first, then the whole study.
    first = snakemake(tmp_path, "-c2", *(f"results/tiny/runs/{by_lr[lr]}/final.json"
                                         for lr in GOOD_LRS))
    rules, run_ids = jobs(first.stdout + first.stderr)
    assert rules["train_model"] == 2 and run_ids["train_model"] == {by_lr[lr] for lr in GOOD_LRS}
    proc = snakemake(tmp_path, "-c2")
    rules, run_ids = jobs(proc.stdout + proc.stderr)
    res = tmp_path / "results" / "tiny"

    # phase 1: every configuration, the slow one stopped early and recorded with its stop step
    phase1 = pd.read_csv(res / "phase1" / "runs.csv").set_index("run_id")
    assert sorted(phase1.index) == sorted(ranking.phase1)
    assert phase1.loc[slow, "status"] == "stopped_early"
    step = int(phase1.loc[slow, "stopped_early_at_step"])
    final = json.loads((res / "runs" / slow / "final.json").read_text())
    assert step == final["steps"] == final["stopped_early_at_step"]
    assert phase1.loc[slow, "tokens"] == step * 8 * 32 < phase1.loc[slow, "planned_tokens"]
    assert set(phase1.status.drop(slow)) == {"completed"}
    md1 = (res / "phase1" / "RESULTS.md").read_text()
    assert f"- `{slow}` (lr=1e-05, seed 0): stopped_early at step {step}" in md1
    assert 'load_results("results/tiny/phase1")' in md1
    for link in re.findall(r"!\[[^]]*\]\(([^)]+)\)", md1):  # every figure it shows exists
        assert (res / "phase1" / link).is_file(), link

    # phase 2: exactly the selected run, trained and scored; no other run trained or scored
    selected = json.loads((res / "phase1" / "selected.json").read_text())
    chosen = phase1[phase1.status == "completed"].val_loss.idxmin()
    assert selected["phase1"] == [chosen] and selected["selected"] == [ranking.phase2_of[chosen]]
    assert rules["train_model"] == 2  # the slow phase-1 run, then the selected one
    assert run_ids["train_model"] == {slow, *selected["selected"]}
    assert rules["evaluate_tasks"] == 1 and run_ids["evaluate_tasks"] == set(selected["selected"])
    trained = {p.parent.name for p in (res / "runs").glob("*/final.json")}
    assert trained == {*ranking.phase1, *selected["selected"]}
    scored = {p.parent.name for p in (res / "runs").glob("*/tasks.json")}
    assert scored == set(selected["selected"])
    runs = pd.read_csv(res / "runs.csv")
    assert list(runs.run_id) == selected["selected"] and set(runs.status) == {"completed"}
    # named as phase 1 named it (not "baseline": its LR is not the default one)
    assert runs.group.iloc[0] == phase1.loc[chosen, "group"] == f"lr={runs['train.lr'].iloc[0]:g}"
    assert runs.tokens.iloc[0] == 8192 and runs.test_ppl.notna().all()
    for task in ("task.continuation", "task.sentiment", "task.sentiment_ft"):
        assert 0 <= runs[task].iloc[0] <= 1 and runs[f"{task}.metric"].iloc[0] == "acc", task
    assert runs["task.continuation.n"].iloc[0] > 10 and runs["task.sentiment.n"].iloc[0] == 6

    # the report pieces: tables, RESULTS.md, results.html, the figures of both phases
    md = (res / "RESULTS.md").read_text()
    assert "## Test split" in md and "### tasks" in md
    assert f"- One group has a final val loss: {runs.group.iloc[0]} (mean " in md  # no best/worst
    assert f"against **{runs.group.iloc[0]}** (the baseline variant's only grid point here)" in md
    html = (res / "results.html").read_text()
    assert "<h3>Test split</h3>" in html
    # phase 1 on the results page: what it ranked, the selection, the stopped run and its step
    assert "<h3>Phase 1: every configuration, short</h3>" in html
    assert "Phase 1 trained 3 configurations (" in html and "for 4.1k tokens each" in html
    assert "<li>Phase 2 trains 1 configuration, the top 1 by phase-1 val_loss: " in html
    assert f"<li>{slow} (lr=1e-05, seed 0): stopped_early at step {step}</li>" in html
    # its ranking figure shows the stopped run at its last value (figures.final_metric)
    assert "a run that stopped early is a hollow dot at its last evaluated value" in html
    for heading in ("continuation acc", "sentiment acc", "sentiment_ft acc", "test ppl"):
        assert f"<th>{heading}</th>" in html, heading
    figures = {"plots/tasks.png": "tasks", "plots/loss_curves.png": "loss_curves",
               "phase1/ranking.png": "phase1/ranking",
               "phase1/plots/lr_sensitivity.png": "phase1/lr_sensitivity"}
    for png, name in figures.items():  # drawn, and embedded in the results page
        image = matplotlib.image.imread(res / png)
        assert image.shape[1] > 600 and image[..., :3].std() > 0.05, png
        assert f'<img alt="{name}" src="data:image/png;base64,' in html, name
    rules, _ = planned(tmp_path)
    assert not rules, rules  # finished: nothing re-plans
    snakemake(tmp_path, "--report", "results/tiny/report.html")  # phase 1's ranking filed too
    report = (res / "report.html").read_text()
    assert "A run that stopped early is a hollow dot at its last evaluated value" in report
