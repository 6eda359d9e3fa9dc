"""Harvest: hand-made runs with known values -> tables, statistics, ranking, findings, plan.

Run directories are written here in the formats train.py writes (config.yaml, final.json,
metrics.jsonl), with values chosen so every expected number can be worked out by hand.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import write_run

from lmablate import study_from_dict
from lmablate.errors import ConfigError, DataError
from lmablate.figures.plan import figure_lines, plan_figures, planned_rows
from lmablate.results.collect import collect
from lmablate.results.harvest import harvest, load_results
from lmablate.results.summary import reference_group
from lmablate.results.shape import size_levels, spans_sizes

T975_DF2 = 4.302652729749462  # scipy.stats.t.ppf(0.975, 2)


@pytest.fixture
def ablation(tmp_path: Path) -> list[Path]:
    """baseline 1.0/1.1/1.2, wider 1.3/1.5/1.4 (same seeds), unstable: one diverged seed."""
    root = tmp_path / "runs"
    dirs = [write_run(root, f"baseline-s{s}", seed=s, val_loss=v)
            for s, v in enumerate([1.0, 1.1, 1.2])]
    dirs += [write_run(root, f"wider-s{s}", variant="wider", seed=s, val_loss=v,
                       diff={"model.d_model": 64})
             for s, v in enumerate([1.3, 1.5, 1.4])]
    dirs += [write_run(root, "unstable-s0", variant="unstable", seed=0, val_loss=0.9,
                       diff={"train.lr": 1.0}, lr=1.0),
             write_run(root, "unstable-s1", variant="unstable", seed=1, status="diverged",
                       val_loss=None, diff={"train.lr": 1.0}, lr=1.0)]
    return dirs


def test_tables_have_one_row_per_run_and_long_curves(ablation, tmp_path):
    runs, curves, rel = collect(ablation)
    assert list(runs.run_id) == [d.name for d in ablation]
    assert list(runs.columns[:5]) == ["run_id", "group", "variant", "seed", "status"]
    assert {"model.d_model", "train.lr", "params_total", "val_loss"} <= set(runs.columns)
    assert list(curves.columns) == ["run_id", "variant", "group", "seed", "step", "tokens",
                                    "split", "metric", "value"]
    base = curves[(curves.run_id == "baseline-s1") & (curves.split == "val")
                  & (curves.metric == "loss")]
    assert base.value.tolist() == pytest.approx([2.6, 2.1, 1.6, 1.1])
    assert base.tokens.tolist() == [1024, 2048, 3072, 4096]
    # reliability bins of the 7 completed runs (the diverged one has none)
    assert len(rel) == 7 * 3 and set(rel.columns) >= {"bin", "confidence", "accuracy", "count"}


def test_statistics_deltas_and_ranking_by_hand(ablation, tmp_path):
    s = harvest(ablation, tmp_path / "out", study="hand")
    half = T975_DF2 * 0.1 / math.sqrt(3)
    base = s["groups"]["baseline"]["val_loss"]
    assert base["n"] == 3
    assert base["mean"] == pytest.approx(1.1)
    assert base["std"] == pytest.approx(0.1)
    assert (base["ci_low"], base["ci_high"]) == pytest.approx((1.1 - half, 1.1 + half))
    wider = s["groups"]["wider"]["val_loss"]
    assert (wider["mean"], wider["ci_low"], wider["ci_high"]) == pytest.approx(
        (1.4, 1.4 - half, 1.4 + half))
    # wider - baseline per seed: 0.3, 0.4, 0.2 -> paired t, mean 0.3, sd 0.1
    c = s["comparisons"]["wider"]["val_loss"]
    tstat = 0.3 / (0.1 / math.sqrt(3))
    assert c["test"] == "paired t"
    assert (c["delta"], c["ci_low"], c["ci_high"]) == pytest.approx((0.3, 0.3 - half, 0.3 + half))
    assert c["p_value"] == pytest.approx(1 - tstat / math.sqrt(tstat**2 + 2), rel=1e-9)
    # the unstable group keeps its one completed seed; the diverged one is listed apart
    assert s["groups"]["unstable"]["n"] == 1 and s["groups"]["unstable"]["n_excluded"] == 1
    assert s["comparisons"]["unstable"]["val_loss"]["test"] == "n/a"
    assert s["excluded_runs"]["unstable-s1"]["status"] == "diverged"
    assert s["excluded_runs"]["unstable-s1"]["diverged_at_step"] == 4
    assert s["ranking"] == ["unstable", "baseline", "wider"]
    assert s["reference"] == "baseline"
    # per-run statistics: best/final of the val curve and values at token marks
    st = s["runs"]["baseline-s2"]["statistics"]["val_loss"]
    assert (st["best"], st["final"], st["final_tokens"]) == pytest.approx((1.2, 1.2, 4096))
    assert st["at_tokens"] == pytest.approx({"1024": 2.7, "2048": 2.2, "3072": 1.7,
                                             "4096": 1.2})


def test_text_outputs_state_the_numbers(ablation, tmp_path):
    out = tmp_path / "out"
    harvest(ablation, out, study="hand", figures=lambda rows: figure_lines(plan_figures(rows)))
    text = (out / "analysis.txt").read_text()
    rows = [ln.split() for ln in text.splitlines() if ln.strip().startswith(("1 ", "2 ", "3 "))]
    assert [r[1] for r in rows] == ["unstable", "baseline", "wider"]
    assert "+0.3000 (+27.3%)" in text and "paired t" in text
    assert "unstable-s1 (unstable, seed 1): diverged at step 4" in text
    assert "1+1x" in text  # one seed used, one excluded
    md = (out / "RESULTS.md").read_text()
    assert "| 3 | wider | 3 | 1.4000 |" in md
    assert "![loss_curves](plots/loss_curves.png)" in md
    assert "1 run did not complete and is left out of the statistics" in md
    for name in ("runs.parquet", "runs.csv", "curves.parquet", "reliability.parquet",
                 "summary.json"):
        assert (out / name).is_file()
    runs, curves = load_results(out)
    assert len(runs) == 8 and len(curves) > 0


def test_holm_adjusts_across_groups(tmp_path):
    root = tmp_path / "runs"
    dirs = [write_run(root, f"b-s{s}", seed=s, val_loss=v) for s, v in enumerate([1.0, 1.1, 1.2])]
    for name, shift in (("x", 0.3), ("y", 0.31)):
        dirs += [write_run(root, f"{name}-s{s}", variant=name, seed=s, val_loss=v + shift + d,
                           diff={"model.d_ff": 1})
                 for s, (v, d) in enumerate(zip([1.0, 1.1, 1.2], [0.0, 0.1, -0.1]))]
    s = harvest(dirs, tmp_path / "out", study="h")
    ps = {k: c["val_loss"]["p_value"] for k, c in s["comparisons"].items()}
    holm = {k: c["val_loss"]["p_holm"] for k, c in s["comparisons"].items()}
    lo, hi = sorted(ps, key=ps.get)
    assert holm[lo] == pytest.approx(2 * ps[lo])
    assert holm[hi] == pytest.approx(max(2 * ps[lo], ps[hi]))


def test_grid_reference_is_the_defaults_and_sizes_give_findings(tmp_path):
    root = tmp_path / "runs"
    dirs = []
    for d_model, params, loss in ((32, 1_000, 3.0), (64, 4_000, 2.5), (128, 16_000, 2.2),
                                  (256, 64_000, 2.1)):
        for seed in (0, 1):
            diff = {} if d_model == 64 else {"model.d_model": d_model}
            dirs.append(write_run(root, f"d{d_model}-s{seed}", seed=seed,
                                  val_loss=loss + 0.01 * seed, params=params,
                                  model={"d_model": d_model},
                                  axes={"model.d_model": d_model}, diff=diff))
    s = harvest(dirs, tmp_path / "out", study="grid")
    assert s["reference"] == "d_model=64" and s["reference_is"] == "the study defaults"
    assert s["params"]["spearman_rho"] == pytest.approx(-1.0)
    assert [b["group"] for b in s["params"]["best_per_bucket"]] == [
        "d_model=32", "d_model=64", "d_model=128", "d_model=256"]
    assert s["params"]["pareto_front"] == ["d_model=32", "d_model=64", "d_model=128",
                                           "d_model=256"]
    assert s["scaling"]["sizes"] == 4 and "alpha" in s["scaling"]["law_n"]["params"]


def test_unfinished_imported_runs_are_ranked_at_common_progress(tmp_path):
    root = tmp_path / "runs"
    a = write_run(root, "a", val_loss=1.0, evals=4, tokens=4096)
    b = write_run(root, "b", variant="b", val_loss=1.5, evals=2, tokens=2048)
    s = harvest([a, b], tmp_path / "out", study="p")
    prog = s["progress"]
    assert prog["at"] == 2048
    # at 2048 tokens run a's val loss is 1.0 + 2 * 0.5 = 2.0, run b's is its final 1.5
    assert [(e["group"], e["mean"]) for e in prog["ranking"]] == [("b", 1.5), ("baseline", 2.0)]


def test_missing_files_are_one_line_errors(tmp_path):
    d = write_run(tmp_path, "r")
    (d / "final.json").unlink()
    with pytest.raises(DataError, match=r"r/final.json: missing"):
        collect([d])
    with pytest.raises(DataError, match="config.yaml: missing"):
        collect([tmp_path / "nope"])


# --------------------------------------------------------------------------------------------------
# which figures a study gets


def _study(sweep: dict, model: dict | None = None) -> dict:
    return {"study": "s", "data": {"corpus": "tinystories-1k"},
            "defaults": {"model": {"d_model": 64, "n_layers": 2, "n_heads": 4, **(model or {})},
                         "train": {"tokens": 8192, "batch_size": 8, "seq_len": 32}},
            "sweep": sweep}


@pytest.mark.parametrize("sweep, model, expected", [
    pytest.param({"variants": {"baseline": {}, "post": {"model.norm_position": "post"}}}, None,
                 {"loss_curves", "final_val_loss", "final_val_ppl", "efficiency",
                  "calibration"}, id="ablation"),
    pytest.param({"grid": {"model.d_model": [32, 64, 128], "model.n_layers": [1, 2]}}, None,
                 {"loss_curves", "final_val_loss", "final_val_ppl", "efficiency",
                  "calibration", "params_vs_loss", "scaling_law", "heatmap", "loss_vs_axis",
                  "pareto", "best_per_size"}, id="size-grid"),
    pytest.param({"variants": {"emb": {"grid": {"model.embedding_share": [0.25, 0.35, 0.45]}},
                               "glu": {"grid": {"model.glu_expansion": [2.0, 2.66]}}}},
                 {"params_target": "400k", "embedding_share": 0.35, "glu_expansion": 2.66,
                  "n_heads": 2},
                 {"loss_curves", "final_val_loss", "final_val_ppl", "efficiency",
                  "calibration", "loss_vs_axis", "pareto"}, id="one-axis-sweeps"),
    pytest.param({"grid": {"train.lr": [1e-3, 3e-3]}}, None,
                 {"loss_curves", "final_val_loss", "final_val_ppl", "efficiency",
                  "calibration", "lr_sensitivity"}, id="lr-sweep"),
    pytest.param({"variants": {"baseline": {},
                               "large_batch": {"train.batch_size": 16, "train.lr": 5e-4}}}, None,
                 {"loss_curves", "final_val_loss", "final_val_ppl", "efficiency",
                  "calibration"}, id="lr-changes-with-another-setting"),
    pytest.param({"variants": {"dense": {}, "moe": {"model.num_experts": 4}}}, None,
                 {"loss_curves", "final_val_loss", "final_val_ppl", "efficiency",
                  "calibration", "moe_load"}, id="moe"),
])
def test_figures_follow_the_study_axes(sweep, model, expected):
    study = study_from_dict(_study(sweep, model))
    assert set(plan_figures(planned_rows(study))) == expected


def test_parse_time_and_harvest_time_plans_agree(tmp_path):
    """The Snakefile's list (from the study) equals the one harvest makes (from config.yaml)."""
    study = study_from_dict(_study({"grid": {"model.d_model": [32, 64, 128],
                                             "train.lr": [1e-3, 3e-3]}}))
    dirs = []
    for r in study.runs:
        d = tmp_path / r.run_id
        d.mkdir()
        cfg = {**r.to_dict(), "study": "s"}
        (d / "config.yaml").write_text(yaml.safe_dump(cfg))
        (d / "final.json").write_text(json.dumps({"status": "completed", "val_loss": 1.0}))
    runs, _, _ = collect(dirs or [tmp_path / r.run_id for r in study.runs])
    assert plan_figures(runs.to_dict("records")) == plan_figures(planned_rows(study))


