"""Figures: every kind renders from harvested tables, axes follow the data, intervals are never
shrunk (clipped ends are marked and printed), runs that did not complete are shown."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from test_harvest import write_run

from lmablate import plots
from lmablate.harvest import FIGURE_KINDS, collect, harvest, plan_figures
from lmablate.workflow import plot_study_step

T975_DF1 = 12.706204736174694  # scipy.stats.t.ppf(0.975, 1)


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
    fig = plots.final_metric(runs, "baseline", "val_loss")
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
    fig = plots.final_metric(runs, "baseline", "val_loss", selected=["a-s0"])
    ax = fig.axes[0]
    labels = {t.get_text(): t for t in ax.get_yticklabels()}
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b", "baseline"]
    assert to_hex(labels["a"].get_color()) == plots.SELECTED_COLOR
    assert labels["a"].get_fontweight() == "bold"
    assert to_hex(labels["b"].get_color()) != plots.SELECTED_COLOR
    stars = [c for c in ax.collections if c.get_offsets().shape[0] and
             c.get_paths()[0].vertices.shape[0] > 8 and c.get_sizes()[0] > 100]
    assert len(stars) == 1 and stars[0].get_offsets()[0][0] == pytest.approx(2.5)
    assert "star, label in green: selected" in _texts(fig)
    fig = plots.final_metric(runs, "baseline", "val_loss", higher=True)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["baseline", "b", "a"]


def test_perplexity_is_exp_of_the_loss_interval(tmp_path):
    root = tmp_path / "runs"
    dirs = [write_run(root, f"b-s{s}", seed=s, val_loss=v) for s, v in enumerate([1.0, 1.1, 1.2])]
    runs, _, _ = collect(dirs)
    fig = plots.final_metric(runs, "baseline", "val_ppl")
    half = 4.302652729749462 * 0.1 / math.sqrt(3)
    assert f"{math.exp(1.1):.3f} [{math.exp(1.1 - half):.3f}, {math.exp(1.1 + half):.3f}]" in \
        _texts(fig)
    assert fig.axes[0].get_xscale() == "log"


def test_loss_curves_follow_the_data_and_show_diverged_runs(sweep):
    import pandas as pd

    runs = pd.read_parquet(sweep / "runs.parquet")
    curves = pd.read_parquet(sweep / "curves.parquet")
    fig = plots.loss_curves(runs, curves, max_panels=12)
    ax = fig.axes[0]
    vals = curves[(curves.split == "val") & (curves.metric == "loss")].value
    vals = vals[np.isfinite(vals)]
    lo, hi = ax.get_ylim()
    assert lo >= vals.min() - 0.1 * (vals.max() - vals.min()) and hi <= vals.max() + 1.0
    labels = [t.get_text() for a in fig.axes for t in a.get_legend().get_texts()]
    assert any("diverged" in t for t in labels)
    crosses = [ln for a in fig.axes for ln in a.lines if ln.get_marker() == "x"]
    assert crosses and crosses[0].get_color() == plots.DIVERGED_COLOR


def test_many_groups_give_one_panel_per_lr(sweep):
    import pandas as pd

    runs = pd.read_parquet(sweep / "runs.parquet")
    curves = pd.read_parquet(sweep / "curves.parquet")
    fig = plots.loss_curves(runs, curves, max_panels=2)
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
    fig = plots.heatmap(runs)
    texts = _texts(fig)
    assert "diverged" in texts and {"2.420", "2.520", "2.740"} <= set(texts.split("\n"))


def test_figures_without_data_say_why(tmp_path):
    root = tmp_path / "runs"
    runs, curves, rel = collect([write_run(root, "only", val_loss=1.0, reliability=False)])
    for kind, text in (("heatmap", "Fewer than two numeric sweep axes"),
                       ("moe_load", "No run logged expert load"),
                       ("scaling_law", "no scaling law is fitted"),
                       ("calibration", "No completed run has reliability bins"),
                       ("lr_sensitivity", "does not vary")):
        fig = plots.draw(kind, runs, curves, reliability=rel)
        assert text in _texts(fig), kind


def test_save_is_atomic_and_closes(tmp_path):
    import matplotlib.pyplot as plt

    fig, _ = plt.subplots()
    plots.save(fig, tmp_path / "x" / "f.png")
    assert (tmp_path / "x" / "f.png").is_file()
    assert not list((tmp_path / "x").glob(".*tmp*"))
    assert not plt.fignum_exists(fig.number)
