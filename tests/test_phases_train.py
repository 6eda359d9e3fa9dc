"""Training side of two-phase studies: stop_tokens + continuing a phase-1 checkpoint, early
stopping."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import assert_same_run, run_config

from lmablate.engine.earlystop import same_training
from lmablate.engine.train import train
from lmablate.study.config import to_dict
from lmablate.study.sweep import identity


def test_phase1_then_continue_equals_one_uninterrupted_long_run(tmp_path, tokens):
    torch.set_num_threads(1)
    long = train(run_config(), tokens, tmp_path / "long", run_id="x", progress=False)
    short = train(run_config(stop_tokens=4096), tokens, tmp_path / "p1", run_id="x-p1",
                  progress=False)
    assert short["status"] == "completed" and short["steps"] == 16  # 4096 / (8 * 32)
    assert short["planned_tokens"] == long["planned_tokens"]  # the schedule of the full budget
    cont = train(run_config(), tokens, tmp_path / "p2", run_id="x", progress=False,
                 init_from=tmp_path / "p1" / "ckpt")
    assert_same_run(cont, long)
    # phase 1's evaluations carry over: the phase-2 curve starts at step 0
    lines = (tmp_path / "p2" / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(x)["step"] for x in lines]
    assert steps[0] == 1


def test_continue_refuses_a_checkpoint_of_another_config(tmp_path, tokens):
    torch.set_num_threads(1)
    train(run_config(stop_tokens=1024), tokens, tmp_path / "p1", run_id="a", progress=False)
    with pytest.raises(ValueError, match="different config"):
        train(run_config(lr=1e-3), tokens, tmp_path / "p2", run_id="b", progress=False,
              init_from=tmp_path / "p1" / "ckpt")


def test_phase_settings_and_later_fields_do_not_block_resume():
    a, b = to_dict(run_config()), to_dict(run_config(stop_tokens=512, early_stop_delta=0.5))
    assert not same_training(a, b) and same_training(a, b, phase=True)
    older = json.loads(json.dumps(a))  # a checkpoint written before stop_tokens existed
    del older["train"]["stop_tokens"]
    assert same_training(older, a)


def test_added_fields_at_their_default_keep_run_ids():
    sections = to_dict(run_config())
    ident = identity(sections, "d")
    assert "stop_tokens" not in ident["train"] and "init" not in ident["model"]
    changed = to_dict(run_config(early_stop_delta=0.5))
    assert identity(changed, "d")["train"]["early_stop_delta"] == 0.5


def test_early_stop_against_a_cohort_best(tmp_path, tokens):
    torch.set_num_threads(1)
    cohort = tmp_path / "cohort.jsonl"
    es = {"early_stop_delta": 0.3, "early_stop_tokens": 512, "eval_every": 2}
    good = train(run_config(**es), tokens, tmp_path / "good", run_id="good", progress=False,
                 cohort=cohort)
    assert good["status"] == "completed"
    # a run at a hopeless LR falls behind the good run's curve and is stopped, not failed
    bad = train(run_config(lr=1e-5, **es), tokens, tmp_path / "bad", run_id="bad",
                progress=False, cohort=cohort)
    assert bad["status"] == "stopped_early"
    assert bad["steps"] < good["steps"] and bad["stopped_early_at_step"] == bad["steps"]
    assert bad["val_loss"] is not None  # a stopped run is still evaluated
    rows = [json.loads(x) for x in cohort.read_text().splitlines()]
    assert {r["run_id"] for r in rows} == {"good", "bad"}
    saved = json.loads((tmp_path / "bad" / "final.json").read_text())
    assert saved["status"] == "stopped_early"


def test_early_stop_without_cohort_uses_the_runs_own_best(tmp_path, tokens):
    torch.set_num_threads(1)
    final = train(run_config(early_stop_delta=0.3, early_stop_tokens=512, eval_every=2),
                  tokens, tmp_path / "r", run_id="r", progress=False)
    assert final["status"] == "completed"  # a healthy run never falls behind its own best