def test_study_can_pick_and_name_figures():
    rows = planned_rows(study_from_dict(_study({"grid": {"train.lr": [1e-3, 3e-3]}})))
    assert list(plan_figures(rows, ["final_val_loss"])) == ["final_val_loss"]
    plan = plan_figures(rows, {"curves_log": {"kind": "loss_curves", "log_x": True}})
    assert plan == {"curves_log": {"kind": "loss_curves", "log_x": True}}
    with pytest.raises(ConfigError, match="figures.x.kind: unknown figure kind 'bars'"):
        plan_figures(rows, {"x": "bars"})
    with pytest.raises(ConfigError, match="figures: unknown figure 'nope'"):
        plan_figures(rows, ["nope"])


def test_size_levels_ignore_ablations_of_a_few_percent():
    assert size_levels([100, 103, 98, 250, 260, 1000]) == [98, 250, 1000]
    assert not spans_sizes([100, 101, 102])
    assert spans_sizes([100, 150, 300])


def test_reference_falls_back_to_the_best_group():
    runs = pd.DataFrame({"run_id": ["a", "b"], "group": ["x=1", "x=2"], "variant": ["baseline"] * 2,
                         "status": ["completed"] * 2, "differs": ["x=1", "x=2"],
                         "val_loss": [2.0, 1.0], "seed": [0, 0]})
    assert reference_group(runs) == ("x=2", "the best group by mean val_loss (no single "
                                             "baseline group)")


