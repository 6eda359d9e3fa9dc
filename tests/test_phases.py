"""Two-phase studies (seed 003): the ranking block, the selection, and the workflow end to end."""

from __future__ import annotations

import json
import re

import matplotlib.image
import pandas as pd
import pytest
from conftest import planned, snakemake, write_yaml

from lmablate import ConfigError, study_from_dict
from lmablate.results.selection import select
from lmablate.study.phases import ranking_of


def _study(tiny_study, **ranking):
    doc = tiny_study
    doc["sweep"] = {"grid": {"train.lr": [1e-4, 1e-3, 3e-3]}, "seeds": [0]}
    doc["ranking"] = {"tokens": 2048, "top_k": 2, **ranking}
    return doc


def test_phase1_runs_are_the_study_runs_with_the_short_budget(tiny_study):
    study = study_from_dict(_study(tiny_study))
    r = ranking_of(study)
    assert len(r.phase1) == len(study.runs) == 3
    assert set(r.phase2_of.values()) == set(study.by_id)
    for p1_id, p2_id in r.phase2_of.items():
        p1, p2 = r.phase1[p1_id], study.by_id[p2_id]
        assert p1_id.startswith("p1-") and p1_id != p2_id
        assert p1.config.train.tokens == 2048 and p2.config.train.tokens == 8192
        assert p1.config.train.lr == p2.config.train.lr and p1.axes == p2.axes
    cont = ranking_of(study_from_dict(_study(tiny_study, resume="continue")))
    for p1_id in cont.phase2_of:  # same schedule, stopped early
        assert cont.phase1[p1_id].config.train.tokens == 8192
        assert cont.phase1[p1_id].config.train.stop_tokens == 2048


def test_selection_is_exactly_the_top_k_of_phase1(tiny_study):
    r = ranking_of(study_from_dict(_study(tiny_study)))
    ids = sorted(r.phase1)
    table = pd.DataFrame({"run_id": ids, "status": ["completed", "completed", "stopped_early"],
                          "val_loss": [3.2, 3.1, 1.0], "train.lr": [1e-4, 1e-3, 3e-3]})
    chosen = select(r, table)
    assert chosen["phase1"] == [ids[1], ids[0]]  # the stopped run never goes on, however low
    assert chosen["selected"] == [r.phase2_of[ids[1]], r.phase2_of[ids[0]]]
    per = select(r.selection() | {"top_k": 1, "per": "train.lr"}, table)
    assert per["phase1"] == [ids[0], ids[1]]  # one per value of train.lr (3e-3's run stopped)
    with pytest.raises(ConfigError, match=r"ranking\.per: no column 'train\.lrr'.*train\.lr"):
        select(r.selection() | {"per": "train.lrr"}, table)


@pytest.mark.parametrize("ranking, message", [
    ({"top_k": 2}, r"ranking\.tokens: a two-phase study needs the phase-1 budget"),
    ({"tokens": 8192}, r"ranking\.tokens: the phase-1 budget \(8192\) must be smaller"),
    ({"tokens": 2048, "resume": "resume"}, r"ranking\.resume: expected restart or continue"),
    ({"tokens": 2048, "topk": 1}, r"ranking\.topk: unknown key \(did you mean 'top_k'\?\)"),
    ({"tokens": 2048, "top_k": 0}, r"ranking\.top_k: expected an integer >= 1"),
    ({"tokens": 2048, "early_stop": {"tokens": 100}}, r"ranking\.early_stop\.delta: early stop"),
    ({"tokens": 2048, "early_stop": {"delta": 0.5, "metrc": "ppl"}},
     r"ranking\.early_stop\.metrc: unknown key \(did you mean 'metric'\?\)"),
    ({"tokens": 2048, "resume": "continue", "overrides": {"train.lr": 1e-3}},
     r"ranking\.overrides: resume: continue needs phase 1 to train the same runs"),
])
def test_bad_ranking_blocks_get_one_line_naming_the_key(tiny_study, ranking, message):
    doc = _study(tiny_study)
    doc["ranking"] = ranking
    with pytest.raises(ConfigError, match=message) as err:
        ranking_of(study_from_dict(doc))
    assert "\n" not in str(err.value)


@pytest.mark.workflow
def test_two_phase_study_through_snakemake(tmp_path, tiny_study):
    """Phase 1 trains all three LRs; the checkpoint picks the two best; phase 2 continues them."""
    doc = _study(tiny_study, resume="continue",
                 early_stop={"delta": 0.5, "metric": "loss", "tokens": 1024})
    doc["defaults"]["train"]["eval_every"] = 4
    write_yaml(tmp_path / "study.yaml", doc)
    snakemake(tmp_path, "-c2")
    res = tmp_path / "results" / "tiny"
    phase1 = pd.read_csv(res / "phase1" / "runs.csv")
    assert len(phase1) == 3 and phase1["run_id"].str.startswith("p1-").all()
    ok = phase1[phase1["status"] == "completed"].sort_values(["val_loss", "run_id"])
    selected = json.loads((res / "phase1" / "selected.json").read_text())
    assert selected["phase1"] == list(ok["run_id"][:2])  # exactly the top-2 of phase 1
    phase2 = pd.read_csv(res / "runs.csv")
    assert sorted(phase2["run_id"]) == sorted(selected["selected"])
    assert (phase2["tokens"] == 8192).all() and (phase2["status"] == "completed").all()
    for run_id in selected["selected"]:  # continued: phase 1's evaluations open the curve
        steps = [json.loads(x)["step"] for x in
                 (res / "runs" / run_id / "metrics.jsonl").read_text().splitlines()]
        assert steps[0] == 1 and steps == sorted(steps)
    assert (tmp_path / "checkpoints" / "tiny" / "phase1-cohort.jsonl").stat().st_size > 0
    ranking = matplotlib.image.imread(res / "phase1" / "ranking.png")  # the phase-1 figure
    assert ranking.shape[0] > 200 and ranking[..., :3].std() > 0.05
    md = (res / "phase1" / "RESULTS.md").read_text()  # links the figures drawn from phase 1
    linked = set(re.findall(r"\]\(plots/([\w-]+)\.png\)", md))
    assert linked and linked == {p.stem for p in (res / "phase1" / "plots").glob("*.png")}
    rules, _ = planned(tmp_path)
    assert not rules  # finished: nothing re-plans
