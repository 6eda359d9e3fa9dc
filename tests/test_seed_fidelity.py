"""Seed fidelity: what the seeds did is what lmablate plans, trains and reports.

Two-phase studies with downstream tasks train and score exactly the selected runs (seed 003).
"""

from __future__ import annotations

import json
import math

import pytest
from conftest import REPO, planned, snakemake, write_yaml

from lmablate import ConfigError, study_from_dict
from lmablate.__main__ import main
from lmablate.engine.earlystop import EarlyStop
from lmablate.results.collect import RunData, tables
from lmablate.results.selection import select
from lmablate.results.summary import summarize_runs
from lmablate.study import config as C
from lmablate.study.load import read_study
from lmablate.study.phases import ranking_of
from lmablate.study.plan import plan_table, plan_totals
from lmablate.study.sweep import written_settings


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


# --------------------------------------------------------------------------------------------------
# seed 003: one-axis sweeps that share their centre point, selected per axis

PARAM_ALLOCATION = REPO / "studies" / "param_allocation.yaml"


def test_param_allocation_plans_the_shared_centre_once(tmp_path, capsys):
    """emb 0.35 and GLU 2.66 are one model: one run (one ID), in both axes' groups."""
    study = read_study(PARAM_ALLOCATION)
    assert len(study.runs) == 6  # 3 + 4 points, the centre once
    centre = [r for r in study.runs if r.shared]
    assert len(centre) == 1
    m = centre[0].config.model
    assert (m.embedding_share, m.glu_expansion) == (0.35, 2.66)
    assert centre[0].memberships() == [("embedding", {"model.embedding_share": 0.35}),
                                       ("glu", {"model.glu_expansion": 2.66})]
    assert main(["plan", str(PARAM_ALLOCATION), "--results", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out
    assert f"{centre[0].run_id} also stands for glu (glu_expansion=2.66)" in out
    # phase 1: 6 runs of 5M (306 steps of 32 x 512); phase 2: top-1 per axis, at most 2 of 50M
    assert ("total: 6 phase-1 runs + at most 2 of the 6 phase-2 runs (top 1 per variant)"
            in out)
    assert f"at most {(6 * 306 * 16384 + 2 * 3052 * 16384) / 1e6:.2f}M tokens" in out


def test_per_axis_cohorts_and_selection(tmp_path):
    """Each axis is a cohort and a selection group of its own; the centre competes in both."""
    ranking = ranking_of(read_study(PARAM_ALLOCATION))
    assert ranking.per == "variant" and ranking.phase2_at_most() == 2
    cohorts = {ranking.phase1[i].run_id: ranking.cohorts(i) for i in ranking.phase1}
    assert sorted(map(tuple, cohorts.values())) == sorted(
        [("phase1-cohort-embedding",)] * 2 + [("phase1-cohort-glu",)] * 3
        + [("phase1-cohort-embedding", "phase1-cohort-glu")])
    # every GLU point is worse than every embedding point: per axis, GLU still gets its best,
    # and the centre (best of GLU, not of embedding) goes on as GLU's pick
    loss = {"embedding_share=0.25": 3.0, "embedding_share=0.35": 3.3,
            "embedding_share=0.45": 3.1, "glu_expansion=2-": 3.6, "glu_expansion=3-": 3.5,
            "glu_expansion=4-": 3.4}
    data = []
    for run_id, run in ranking.phase1.items():
        value = next(v for k, v in loss.items() if k in run_id)
        data.append(RunData({"run_id": run_id, "variant": run.variant, "seed": 0,
                             "status": "completed", "val_loss": value,
                             "differs": ", ".join(f"{k}={v}" for k, v in run.diff.items()),
                             **{f"axis.{k}": v for k, v in run.axes.items()}}))
    runs, curves, _ = tables(data, ranking.selection()["shared"])
    assert runs["groups"].notna().sum() == 1  # one row per run, the centre naming both groups
    chosen = select(ranking, runs)
    picked = {ranking.phase1[i].config.model.embedding_share: ranking.phase1[i].config.model
              .glu_expansion for i in chosen["phase1"]}
    assert picked == {0.25: 2.66, 0.35: 2.66}  # embedding's 0.25; GLU's centre (3.3 < 3.4)
    summary = summarize_runs(runs, curves, "embedding")
    assert summary["groups"]["glu, glu_expansion=2.66"]["n"] == 1  # counted in both groups
    assert summary["groups"]["embedding, embedding_share=0.35"]["n"] == 1
    assert summary["reference"] == "embedding, embedding_share=0.35"
    assert summary["n_runs"] == 6 and len(summary["groups"]) == 7


def test_a_run_in_two_cohorts_stops_only_when_behind_in_both(tmp_path):
    cfg = C.RunConfig()
    cfg.train.early_stop_delta, cfg.train.early_stop_metric = 0.5, "loss"
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(json.dumps({"run_id": "x", "tokens": 10, "value": 1.0}) + "\n")
    b.write_text(json.dumps({"run_id": "y", "tokens": 10, "value": 3.0}) + "\n")
    rec = {"loss": 3.2, "ppl": 24.5}
    assert EarlyStop(cfg, "c", a).update(100, rec, None, []) == 100  # behind a's best
    assert EarlyStop(cfg, "c", [a, b]).update(100, rec, None, []) is None  # not behind b's
    assert len(a.read_text().splitlines()) == 3 and len(b.read_text().splitlines()) == 2


# --------------------------------------------------------------------------------------------------
# `lmablate plan` tells the truth (seed 000's pre-tokenized corpus, epoch budgets, stop_tokens)


def _hdf5_study(tmp_path, **train) -> dict:
    """Seed 000's setting: a pre-tokenized HDF5 corpus of 48 ids (fixed-length rows), the
    largest shape of the sweep and a 1-layer one, an epoch budget; `where` on parameters."""
    import h5py
    import numpy as np

    ids = np.random.default_rng(0).integers(0, 48, size=(100, 64), dtype=np.int64)
    for name, rows in (("train.h5", ids), ("val.h5", ids[:10])):
        with h5py.File(tmp_path / name, "w") as f:
            f["input_ids"] = rows
    return {"study": "s000", "data": {"corpus": "prost"},
            "corpora": {"prost": {"source": "hdf5", "train": "train.h5", "val": "val.h5",
                                  "dataset": "input_ids", "vocab_size": 48}},
            "tokenizer": {"kind": "byte"},
            "defaults": {"model": {"ffn": "swiglu", "norm": "rms", "pos_emb": "rope",
                                   "vocab_multiple": 1},
                         "train": {"batch_size": 32, "seq_len": 256, **train}},
            "sweep": {"grid": {"model.n_heads": [16], "model.d_model": [1024],
                               "model.d_ff": [2048], "model.n_layers": [28, 1]},
                      "where": "params_total >= 1e6 and params_non_embedding < 3e8"}}


def test_plan_counts_the_hdf5_vocabulary_and_epoch_tokens(tmp_path):
    path = write_yaml(tmp_path / "s000.yaml", _hdf5_study(tmp_path, epochs=10))
    study = read_study(path)
    assert len(study.runs) == 2  # `where` sees the parameter counts
    rows = plan_table(study, results_root=tmp_path / "results")
    largest = next(r for r in rows if "n_layers=28" in r["run_id"])
    assert largest["params"] == 293_708_800  # seed 000: "Largest parameter count was 293708800"
    # 10 epochs of 100 rows x 64 ids, rounded up to whole steps of 32 x 256 tokens
    assert largest["tokens"] == math.ceil(10 * 6400 / 8192) * 8192
    assert largest["flops"] > 0
    doc = _hdf5_study(tmp_path, epochs=10)
    doc["sweep"]["where"] = "params_total < 1e6"
    with pytest.raises(ConfigError, match=r"sweep: `where` 'params_total < 1e6' removes all 2"):
        study_from_dict(doc, source=str(path))


def test_plan_totals_follow_stop_tokens_and_both_phases(tiny_study, tmp_path):
    tiny_study["sweep"] = {"grid": {"train.lr": [1e-4, 1e-3, 3e-3]}, "seeds": [0]}
    tiny_study["defaults"]["train"]["stop_tokens"] = 4000  # 16 steps of 256 tokens: 4,096
    rows = plan_table(study_from_dict(tiny_study), results_root=tmp_path)
    assert [r["tokens"] for r in rows] == [4096] * 3
    del tiny_study["defaults"]["train"]["stop_tokens"]
    tiny_study["ranking"] = {"tokens": 2048, "top_k": 1, "resume": "continue"}
    study = study_from_dict(tiny_study)
    rows = plan_table(study, results_root=tmp_path)
    assert [(r["phase"], r["tokens"]) for r in rows] == [(1, 2048)] * 3 + [(2, 8192 - 2048)] * 3
    totals = plan_totals(rows, ranking_of(study).phase2_at_most())
    assert totals["runs"] == 4 and totals["tokens"] == 3 * 2048 + 6144


# --------------------------------------------------------------------------------------------------
# findings that would mislead: two changes at once, a change of model size


def test_findings_name_confounded_variants_and_size_changes():
    doc = {"sweep": {"variants": {
        "baseline": {}, "nope": {"model.pos_emb": "none"},
        "nope_fast": {"model": {"pos_emb": "none"}, "train.lr": 3e-3},
        "silu": {"model.ffn": "silu"}, "wide": {"model.d_model": 64}}}}
    settings = written_settings(doc)
    assert settings["nope_fast"] == ["model.pos_emb", "train.lr"]
    assert settings["baseline"] == []
    data = []
    for variant, (pos, lr, ffn, d_model, d_ff, params) in {
            "baseline": ("rope", 1e-3, "swiglu", 48, 128, 17.6e6),
            "nope": ("none", 1e-3, "swiglu", 48, 128, 17.6e6),
            "nope_fast": ("none", 3e-3, "swiglu", 48, 128, 17.6e6),
            "silu": ("rope", 1e-3, "silu", 48, 128, 14.85e6),  # d_ff fixed by a preset
            "wide": ("rope", 1e-3, "swiglu", 64, 176, 17.7e6)}.items():  # d_ff follows d_model
        for seed in (0, 1):
            data.append(RunData({"run_id": f"{variant}-s{seed}", "variant": variant,
                                 "seed": seed, "status": "completed",
                                 "val_loss": 3.0 + 0.01 * seed, "params_total": params,
                                 "model.pos_emb": pos, "train.lr": lr, "model.ffn": ffn,
                                 "model.d_model": d_model, "model.d_ff": d_ff}))
    runs, curves, _ = tables(data)
    summary = summarize_runs(runs, curves, "baseline", settings=settings)
    assert summary["confounds"] == {"nope_fast": {"model.pos_emb": "none", "train.lr": 3e-3}}
    assert summary["size_changes"] == {"silu": {"params_total": 14.85e6,
                                                "change": pytest.approx(14.85 / 17.6 - 1)}}
    text = "\n".join(summary["findings"])
    assert ("Confounded: nope_fast differs from baseline in 2 settings at once (pos_emb=none, "
            "lr=0.003): its difference cannot be credited to any one of them alone.") in text
    assert ("Not the same size: against baseline's 17.6M parameters, silu has 14.8M (-15.6%). "
            "Their loss differences are partly differences in model size.") in text