def test_a_shared_centre_puts_both_one_axis_sweeps_on_the_figure():
    """emb 0.25/0.35 and glu 2.0/2.66 around the centre (0.35, 2.66), one run: planned rows
    hold the centre once per sweep point, so the GLU axis has its two values, as harvested rows
    expanded by their memberships do."""
    from lmablate.figures.axes import figure_axes
    from lmablate.figures.plan import _point_rows
    from lmablate.results.collect import shared_points

    study = study_from_dict(_study(
        {"variants": {"emb": {"grid": {"model.embedding_share": [0.25, 0.35]}},
                      "glu": {"grid": {"model.glu_expansion": [2.0, 2.66]}}}},
        {"params_target": "400k", "embedding_share": 0.35, "glu_expansion": 2.66, "n_heads": 2}))
    assert len(study.runs) == 3 and len(planned_rows(study)) == 4
    assert set(figure_axes(planned_rows(study))) == {"axis.model.embedding_share",
                                                     "axis.model.glu_expansion"}
    shared = shared_points(study.runs)
    rows = [{"run_id": r.run_id, "variant": r.variant,
             **{f"axis.{k}": v for k, v in r.axes.items()},
             "memberships": json.dumps([{"group": "g", "variant": v, "axes": a}
                                        for v, a in [(r.variant, r.axes), *shared[r.run_id]]])
             if r.run_id in shared else None} for r in study.runs]
    assert set(figure_axes(_point_rows(rows))) == {"axis.model.embedding_share",
                                                   "axis.model.glu_expansion"}


