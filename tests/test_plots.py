"""Figures: every kind renders from harvested tables, axes follow the data, intervals are never
shrunk (clipped ends are marked and printed), runs that did not complete are shown."""

from __future__ import annotations

import inspect
import json
import math
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import write_run

from lmablate import figures
from lmablate.figures.plan import plan_figures
from lmablate.figures.registry import FIGURE_KINDS, caption_text, write_captions
from lmablate.results.collect import collect
from lmablate.results.harvest import harvest, load_results
from lmablate.workflow.steps import plot_study_step

T975_DF1 = 12.706204736174694  # scipy.stats.t.ppf(0.975, 1)


@pytest.fixture(autouse=True)
def _close_figures():
    """Each test's figures are closed after it (pyplot warns from 20 open figures on)."""
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """d_model 32/64/128 x lr 1e-3/1e-2, two seeds; an MoE variant; one diverged run."""
    root = tmp_path_factory.mktemp("sweep")
    runs = root / "runs"
    losses = {32: 3.0, 64: 2.6, 128: 2.3}
    for d_model, base in losses.items():
        for lr in (1e-3, 1e-2):
            for seed in (0, 1):
                diff = {k: v for k, v in (("model.d_model", d_model), ("train.lr", lr))
                        if (k, v) not in (("model.d_model", 64), ("train.lr", 1e-3))}
                status = "diverged" if (d_model, lr, seed) == (128, 1e-2, 1) else "completed"
                write_run(runs, f"d{d_model}-lr{lr}-s{seed}", seed=seed, status=status,
                          val_loss=base + (0.2 if lr == 1e-2 else 0) + 0.05 * seed, lr=lr,
                          model={"d_model": d_model}, params=d_model**2 * 10,
                          axes={"model.d_model": d_model, "train.lr": lr}, diff=diff)
    for seed in (0, 1):
        write_run(runs, f"moe-s{seed}", variant="moe", seed=seed, val_loss=2.5 + 0.1 * seed,
                  experts=4, model={"d_model": 64, "num_experts": 4},
                  axes={"model.d_model": 64, "train.lr": 1e-3}, diff={"model.num_experts": 4},
                  params=64**2 * 30)
    harvest(sorted(runs.iterdir()), root, study="sweep")
    return root


def test_the_sweep_gets_every_figure(sweep):
    runs, _, _ = collect(sorted((sweep / "runs").iterdir()))
    # every kind the runs themselves support; "tasks" is planned from the study's eval_tasks
    assert {spec["kind"] for spec in plan_figures(runs.to_dict("records")).values()} == \
        set(FIGURE_KINDS) - {"tasks"}


def test_every_figure_kind_has_its_caption_and_a_draw_function_that_takes_its_inputs(tmp_path):
    """A kind is complete: its report caption is written where the report reads it, and its
    draw function takes the kind's inputs in order, then a title."""
    written = write_captions(tmp_path)
    for kind in FIGURE_KINDS.values():
        for caption in [kind.name, *(kind.train_split[:1] if kind.train_split else [])]:
            assert caption_text(caption).strip(), caption
            assert Path(written[caption]).read_text() == caption_text(caption), caption
        params = list(inspect.signature(kind.function()).parameters)
        assert params[:len(kind.inputs)] == list(kind.inputs), kind.name
        assert "title" in params, kind.name


