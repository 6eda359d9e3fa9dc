"""Seed fidelity: what the seeds did is what lmablate plans, trains and reports.

Two-phase studies with downstream tasks train and score exactly the selected runs (seed 003).
"""

from __future__ import annotations

import json

import pytest
from conftest import planned, snakemake, write_yaml

from lmablate import study_from_dict
from lmablate.phases import ranking_of


@pytest.mark.workflow
@pytest.mark.slow
def test_two_phase_study_with_eval_tasks_trains_only_the_selected_runs(tmp_path, tiny_study):
    """Phase 2 of a `ranking:` + `eval_tasks:` study holds exactly the runs selected.json names:
    no other study run is trained or scored, and no phase-1 run is scored on tasks."""
    tiny_study["sweep"] = {"grid": {"train.lr": [1e-4, 1e-3, 3e-3]}, "seeds": [0]}
    tiny_study["ranking"] = {"tokens": 2048, "top_k": 1}
    tiny_study["eval_tasks"] = {"tasks": [{"name": "continuation", "context_words": 12,
                                           "continuation_words": 6}]}
    write_yaml(tmp_path / "study.yaml", tiny_study)
    study = study_from_dict(tiny_study, source=str(tmp_path / "study.yaml"))
    phase1 = set(ranking_of(study).phase1)

    rules, run_ids = planned(tmp_path)  # before phase 1: phase 1 only, nothing scored
    assert run_ids == phase1 and rules["train_model"] == 3
    assert rules["evaluate_tasks"] == 0

    snakemake(tmp_path, "-c2", "results/tiny/phase1/selected.json")
    selected = json.loads((tmp_path / "results/tiny/phase1/selected.json").read_text())
    assert len(selected["selected"]) == 1 and selected["selected"][0] in study.by_id
    rules, run_ids = planned(tmp_path)  # phase 2: the selected run, trained and scored
    assert run_ids == set(selected["selected"])
    assert rules["train_model"] == len(selected["selected"]) == 1
    assert rules["evaluate_tasks"] == 1 and rules["harvest_metrics"] == 1