def test_train_split_curves_are_not_called_validation_loss():
    from lmablate.figures.registry import caption_text, figure_caption, figure_summary

    assert figure_summary({"kind": "loss_curves", "split": "train"}).startswith("Training loss")
    assert figure_summary({"kind": "loss_curves"}).startswith("Validation loss")
    assert caption_text(figure_caption({"kind": "loss_curves", "split": "train"})).startswith(
        "Training loss")


def _train_curve(run_dir: Path, points: list[tuple[int, float]]) -> None:
    """Replace a hand-made run's training-loss records by ``points`` (tokens, loss)."""
    path = run_dir / "metrics.jsonl"
    kept = [r for r in map(json.loads, path.read_text().splitlines()) if r["split"] != "train"]
    train = [{"step": i + 1, "tokens": t, "split": "train", "loss": v}
             for i, (t, v) in enumerate(points)]
    path.write_text("".join(json.dumps(r) + "\n" for r in train + kept))


def test_efficiency_and_convergence_by_hand(tmp_path):
    """1M tokens; training loss 8.0 at 100k, 5.0 at 250k (end of the early quarter), 3.5 at
    750k (start of the late quarter), 3.0 at 1M: drop 5 nats over 0.9M tokens, 3 over the
    early 0.15M, 0.5 over the late 0.25M."""
    root = tmp_path / "runs"
    curve = [(100_000, 8.0), (250_000, 5.0), (500_000, 4.0), (750_000, 3.5), (1_000_000, 3.0)]
    dirs = []
    for seed in (0, 1):
        dirs.append(write_run(root, f"b-s{seed}", seed=seed, val_loss=3.2, tokens=1_000_000))
        _train_curve(dirs[-1], curve)
    out = tmp_path / "out"
    s = harvest(dirs, out, study="eff")
    runs = pd.read_csv(out / "runs.csv")
    row = runs.iloc[0]
    assert row.loss_drop_per_mtok == pytest.approx(5 / 0.9)
    assert row.early_drop_per_mtok == pytest.approx(20.0)
    assert row.late_drop_per_mtok == pytest.approx(2.0)
    assert row.early_late_ratio == pytest.approx(10.0)
    assert row.early_share == pytest.approx(0.6)
    assert row.loss_per_mtok == pytest.approx(3.2)  # seed 002: final loss / M tokens
    g = s["groups"]["baseline"]
    assert g["early_late_ratio"]["mean"] == pytest.approx(10.0) and g["tokens"]["mean"] == 1e6
    assert s["runs"]["b-s1"]["early_drop_per_mtok"] == pytest.approx(20.0)
    md = (out / "RESULTS.md").read_text()
    assert ("Data efficiency (training-loss drop per million training tokens, first logged step "
            "to the end of the run; loss/token efficiency = final val loss divided by the millions "
            "of tokens trained on, lower is better, comparable between equal budgets; mean over "
            "seeds): baseline 5.56 nats/M tokens over 1M tokens, loss/token efficiency 3.2.") in md
    assert ("Convergence (training loss; early phase = first 25% of tokens, late phase = last "
            "25%; mean over seeds): baseline fell 20 nats/M tokens early and 2 late (10.0x), "
            "60% of its drop in the early phase.") in md
    assert "baseline fell 20 nats/M tokens early" in (out / "analysis.txt").read_text()