def _tokens_per_second(runs, baseline, *, title=None):
    """A figure kind's draw function, as a family module holds it: throughput per group."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    means = runs.groupby("group")["tokens_per_s"].mean()
    ax.bar(range(len(means)), means.to_numpy(), color=["tab:blue", "tab:orange", "tab:green"])
    ax.set_title(title or f"tokens per second (reference {baseline})")
    return fig


def test_a_figure_kind_is_its_row_and_its_draw_function(sweep, tmp_path, monkeypatch):
    """Adding a kind touches two files: a draw function in a family module and a registry row
    with its caption. With only those (a module and a row added here), the kind is planned for
    the runs its test accepts, drawn by the plot step, its caption written where the report reads
    it, and shown under the figure on the results page."""
    import types

    from lmablate.figures import registry
    from lmablate.results.page import write_results_page

    family = types.ModuleType("lmablate.figures.throughput")
    family.tokens_per_second = _tokens_per_second
    monkeypatch.setitem(sys.modules, family.__name__, family)
    kind = registry.FigureKind(
        "tokens_per_second", "throughput.tokens_per_second", ("runs", "baseline"),
        "Training throughput per group.", "Efficiency and calibration",
        lambda rows: any(r.get("tokens_per_s") for r in rows), {"throughput": {}},
        caption="Tokens per second of each group, *mean over seeds*.")
    # the row's two views, as the table builds them at import
    monkeypatch.setitem(registry.FIGURE_KINDS, kind.name, kind)
    monkeypatch.setitem(registry.DEFAULT_FIGURES, "throughput", (kind.name, {}))

    runs = pd.read_parquet(sweep / "runs.parquet")
    plan = plan_figures(runs.to_dict("records"))
    assert plan["throughput"] == {"kind": "tokens_per_second"}
    assert plan_figures(runs.drop(columns="tokens_per_s").to_dict("records")).keys() == \
        plan.keys() - {"throughput"}

    png = tmp_path / "throughput.png"
    plot_study_step(str(sweep / "runs.parquet"), str(sweep / "curves.parquet"),
                    {"throughput": str(png)}, baseline="baseline", study="sweep", figures=plan)
    img = matplotlib.image.imread(png)
    assert img.shape[0] > 300 and img.shape[1] > 600 and img[..., :3].std() > 0.05

    caption = registry.figure_caption(plan["throughput"])
    written = write_captions(tmp_path / "captions")
    assert Path(written[caption]).read_text() == kind.caption + "\n"
    assert registry.figure_subcategory(plan["throughput"]) == "Efficiency and calibration"
    page = write_results_page(sweep / "runs.csv", sweep / "summary.json", tmp_path / "r.html",
                              study="sweep", figures={"throughput": {
                                  "path": str(png), "caption": caption_text(caption),
                                  "what": registry.figure_summary(plan["throughput"])}})
    html = page.read_text()
    assert "Training throughput per group." in html
    assert "Tokens per second of each group, <em>mean over seeds</em>." in html


def test_plot_step_writes_every_planned_figure(sweep, tmp_path):
    import pandas as pd

    plan = plan_figures(pd.read_parquet(sweep / "runs.parquet").to_dict("records"))
    outputs = {name: str(tmp_path / f"{name}.png") for name in plan}
    plot_study_step(str(sweep / "runs.parquet"), str(sweep / "curves.parquet"), outputs,
                    baseline="baseline", study="sweep")
    for name, path in outputs.items():
        img = matplotlib.image.imread(path)
        assert img.shape[0] > 300 and img.shape[1] > 500, name
        assert img[..., :3].std() > 0.05, f"{name} is blank"


def _texts(fig) -> str:
    return "\n".join(t.get_text() for ax in fig.axes for t in ax.texts) + "\n" + "\n".join(
        t.get_text() for t in fig.texts)


def test_wide_intervals_are_clipped_marked_and_printed(tmp_path):
    """Two seeds 4.0 and 6.0: the t-interval 5 +- 12.7 spans -7.7..17.7; the axis stays near the
    data, the whisker ends in arrow heads and the full interval is printed."""
    root = tmp_path / "runs"
    dirs = [write_run(root, f"b-s{s}", seed=s, val_loss=v) for s, v in enumerate([4.0, 6.0])]
    dirs += [write_run(root, f"v-s{s}", variant="v", seed=s, val_loss=v, diff={"x": 1})
             for s, v in enumerate([4.4, 4.6])]
    runs, _, _ = collect(dirs)
    fig = figures.final_metric(runs, "baseline", "val_loss")
    ax = fig.axes[0]
    lo, hi = ax.get_xlim()
    assert 3.5 < lo < 4.0 and 6.0 < hi < 6.5
    half = T975_DF1 * math.sqrt(2) / math.sqrt(2)
    assert f"5.000 [{5 - half:.3f}, {5 + half:.3f}]  n=2" in _texts(fig)
    markers = [ln.get_marker() for ln in ax.lines]
    assert "<" in markers and ">" in markers
    assert "Arrow heads" in _texts(fig)


def test_selected_runs_are_starred_and_their_groups_green(tmp_path):
    """A two-phase study's ranking: the selected run is a star, its group's label green and bold;
    with ``higher`` the best-first order flips."""
    from matplotlib.colors import to_hex

    root = tmp_path / "runs"
    dirs = [write_run(root, f"{g}-s{s}", variant=g, seed=s, val_loss=v + 0.1 * s,
                      diff={} if g == "baseline" else {"x": g})
            for g, v in (("baseline", 3.0), ("a", 2.5), ("b", 2.8)) for s in (0, 1)]
    runs, _, _ = collect(dirs)
    fig = figures.final_metric(runs, "baseline", "val_loss", selected=["a-s0"])
    ax = fig.axes[0]
    labels = {t.get_text(): t for t in ax.get_yticklabels()}
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b", "baseline"]
    assert to_hex(labels["a"].get_color()) == figures.SELECTED_COLOR
    assert labels["a"].get_fontweight() == "bold"
    assert to_hex(labels["b"].get_color()) != figures.SELECTED_COLOR
    stars = [c for c in ax.collections if c.get_offsets().shape[0] and
             c.get_paths()[0].vertices.shape[0] > 8 and c.get_sizes()[0] > 100]
    assert len(stars) == 1 and stars[0].get_offsets()[0][0] == pytest.approx(2.5)
    assert "star, label in green: selected" in _texts(fig)
    fig = figures.final_metric(runs, "baseline", "val_loss", higher=True)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["baseline", "b", "a"]


def test_perplexity_is_exp_of_the_loss_interval(tmp_path):
    root = tmp_path / "runs"
    dirs = [write_run(root, f"b-s{s}", seed=s, val_loss=v) for s, v in enumerate([1.0, 1.1, 1.2])]
    runs, _, _ = collect(dirs)
    fig = figures.final_metric(runs, "baseline", "val_ppl")
    half = 4.302652729749462 * 0.1 / math.sqrt(3)
    assert f"{math.exp(1.1):.3f} [{math.exp(1.1 - half):.3f}, {math.exp(1.1 + half):.3f}]" in \
        _texts(fig)
    assert fig.axes[0].get_xscale() == "log"


def test_loss_curves_follow_the_data_and_show_diverged_runs(sweep):
    import pandas as pd

    runs = pd.read_parquet(sweep / "runs.parquet")
    curves = pd.read_parquet(sweep / "curves.parquet")
    fig = figures.loss_curves(runs, curves, max_panels=12)
    ax = fig.axes[0]
    vals = curves[(curves.split == "val") & (curves.metric == "loss")].value
    vals = vals[np.isfinite(vals)]
    lo, hi = ax.get_ylim()
    assert lo >= vals.min() - 0.1 * (vals.max() - vals.min()) and hi <= vals.max() + 1.0
    labels = [t.get_text() for a in fig.axes for t in a.get_legend().get_texts()]
    assert any("diverged" in t for t in labels)
    crosses = [ln for a in fig.axes for ln in a.lines if ln.get_marker() == "x"]
    assert crosses and crosses[0].get_color() == figures.DIVERGED_COLOR


def test_many_groups_give_one_panel_per_lr(sweep):
    import pandas as pd

    runs = pd.read_parquet(sweep / "runs.parquet")
    curves = pd.read_parquet(sweep / "curves.parquet")
    fig = figures.loss_curves(runs, curves, max_panels=2)
    titles = sorted(a.get_title() for a in fig.axes if a.get_title())
    assert titles == ["lr = 0.001", "lr = 0.01"]


def test_heatmap_marks_cells_where_every_seed_failed(tmp_path):
    root = tmp_path / "runs"
    dirs = []
    for d_model in (32, 64):
        for n_layers in (1, 2):
            status = "diverged" if (d_model, n_layers) == (64, 2) else "completed"
            dirs.append(write_run(root, f"d{d_model}-l{n_layers}", status=status,
                                  val_loss=2.0 + d_model / 100 + n_layers / 10,
                                  axes={"model.d_model": d_model, "model.n_layers": n_layers}))
    runs, _, _ = collect(dirs)
    fig = figures.heatmap(runs)
    texts = _texts(fig)
    assert "diverged" in texts and {"2.420", "2.520", "2.740"} <= set(texts.split("\n"))


def test_figures_without_data_say_why(tmp_path):
    root = tmp_path / "runs"
    runs, curves, rel = collect([write_run(root, "only", val_loss=1.0, reliability=False)])
    for kind, text in (("heatmap", "Fewer than two numeric sweep axes"),
                       ("moe_load", "No run logged expert load"),
                       ("scaling_law", "no scaling law is fitted"),
                       ("calibration", "No completed run has reliability bins"),
                       ("lr_sensitivity", "One learning rate (0.003): no trend to show")):
        fig = figures.draw(kind, runs, curves, reliability=rel)
        assert text in _texts(fig), kind


def test_save_is_atomic_and_closes(tmp_path):
    import matplotlib.pyplot as plt

    fig, _ = plt.subplots()
    figures.save(fig, tmp_path / "x" / "f.png")
    assert (tmp_path / "x" / "f.png").is_file()
    assert not list((tmp_path / "x").glob(".*tmp*"))
    assert not plt.fignum_exists(fig.number)


def _alloc(root: Path) -> tuple:
    """Seed 003's one-axis sweeps around a shared centre: embedding share 0.25/0.35/0.45 and GLU
    expansion 2.0/2.66/4.0, the centre (0.35, 2.66) one run per seed counted on both axes."""
    runs = root / "runs"
    losses = {("embedding", 0.25): 3.2, ("embedding", 0.35): 3.0, ("embedding", 0.45): 3.1,
              ("glu", 2.0): 3.3, ("glu", 4.0): 3.05}
    shared = {}
    for (variant, x), loss in losses.items():
        key = "model.embedding_share" if variant == "embedding" else "model.glu_expansion"
        for seed in (0, 1):
            rid = f"{variant}-{x}-s{seed}"
            write_run(runs, rid, variant=variant, seed=seed, val_loss=loss + 0.02 * seed,
                      axes={key: x}, diff={key: x}, params=10_000 + 10 * seed)
            if (variant, x) == ("embedding", 0.35):
                shared[rid] = [["glu", {"model.glu_expansion": 2.66}]]
    for d in runs.iterdir():  # compute per token falls as the embedding share grows
        final = json.loads((d / "final.json").read_text())
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        share = cfg["axes"].get("model.embedding_share", 0.35)
        glu = cfg["axes"].get("model.glu_expansion", 2.66)
        final["flops_per_token"] = 6e4 * (1 - share) + 1e3 * glu
        (d / "final.json").write_text(json.dumps(final))
    harvest(sorted(runs.iterdir()), root, study="alloc", baseline="embedding", shared=shared)
    return load_results(root)


def test_metric_vs_axis_draws_each_one_axis_sweep_with_its_shared_centre(tmp_path):
    runs, curves = _alloc(tmp_path)
    plan = plan_figures(runs.to_dict("records"))
    assert plan["loss_vs_axis"] == {"kind": "metric_vs_axis"}
    fig = figures.draw("metric_vs_axis", runs, curves, baseline="embedding")
    panels = {ax.get_xlabel(): ax for ax in fig.axes if ax.get_visible() and ax.get_xlabel()}
    assert set(panels) == {"embedding_share", "glu_expansion"}
    means = {}
    for name, ax in panels.items():  # the joined means: the thick line with circle markers
        line = next(ln for ln in ax.lines if ln.get_marker() == "o" and len(ln.get_xdata()) > 2)
        means[name] = dict(zip(np.round(line.get_xdata(), 3), np.round(line.get_ydata(), 3)))
    assert means["embedding_share"] == {0.25: 3.21, 0.35: 3.01, 0.45: 3.11}
    assert means["glu_expansion"] == {2.0: 3.31, 2.66: 3.01, 4.0: 3.06}  # the centre on both
    # two seeds per point: every mean has its t-interval whisker (clipped: n = 2)
    assert "Arrow heads" in _texts(fig)
    assert any("perplexity" in c.get_ylabel() for ax in fig.axes for c in ax.child_axes)


def test_metric_vs_axis_plots_derived_ratios_best_and_median(tmp_path):
    """A grid over d_model x d_ff (seed 000): the d_ff/d_model panel's blue line is the best
    configuration at each ratio, worked out by hand."""
    root = tmp_path / "runs"
    dirs, best = [], {}
    for d_model in (32, 64):
        for ratio in (1, 2):
            loss = 3.0 - d_model / 100 - 0.1 * ratio
            best[ratio] = min(best.get(ratio, 9.0), loss)
            dirs.append(write_run(root, f"d{d_model}-r{ratio}", val_loss=loss,
                                  model={"d_model": d_model, "d_ff": ratio * d_model},
                                  axes={"model.d_model": d_model, "model.d_ff": ratio * d_model}))
    runs, curves, _ = collect(dirs)
    fig = figures.metric_vs_axis(runs)
    ax = next(a for a in fig.axes if a.get_xlabel() == "d_ff/d_model (ratio)")
    blue = next(ln for ln in ax.lines if ln.get_label() == "best configuration at each value")
    assert dict(zip(blue.get_xdata(), np.round(blue.get_ydata(), 6))) == \
        {1.0: round(best[1], 6), 2.0: round(best[2], 6)}
    assert any(ln.get_label() == "median over configurations" for ln in ax.lines)


def test_metric_vs_axis_names_the_best_inside_its_panel(tmp_path):
    """The best configuration's name stays inside its panel, whether its star is at the left
    edge (d_model 32) or at the right edge (d_ff/d_model 4) of a panel of many configurations."""
    root = tmp_path / "runs"
    dirs = [write_run(root, f"d{d}-r{r}", val_loss=3.0 + d / 100 - 0.1 * r,
                      model={"d_model": d, "d_ff": r * d},
                      axes={"model.d_model": d, "model.d_ff": r * d})
            for d in (32, 48, 64) for r in (1, 2, 4)]
    runs, _, _ = collect(dirs)
    fig = figures.metric_vs_axis(runs)
    fig.canvas.draw()
    named = 0
    for ax in (a for a in fig.axes if a.get_visible() and a.get_xlabel()):
        box = ax.get_window_extent()
        for t in ax.texts:
            if "d_model=32" in t.get_text() and "d_ff=128" in t.get_text():
                named += 1
                ext = t.get_window_extent()
                assert box.x0 <= ext.x0 and ext.x1 <= box.x1, (ax.get_xlabel(), t.get_text())
    assert named == 2


def test_pareto_draws_and_names_the_frontier(tmp_path):
    runs, curves = _alloc(tmp_path)
    fig = figures.pareto(runs, "embedding")
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("training FLOPs per token")
    listing = next(t.get_text() for t in ax.texts if t.get_text().startswith("Pareto frontier"))
    # flops 6e4 * (1 - share) + 1e3 * glu; a point is on the frontier when no cheaper one has a
    # lower mean loss: share 0.45 (3.11), then the centre (3.01, one model named by both its
    # sweep points); glu 2.0 and 4.0 cost more and lose, share 0.25 costs most
    named = [ln.split("  ", 1)[1] for ln in listing.split("\n")[1:] if ln[:2].strip().isdigit()]
    assert named == ["embedding, embedding_share=0.45",
                     "embedding, embedding_share=0.35; glu, glu_expansion=2.66"]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert {"seeds (10 runs)", "other configurations (3)"} <= set(legend)  # each run once
    numbers = sorted(t.get_text() for t in ax.texts if t.get_text().isdigit())
    assert numbers == ["1", "2"]


def test_best_per_size_compares_at_the_tokens_every_run_reached(tmp_path):
    """Two configurations of one size: a finished at 4096 tokens with the lower final loss, b
    stopped at 2048; after 2048 tokens (every run reached it) b is lower, and b is named."""
    root = tmp_path / "runs"
    dirs = [write_run(root, "a", val_loss=1.0, tokens=4096, params=10_500, diff={"x": "a"},
                      variant="a"),
            write_run(root, "b", val_loss=1.8, tokens=2048, params=10_600, diff={"x": "b"},
                      variant="b"),
            write_run(root, "c", val_loss=0.5, tokens=4096, params=60_000, diff={"x": "c"},
                      variant="c")]
    runs, curves, _ = collect(dirs)
    fig = figures.best_per_size(runs, curves)
    texts = _texts(fig)
    # a at 2048 tokens: 1.0 + (4 - 2) * 0.5 = 2.0 > b's 1.8
    assert "b\n10.6k params, loss 1.800 after 2k tokens (n=1); best of 2" in texts
    assert "c\n60k params, loss 0.500 after 4k tokens (n=1); best of 1" in texts
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["10k-25k", "50k-100k"]


def test_plot_step_removes_figures_the_plan_no_longer_lists(sweep, tmp_path):
    """A figure of an earlier version of the study goes; a user's PNG and the LR range test
    (drawn by its own rule) stay."""
    import matplotlib.pyplot as plt

    folder = tmp_path / "plots"
    for name in ("heatmap_old", "lr_finder"):
        fig, _ = plt.subplots()
        figures.save(fig, folder / f"{name}.png")
    fig, _ = plt.subplots()
    fig.savefig(folder / "mine.png")
    plt.close(fig)
    outputs = {"final_val_loss": str(folder / "final_val_loss.png")}
    plot_study_step(str(sweep / "runs.parquet"), str(sweep / "curves.parquet"), outputs,
                    baseline="baseline", study="sweep")
    assert sorted(p.name for p in folder.glob("*.png")) == ["final_val_loss.png",
                                                            "lr_finder.png", "mine.png"]


def test_moe_load_shows_every_moe_group(tmp_path):
    root = tmp_path / "runs"
    dirs = [write_run(root, f"moe{k}", variant=f"moe{k}", val_loss=2.0 + 0.1 * k, experts=4,
                      model={"num_experts": 4}, diff={"model.num_experts": 4, "k": k})
            for k in range(7)]
    runs, curves, _ = collect(dirs)
    fig = figures.moe_load(runs, curves)
    titles = {a.get_title() for a in fig.axes}
    assert {f"moe{k} (seed 0)" for k in range(7)} <= titles
    assert "not shown" not in _texts(fig)


def test_lr_figure_draws_configurations_of_one_lr_as_points(tmp_path):
    root = tmp_path / "runs"
    dirs = [write_run(root, "base", val_loss=2.0, lr=3e-4),
            write_run(root, "big", variant="big", val_loss=1.9, lr=5e-4,
                      diff={"train.batch_size": 16, "train.lr": 5e-4})]
    runs, _, _ = collect(dirs)
    fig = figures.lr_sensitivity(runs)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any(t.startswith("big") and "one LR" in t for t in labels), labels
    diamonds = [ln for ln in fig.axes[0].lines if ln.get_marker() == "D"]
    assert {(float(ln.get_xdata()[0]), float(ln.get_ydata()[0])) for ln in diamonds} >= \
        {(5e-4, 1.9)}


def test_a_run_that_diverged_before_its_first_evaluation_is_named_in_its_panel(tmp_path):
    import json as json_

    root = tmp_path / "runs"
    dirs = [write_run(root, "base", val_loss=2.0),
            write_run(root, "boom", variant="boom", status="diverged", val_loss=None,
                      diff={"train.lr": 1.0})]
    (dirs[1] / "metrics.jsonl").write_text(json_.dumps(
        {"step": 1, "tokens": 64, "split": "train", "loss": float("nan")}) + "\n")
    runs, curves, _ = collect(dirs)
    fig = figures.loss_curves(runs, curves)
    panel = next(a for a in fig.axes if a.get_title() == "boom")
    assert "No validation point: seed 0 diverged at step 4,\nbefore the first evaluation." in \
        [t.get_text() for t in panel.texts]


@pytest.mark.workflow
@pytest.mark.slow
def test_a_two_phase_study_draws_its_sweep_figures_from_phase_1(tmp_path, tiny_study):
    """Phase 2 holds only the selected configuration; the loss-vs-axis and compute-vs-quality
    figures of the whole sweep come from phase 1 (results/<study>/phase1/plots/)."""
    from conftest import planned, snakemake, write_yaml

    tiny_study["sweep"] = {"grid": {"model.n_layers": [1, 2, 3]}, "seeds": [0]}
    tiny_study["ranking"] = {"tokens": 2048, "top_k": 1}
    write_yaml(tmp_path / "study.yaml", tiny_study)
    rules, _ = planned(tmp_path)
    assert rules["plot_phase1"] == 1
    names = ("loss_vs_axis", "pareto")
    snakemake(tmp_path, "-c2", *(f"results/tiny/phase1/plots/{n}.png" for n in names))
    for name in names:
        img = matplotlib.image.imread(tmp_path / f"results/tiny/phase1/plots/{name}.png")
        assert img.shape[0] > 300 and img[..., :3].std() > 0.05, name
    runs = pd.read_parquet(tmp_path / "results/tiny/phase1/runs.parquet")
    fig = figures.metric_vs_axis(runs)
    assert [a.get_xlabel() for a in fig.axes if a.get_xlabel()] == ["n_layers"]


def test_heatmap_shows_a_relative_d_ff_sweep_as_the_ratio(tmp_path):
    """d_ff swept from d_model/2 to 2 * d_model (seed 000): in absolute d_ff the grid would be a
    sparse diagonal; as d_ff/d_model every cell is filled."""
    from lmablate.figures.axes import heatmap_axes

    root = tmp_path / "runs"
    dirs = [write_run(root, f"d{d}-r{r}", val_loss=3.0 - d / 100 - r / 10,
                      model={"d_model": d, "d_ff": int(r * d)},
                      axes={"model.d_model": d, "model.d_ff": int(r * d)})
            for d in (32, 64, 128) for r in (0.5, 1, 2)]
    runs, _, _ = collect(dirs)
    assert heatmap_axes(runs.to_dict("records"))[1][:2] == ["d_ff/d_model", "axis.model.d_model"]
    fig = figures.heatmap(runs)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "d_ff/d_model"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0.5", "1", "2"]
    cells = [t.get_text() for t in ax.texts]
    assert len(cells) == 9 and f"{3.0 - 0.64 - 0.2:.3f}" in cells


def test_metric_vs_axis_joins_an_axis_zipped_with_another(tmp_path):
    """batch_size zipped with seq_len (moe series A): no setting of the other axis has two
    batch sizes, so the panel draws one line per variant, not single points."""
    root = tmp_path / "runs"
    dirs = [write_run(root, f"b{b}", val_loss=2.0 + b / 100, axes={"train.batch_size": b,
                                                                 "train.seq_len": 512 // b})
            for b in (8, 16, 32)]
    runs, _, _ = collect(dirs)
    fig = figures.metric_vs_axis(runs)
    ax = next(a for a in fig.axes if a.get_xlabel().startswith("batch_size"))
    line = next(ln for ln in ax.lines if ln.get_marker() == "o")
    assert list(line.get_xdata()) == [8, 16, 32]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["8", "16", "32"]


def test_efficiency_adds_the_data_efficiency_of_each_run(sweep):
    """The training-loss drop per million tokens (harvest.add_efficiency) is a panel beside
    throughput and memory, one dot per completed run at its value."""
    runs, _ = load_results(sweep)
    fig = figures.efficiency(runs)
    panels = {ax.get_ylabel(): ax for ax in fig.axes if ax.get_visible()}
    ax = panels[figures.METRIC_LABELS["loss_drop_per_mtok"]]
    done = runs[runs.status == "completed"]
    assert sorted(ax.collections[0].get_offsets()[:, 1]) == pytest.approx(
        sorted(done.loss_drop_per_mtok))
    assert "Data efficiency" in _texts(fig)


def _stop_early(run_dir: Path, step: int) -> None:
    """Make a written run one that stopped early at ``step`` (its final evaluation kept)."""
    final_path = run_dir / "final.json"
    final = json.loads(final_path.read_text())
    final.update(status="stopped_early", steps=step, stopped_early_at_step=step)
    final_path.write_text(json.dumps(final))


def test_a_run_that_stopped_early_shows_its_last_value_and_step(tmp_path):
    """A two-phase study's ranking with early stopping: the stopped configuration is drawn
    hollow at its last evaluated value, ranked after the finished ones and marked with its step;
    a group with one seed stopped and one finished keeps its mean of the finished seed."""
    root = tmp_path / "runs"
    dirs = [write_run(root, "base", val_loss=3.0),
            write_run(root, "good", variant="good", val_loss=2.5, diff={"train.lr": 3e-3}),
            write_run(root, "slow", variant="slow", val_loss=4.2, diff={"train.lr": 1e-5}),
            write_run(root, "mixed-s0", variant="mixed", val_loss=2.9, diff={"x": 1}),
            write_run(root, "mixed-s1", variant="mixed", seed=1, val_loss=3.8, diff={"x": 1})]
    _stop_early(dirs[2], 12)
    _stop_early(dirs[4], 14)
    runs, _, _ = collect(dirs)
    fig = figures.final_metric(runs, "baseline", "val_loss", selected=["good"],
                               title="Phase 1")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["good", "mixed", "baseline", "slow"]
    texts = _texts(fig)
    assert "stopped early at step 12: 4.200" in texts
    assert "stopped early at step 14: 3.800" in texts
    assert "no final value" not in texts
    subtitle = " ".join(t.get_text() for t in reversed(fig.texts) if t.get_fontsize() == 9)
    assert "hollow dot: the last evaluated value of a run that stopped early (in no mean, " \
        "never selected)" in subtitle
    hollow = [c for c in ax.collections if len(c.get_offsets())
              and tuple(c.get_facecolor()[0]) == (1.0, 1.0, 1.0, 1.0)]
    assert sorted(tuple(p) for c in hollow for p in c.get_offsets()) == [(3.8, 1.0), (4.2, 3.0)]
    assert ax.get_xlim()[1] > 4.2  # the stopped value is inside the axes
    assert "1.000 (n=1, no interval)" not in texts  # mixed: the mean of its finished seed only
    assert "2.900  (n=1, no interval)" in texts
    figures.save(fig, tmp_path / "ranking.png")


def test_an_lr_figure_at_one_lr_draws_the_point_and_says_there_is_no_trend(tmp_path):
    """A study at one LR (a figure picked by name): the configurations are diamonds with their
    seeds and intervals, and the panel says why there is no line."""
    root = tmp_path / "runs"
    dirs = [write_run(root, f"base-s{s}", seed=s, val_loss=2.0 + 0.1 * s) for s in (0, 1)]
    dirs += [write_run(root, f"wide-s{s}", variant="wide", seed=s, val_loss=1.8 + 0.1 * s,
                       diff={"model.d_model": 64}) for s in (0, 1)]
    runs, _, _ = collect(dirs)
    fig = figures.lr_sensitivity(runs)
    ax = fig.axes[0]
    assert "One learning rate (0.003): no trend to show. Sweep train.lr to see one." in \
        " ".join(_texts(fig).split())
    diamonds = sorted((float(ln.get_xdata()[0]), round(float(ln.get_ydata()[0]), 6))
                      for ln in ax.lines if ln.get_marker() == "D")
    assert [y for _, y in diamonds] == [2.05, 1.85]  # side by side at the one LR
    assert diamonds[0][0] < 3e-3 < diamonds[1][0] < 3.5e-3
    lo, hi = ax.get_xlim()
    assert lo == pytest.approx(1e-3) and hi == pytest.approx(9e-3)
    seeds = sorted(round(float(y), 6) for c in ax.collections for _, y in c.get_offsets())
    assert seeds == [1.8, 1.9, 2.0, 2.1]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["baseline (one LR, n=2)", "wide (one LR, n=2)"]
    figures.save(fig, tmp_path / "one_lr.png")


def test_an_lr_sweep_with_one_finished_lr_says_there_is_no_trend(tmp_path):
    """Three LRs of which only the lowest finished: its point, the other two as crosses, and
    the panel says the trend is missing and why."""
    root = tmp_path / "runs"
    dirs = [write_run(root, f"lr{lr}", lr=lr, val_loss=2.0 if lr == 1e-3 else None,
                      status="completed" if lr == 1e-3 else "diverged",
                      diff={} if lr == 1e-3 else {"train.lr": lr}) for lr in (1e-3, 1e-2, 1e-1)]
    runs, _, _ = collect(dirs)
    fig = figures.lr_sensitivity(runs)
    ax = fig.axes[0]
    assert "One learning rate with a result per configuration: no trend to show; 2 runs at " \
        "other LRs did not finish (crosses at the top edge)." in " ".join(_texts(fig).split())
    assert not [ln for ln in ax.lines if ln.get_marker() == "*" and len(ln.get_xdata())]
    lo, hi = ax.get_ylim()
    assert lo < 2.0 < hi
    lo, hi = ax.get_xlim()  # every LR in view, the crosses' too
    assert lo < 1e-3 / 1.05 and hi > 1e-1 * 1.05
    figures.save(fig, tmp_path / "one_finished_lr.png")


def test_an_lr_sweep_draws_a_run_that_stopped_early_as_a_hollow_dot_not_a_cross(tmp_path):
    """Phase 1 of a two-phase study with early stopping: a run that the cohort stopped is its
    last evaluated value (hollow, in no mean), not a run that "did not complete"."""
    root = tmp_path / "runs"
    dirs = [write_run(root, f"lr{lr}-s{s}", lr=lr, seed=s, val_loss=v + 0.05 * s,
                      status="stopped_early" if (lr, s) == (1e-1, 1) else "completed",
                      diff={} if lr == 1e-3 else {"train.lr": lr})
            for lr, v in ((1e-3, 2.0), (1e-2, 1.8), (1e-1, 2.6)) for s in (0, 1)]
    runs, _, _ = collect(dirs)
    fig = figures.lr_sensitivity(runs)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "stopped early (1 run; last evaluated value, in no mean)" in labels
    assert not [t for t in labels if "did not complete" in t]
    hollow = [c for c in ax.collections if len(c.get_offsets())
              and (c.get_facecolor()[:, :3] == 1).all()]
    assert [tuple(map(float, o)) for c in hollow for o in c.get_offsets()] == \
        [(0.1, pytest.approx(2.65))]
    line = next(ln for ln in ax.lines if ln.get_marker() == "o")
    assert float(line.get_ydata()[-1]) == pytest.approx(2.6)  # the mean of the completed seed
    lo, hi = ax.get_ylim()
    assert lo < 1.8 and hi > 2.65
    figures.save(fig, tmp_path / "stopped_early_lr.png")


def test_a_loss_vs_axis_panel_with_one_finished_value_says_there_is_no_trend(tmp_path):
    root = tmp_path / "runs"
    dirs = [write_run(root, f"d{d}", model={"d_model": d}, axes={"model.d_model": d},
                      diff={"model.d_model": d}, val_loss=2.5 if d == 32 else None,
                      status="completed" if d == 32 else "diverged") for d in (32, 64, 128)]
    runs, _, _ = collect(dirs)
    fig = figures.metric_vs_axis(runs)
    assert "Only d_model = 32 has a result: no trend to show; 2 runs at other values did not " \
        "finish (crosses at the top edge)." in " ".join(_texts(fig).split())
    figures.save(fig, tmp_path / "one_value.png")
