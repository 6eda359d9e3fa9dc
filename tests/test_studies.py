"""The example studies in studies/ (one per seed): what they expand to at full and smoke scale,
and (workflow, slow) each smoke scale run through real snakemake, answering its seed's question
with a named figure and a sentence of RESULTS.md."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, planned, snakemake

from lmablate.figures.registry import figure_summary
from lmablate.results.collect import RunData, tables
from lmablate.results.selection import select, selection_finding
from lmablate.results.summary import summarize_runs
from lmablate.study import accounting
from lmablate.study.load import read_study
from lmablate.study.phases import ranking_of
from lmablate.study.solve import model_vocab

STUDIES = REPO / "studies"
# study -> (runs at full scale, runs at smoke scale)
COUNTS = {
    "shape_sweep": (1152, 12),
    "cs336_ablations": (8, 7),
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
    # smoke: a 2-layer model trains without a norm at the baseline's 3e-3, so 0.1 is the LR that
    # diverges there, as 3e-4 does at full scale
    assert lrs == ([2e-5, 5e-5, 1e-4, 3e-4] if scale == "full" else [1e-3, 3e-3, 0.1])
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
    diverged = {r.run_id for r in s.runs if r.variant == "no_layer_norm"
                and r.config.train.lr == 0.1}  # seed 001's no-norm run at too high an LR
    assert set(table.run_id[table.status == "diverged"]) == diverged
    assert set(table.status) == {"completed"} | ({"diverged"} if diverged else set())
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
    check_seed_answer(res, name)

    if name == "shape_sweep":  # changing one grid value plans only the runs it touches
        change = 'overrides={sweep.grid.model.d_ff: "[d_model, 3 * d_model]"}'
        rules, run_ids = planned(tmp_path, "--configfile", str(STUDIES / f"{name}.yaml"),
                                 "--config", "scale=smoke", change, configfile=None)
        # the 2 * d_model shapes: 2 widths x 2 depths of 2 heads, 2 depths of 4 heads
        assert dict(rules) == {"train_model": 6, "harvest_metrics": 1, "plot_study": 1,
                               "write_results_page": 1}
        assert {r.rsplit("-", 4)[0] for r in run_ids} == {"d_ff=48-d_model=16",
                                                         "d_ff=96-d_model=32"}


# --------------------------------------------------------------------------------------------------
# each seed's question, answered by its smoke run: a named figure of the right kind, a sentence
#
#   000 which shape is best at a parameter count (best per size 5M/10M/15M/25M/50M; more layers
#       than heads performed best)
#   001 each ablation's learning curve against the baseline; the no-norm LR sweep where the
#       baseline's LR diverges and a lower one trains
#   002 which configuration wins at an equal token budget; loss per token (data efficiency)
#   003 PPL against embedding share and GLU expansion; the Pareto-efficient configuration;
#       top-1 per axis in phase 1
#   004 how context length, depth and width change val loss/PPL and the Gini coefficient and
#       entropy of the expert load

NUM = r"[0-9.e+-]+"
CS336_GROUPS = ["post_norm", "no_position_emb", "silu_ffn", "no_layer_norm, lr=0.003",
                "no_layer_norm, lr=0.001"]
QUICK_GROUPS = ["baseline", "high_lr", "low_lr", "large_batch", "short_seq", "small_model"]
MOE_GROUPS = ["series_a, batch_size=16, seq_len=32", "series_a, batch_size=8, seq_len=64",
              "series_b, n_layers=3", "series_b, n_layers=4", "series_c, d_model=48",
              "series_c, d_model=64"]
# study -> ({figure path under results/<study>/, without .png: kind}, [RESULTS.md patterns]);
# a figure's kind is the one its RESULTS.md section (beside it) describes
SEED_ANSWERS = {
    "shape_sweep": ({"plots/best_per_size": "best_per_size",
                     "plots/loss_vs_axis": "metric_vs_axis", "plots/heatmap": "heatmap"}, [
        # the best shape of each size bucket, among the shapes of that size
        rf"Best group per parameter bucket: 10k-25k: d_ff=\d+, d_model=16, n_heads=2, "
        rf"n_layers=\d \({NUM}k params, {NUM}, best of 4\); 25k-50k: .+ \(45.3k params, {NUM}, "
        rf"best of 1\); 50k-100k: .+ \({NUM}k params, {NUM}, best of 7\)\.",
        # more layers per head, a wider FFN per hidden unit: does the best of a size have them?
        r"Shape at equal size, .*: the best configuration of a bucket has the highest "
        r"d_ff/d_model of its bucket in \d of 2 buckets \(the lowest in \d\); the highest "
        r"n_layers/n_heads of its bucket in \d of 2 buckets",
    ]),
    "cs336_ablations": ({"plots/loss_curves": "loss_curves",
                         "plots/lr_sensitivity": "lr_sensitivity"}, [
        # every ablation against the baseline, with its difference
        *(rf"\| {re.escape(g)} \| 1 \| {NUM} \| \(one seed\) \| {NUM} \| [+-]{NUM} \("
          for g in CS336_GROUPS),
        r"\| baseline \| 1 \| [0-9.]+ \| \(one seed\) \| [0-9.]+ \| \(reference\) \|",
        # the no-norm LR sweep: the best LR that trains, the one that diverged
        rf"Learning rate: of 1 configuration run at two or more LRs, the lowest mean val loss "
        rf"is at lr = {NUM} for 1 \(no_layer_norm\)\. Did not complete at lr = 0\.1\.",
        r"1 run did not complete and is left out of the statistics: no_layer_norm, "
        r"lr=0\.1: 1 diverged\.",
    ]),
    "quick_ablations": ({"plots/final_val_loss": "final_metric",
                         "plots/loss_curves": "loss_curves"}, [
        rf"Best group: ({'|'.join(QUICK_GROUPS)}) \(mean val loss {NUM}, n=1\)",
        # equal budgets: every configuration over the same 18,432 tokens, its loss per token
        *(rf"[:;] {g} {NUM} nats/M tokens over 18\.4k tokens, loss/token efficiency {NUM}"
          for g in QUICK_GROUPS),
    ]),
    "param_allocation": ({"phase1/plots/loss_vs_axis": "metric_vs_axis",
                          "phase1/plots/pareto": "pareto"}, [
        # phase 1: PPL of every point of both axes, and the top-1 per axis going on
        *(rf"\| {re.escape(g)} \| 1 \| {NUM} \| \(one seed\) \| {NUM} \|"
          for g in ["embedding, embedding_share=0.25", "embedding, embedding_share=0.35",
                    "glu, glu_expansion=2", "glu, glu_expansion=2.66"]),
        rf"## Selected for phase 2\n\n- Phase 2 trains [12] configurations?, the top 1 per "
        rf"variant by phase-1 val_loss: embedding: embedding, embedding_share=0\.(25|35) "
        rf"\(val_loss {NUM}\); glu: glu, glu_expansion=2(\.66)? \(val_loss {NUM}\)",
    ]),
    "moe": ({"plots/loss_vs_axis": "metric_vs_axis", "plots/moe_load": "moe_load"}, [
        *(rf"\| {re.escape(g)} \| 1 \| {NUM} \| \(one seed\) \| {NUM} \|"
          for g in MOE_GROUPS),
        *(rf"Expert load of {re.escape(g)} \(one seed, [48] experts\): the Gini coefficient "
          rf"started at {NUM} and finished at {NUM} .*; the Shannon entropy started at {NUM} and "
          rf"finished at {NUM} bits" for g in MOE_GROUPS),
    ]),
}


def check_seed_answer(res: Path, name: str) -> None:
    """The figures that answer the seed's question exist with their kind, and RESULTS.md (phase
    1's, for a two-phase study's phase-1 figures and selection) states the answer."""
    import matplotlib.image

    figures, patterns = SEED_ANSWERS[name]
    texts = {folder: (res / folder / "RESULTS.md").read_text()
             for folder in {".", *(f.split("/")[0] for f in figures if f.startswith("phase1/"))}}
    for figure, kind in figures.items():
        png = res / f"{figure}.png"
        assert matplotlib.image.imread(png).shape[1] > 600, png  # a real figure, not a stub
        folder, stem = ("phase1", figure.split("/")[-1]) if figure.startswith("phase1/") else \
            (".", figure.split("/")[-1])
        assert f"### {stem}\n\n{figure_summary({'kind': kind})}" in texts[folder], figure
    text = "\n".join(texts.values())
    for pattern in patterns:
        assert re.search(pattern, text), pattern


def test_shape_at_equal_size_is_stated():
    """Seed 000's "more layers compared to attention heads": per parameter bucket with a choice,
    whether the best configuration has the bucket's highest or lowest ratio."""
    shapes = [  # (heads, layers, d_model, d_ff, params, val loss)
        (2, 4, 16, 32, 12e3, 5.0), (4, 4, 16, 32, 12e3, 5.1),  # 10k-25k: more layers per head
        (2, 4, 32, 64, 40e3, 4.8),  # 25k-50k: no choice
        (2, 6, 32, 32, 60e3, 4.6), (4, 6, 32, 64, 61e3, 4.7)]  # 50k-100k: also a narrower FFN
    data = []
    for i, (h, n, d, f, p, loss) in enumerate(shapes):
        axes = {"model.n_heads": h, "model.n_layers": n, "model.d_model": d, "model.d_ff": f}
        data.append(RunData({"run_id": f"r{i}", "variant": "baseline", "seed": 0,
                             "status": "completed", "val_loss": loss, "params_total": p, **axes,
                             **{f"axis.{k}": v for k, v in axes.items()}}))
    runs, curves, _ = tables(data)
    findings = summarize_runs(runs, curves, "baseline")["findings"]
    assert ("Shape at equal size, over the parameter buckets whose configurations differ in it: "
            "the best configuration of a bucket has the highest d_ff/d_model of its bucket in 0 "
            "of 1 bucket (the lowest in 1); the highest n_layers/n_heads of its bucket in 2 of 2 "
            "buckets (the lowest in 0).") in findings  # d_model/n_layers never differs in one


def test_phase1_selection_is_stated_per_axis():
    """Seed 003's top-1 per axis as one sentence: each axis with its pick and phase-1 loss."""
    ranking = ranking_of(load("param_allocation", "full"))
    loss = {"embedding_share=0.25": 3.0, "embedding_share=0.35": 3.3,
            "embedding_share=0.45": 3.1, "glu_expansion=2-": 3.6, "glu_expansion=3-": 3.5,
            "glu_expansion=4-": 3.4}
    data = []
    for run_id, run in ranking.phase1.items():
        data.append(RunData({"run_id": run_id, "variant": run.variant, "seed": 0,
                             "status": "completed",
                             "val_loss": next(v for k, v in loss.items() if k in run_id),
                             **{f"axis.{k}": v for k, v in run.axes.items()}}))
    runs, _, _ = tables(data, ranking.selection()["shared"])
    chosen = select(ranking, runs)
    assert selection_finding(runs, chosen) == (
        "Phase 2 trains 2 configurations, the top 1 per variant by phase-1 val_loss: "
        "embedding: embedding, embedding_share=0.25 (val_loss 3.0000); glu: glu, "
        "glu_expansion=2.66 (val_loss 3.3000).")
