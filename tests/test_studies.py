"""The example studies in studies/ (one per seed): what they expand to at full and smoke scale,
and (workflow, slow) each smoke scale run through real snakemake."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, planned, snakemake

from lmablate import accounting
from lmablate.solve import model_vocab
from lmablate.phases import ranking_of, select
from lmablate.study import read_study

STUDIES = REPO / "studies"
# study -> (runs at full scale, runs at smoke scale)
COUNTS = {
    "shape_sweep": (1152, 4),
    "cs336_ablations": (8, 6),
    "quick_ablations": (6, 6),
    "param_allocation": (6, 3),  # two one-axis sweeps sharing their centre
    "moe": (7, 6),
}


def load(name: str, scale: str):
    return read_study(STUDIES / f"{name}.yaml", {"scale": scale})


def test_every_study_file_is_covered():
    assert {p.stem for p in STUDIES.glob("*.yaml")} == set(COUNTS)


@pytest.mark.parametrize("scale", ["full", "smoke"])
@pytest.mark.parametrize("name", list(COUNTS))
def test_run_counts(name, scale):
    s = load(name, scale)
    assert len(s.runs) == COUNTS[name][scale == "smoke"]
    assert len(s.by_id) == len(s.runs)
    if scale == "smoke":
        assert {r.config.data.corpus for r in s.runs} == {"tinystories-1k"}  # shipped, offline
        assert max(r.config.train.tokens for r in s.runs) <= 25_000


def test_shape_sweep_keeps_the_seeds_training_settings():
    runs = load("shape_sweep", "full").runs
    assert {(r.config.train.lr, r.config.train.warmup, r.config.train.batch_size)
            for r in runs} == {(8e-4, 0.05, 32)}
    assert Counter(r.config.model.n_heads for r in runs) == {h: 192 for h in range(6, 17, 2)}


@pytest.mark.parametrize("scale", ["full", "smoke"])
def test_cs336_no_layer_norm_has_its_own_lr_sweep(scale):
    runs = load("cs336_ablations", scale).runs
    lrs = sorted(r.config.train.lr for r in runs if r.variant == "no_layer_norm")
    assert lrs == ([2e-5, 5e-5, 1e-4, 3e-4] if scale == "full" else [1e-3, 3e-3])
    assert all(r.config.model.norm == "none" for r in runs if r.variant == "no_layer_norm")
    silu = next(r for r in runs if r.variant == "silu_ffn").config.model
    assert silu.ffn == "silu" and silu.d_ff == 4 * silu.d_model
    assert len({r.config.train.tokens for r in runs}) == 1


@pytest.mark.parametrize("scale", ["full", "smoke"])
def test_quick_ablations_train_every_config_on_the_same_tokens(scale):
    runs = load("quick_ablations", scale).runs
    assert {r.variant for r in runs} == {"baseline", "high_lr", "low_lr", "large_batch",
                                         "short_seq", "small_model"}
    trained = set()
    for r in runs:
        t = r.config.train
        per_step = t.batch_size * t.seq_len
        assert t.tokens % per_step == 0, r.variant  # no partial extra step for anyone
        trained.add(t.tokens)
    assert len(trained) == 1
    small = next(r for r in runs if r.variant == "small_model").config.model
    base = next(r for r in runs if r.variant == "baseline").config.model
    assert (small.d_model, small.n_heads, small.n_layers) == (
        base.d_model * 2 // 3, base.n_heads * 2 // 3, base.n_layers * 2 // 3)
    if scale == "full":
        assert (small.d_model, small.n_heads, small.n_layers) == (256, 4, 8)


@pytest.mark.parametrize("scale, target", [("full", 10_000_000), ("smoke", 400_000)])
def test_param_allocation_models_hit_the_target(scale, target):
    runs = load("param_allocation", scale).runs
    for r in runs:
        m = r.config.model
        vocab = model_vocab(m, r.config.tokenizer)
        counts = accounting.param_counts(m, vocab, r.config.train.seq_len)
        assert abs(counts["total"] - target) <= 0.005 * target, r.run_id
        assert abs(counts["embedding_share"] - m.embedding_share) <= 0.02, r.run_id
    if scale == "full":  # seed 003's 3 + 4 points, one axis at a time; the centre is shared
        assert {(r.config.model.embedding_share, r.config.model.glu_expansion) for r in runs} == {
            *((s, 2.66) for s in (0.25, 0.35, 0.45)), *((0.35, g) for g in (2.0, 3.0, 4.0))}
        assert {r.config.tokenizer.vocab_size for r in runs} == {16000}
        assert {r.config.data.corpus for r in runs} == {"wikitext-2-raw"}


def test_moe_series_match_the_seed():
    runs = {r.run_id.rsplit("-", 2)[0]: r.config for r in load("moe", "full").runs}
    a = [c for k, c in runs.items() if k.startswith("series_a")]
    assert sorted((c.train.seq_len, c.train.batch_size) for c in a) == [
        (512, 128), (768, 42), (1024, 31)]
    assert {(c.model.d_model, c.model.n_heads, c.model.num_experts, c.model.expert_d_ff)
            for c in a} == {(384, 6, 64, 1024)}
    b = sorted((c.model.d_model, c.model.n_layers) for k, c in runs.items()
               if k.startswith("series_b"))
    c_ = sorted((c.model.d_model, c.model.n_layers) for k, c in runs.items()
                if k.startswith("series_c"))
    assert b == [(384, 8), (384, 10)] and c_ == [(512, 8), (768, 8)]
    for cfg in runs.values():
        m = cfg.model
        assert (m.top_k, m.moe_init, m.freeze_experts, cfg.train.epochs) == (4, "sparse", True, 4)
    a1 = next(c for c in a if c.train.seq_len == 512).model
    counts = accounting.param_counts(a1, 8192, 512)
    assert 300e6 < counts["total"] < 320e6  # seed: "Total Parameters: 313.27M"
    assert counts["trainable"] < 0.05 * counts["total"]  # seed: 10.74M trainable (3.4%)


# --------------------------------------------------------------------------------------------------
# each smoke scale through snakemake, as a user runs it


def run_smoke(tmp_path: Path, name: str, *args: str):
    return snakemake(tmp_path, "--configfile", str(STUDIES / f"{name}.yaml"), "--config",
                     "scale=smoke", *args, configfile=None)


@pytest.mark.workflow
@pytest.mark.slow
@pytest.mark.parametrize("name", list(COUNTS))
def test_smoke_study_runs_through_snakemake(tmp_path, name):
    run_smoke(tmp_path, name, "-c2")
    s = load(name, "smoke")
    res = tmp_path / "results" / s.name
    table = pd.read_csv(res / "runs.csv")
    assert set(table.status) == {"completed"}
    ranking = ranking_of(s)
    if ranking is None:
        assert sorted(table.run_id) == sorted(s.by_id)
        trained = list(s.by_id)
    else:  # two phases: every run trained short, the top_k (of those that completed) long
        phase1 = pd.read_csv(res / "phase1" / "runs.csv")
        assert sorted(phase1.run_id) == sorted(ranking.phase1)
        selected = json.loads((res / "phase1" / "selected.json").read_text())["selected"]
        assert sorted(table.run_id) == sorted(selected)
        assert selected == select(ranking, phase1)["selected"]  # top_k (per group) of phase 1
        trained = [*ranking.phase1, *selected]
    for run_id in trained:
        assert (res / "runs" / run_id / "final.json").is_file()
    rules, _ = planned(tmp_path, "--configfile", str(STUDIES / f"{name}.yaml"), "--config",
                       "scale=smoke", configfile=None)
    assert not rules, rules  # nothing left to do

    if name == "shape_sweep":  # changing one grid value plans only the runs it touches
        change = 'overrides={sweep.grid.model.d_ff: "[d_model, 3 * d_model]"}'
        rules, run_ids = planned(tmp_path, "--configfile", str(STUDIES / f"{name}.yaml"),
                                 "--config", "scale=smoke", change, configfile=None)
        assert dict(rules) == {"train_model": 2, "harvest_metrics": 1, "plot_study": 1,
                               "write_results_page": 1}
        assert {r.rsplit("-", 4)[0] for r in run_ids} == {"d_ff=48-d_model=16",
                                                         "d_ff=96-d_model=32"}