def test_expert_load_gini_and_entropy_start_and_end(tmp_path):
    """The hand-made MoE curve: Gini 0.21 -> 0.24, entropy 1.79 -> 1.76 bits, 4 experts."""
    root = tmp_path / "runs"
    dirs = [write_run(root, f"moe-s{s}", seed=s, val_loss=1.0 + 0.1 * s, experts=4)
            for s in (0, 1)]
    dirs.append(write_run(root, "dense-s0", variant="dense", val_loss=1.2,
                          diff={"model.num_experts": 0}))
    out = tmp_path / "out"
    s = harvest(dirs, out, study="moe")
    e = s["moe_load"]["baseline"]
    assert (e["gini_start"], e["gini_end"]) == pytest.approx((0.21, 0.24))
    assert (e["entropy_start"], e["entropy_end"]) == pytest.approx((1.79, 1.76))
    assert e["num_experts"] == 4 and e["n"] == 2 and "dense" not in s["moe_load"]
    md = (out / "RESULTS.md").read_text()
    assert ("Expert load of baseline (mean of 2 seeds, 4 experts): the Gini coefficient "
            "started at 0.210 and finished at 0.240 (0 = even, 1 = one expert takes all); the "
            "Shannon entropy started at 1.790 and finished at 1.760 bits (2.000 = even).") in md


def test_one_run_is_written_in_the_singular(tmp_path):
    """RESULTS.md, analysis.txt and the findings say "1 run", "1 group", never "1 runs"."""
    root = tmp_path / "runs"
    dirs = [write_run(root, "base", val_loss=2.0),
            write_run(root, "boom", variant="boom", status="diverged", val_loss=None,
                      diff={"train.lr": 1.0})]
    harvest(dirs[:1], tmp_path / "one", study="one")
    md = (tmp_path / "one" / "RESULTS.md").read_text()
    assert "1 run (1 completed) in 1 group. " in md
    assert "1 run in 1 group: 1 completed." in (tmp_path / "one" / "analysis.txt").read_text()
    harvest(dirs, tmp_path / "two", study="two")
    md = (tmp_path / "two" / "RESULTS.md").read_text()
    assert "2 runs (1 completed, 1 diverged) in 2 groups. " in md
    assert "1 run did not complete and is left out of the statistics: boom: 1 diverged." in md
    texts = [(tmp_path / d / f).read_text() for d in ("one", "two")
             for f in ("RESULTS.md", "analysis.txt")]
    for bad in ("1 runs", "1 groups", "1 seeds", "1 configurations", "(s)"):
        assert not any(bad in t for t in texts), bad
