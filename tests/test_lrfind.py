"""LR range test and the overfit-one-batch check: library, command and workflow rule."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import run_config, snakemake, write_yaml

from lmablate.engine.lrfind import lr_range_test, overfit_check, suggest
from lmablate.figures.sweeps import lr_finder


def test_suggestions_from_a_known_curve():
    lrs = list(np.logspace(-6, 1, 71))  # 10 points per decade
    # flat until 1e-4, falls fastest around 1e-3, minimum at 1e-1, then blows up
    loss = [5 - 2 / (1 + math.exp(-3 * (math.log10(lr) + 3))) + max(0, math.log10(lr) + 1) ** 2
            for lr in lrs]
    s = suggest(lrs, loss)
    assert s["lr_steepest"] == pytest.approx(1e-3, rel=0.3)
    assert s["lr_min_loss"] == pytest.approx(1e-1, rel=0.3)
    assert s["lr_valley"] == pytest.approx(s["lr_min_loss"] / 10)
    assert s["lr_suggested"] == s["lr_steepest"]  # the headline (bench/lr_find_check.py)
    assert suggest(lrs[:3], loss[:3])["lr_suggested"] is None  # too short to say


def test_range_test_finds_a_minimum_then_stops_at_the_blow_up(tmp_path, tokens):
    torch.set_num_threads(1)
    res = lr_range_test(run_config(), tokens, tmp_path, steps=60, run_id="r")
    assert res["stopped"] == "the loss blew up" and res["steps"] < 60
    assert 1e-6 < res["lr_steepest"] < res["lr_min_loss"] < 10
    curve = res["curve"]
    assert curve[0]["lr"] == pytest.approx(1e-6)
    assert min(c["smoothed"] for c in curve) < curve[0]["smoothed"] - 0.5  # it learned
    saved = json.loads((tmp_path / "lr_find.json").read_text())
    assert saved["lr_valley"] == res["lr_valley"]
    assert saved["lr_suggested"] == res["lr_steepest"]
    lr_finder([res], tmp_path / "lr_find.png")  # the caller draws it
    assert (tmp_path / "lr_find.png").stat().st_size > 10_000


def test_overfit_check_passes_for_a_sound_model_and_fails_for_a_starved_one(tokens):
    torch.set_num_threads(1)
    ok = overfit_check(run_config(lr=3e-3), tokens, tokens=256, target=0.5, max_steps=400)
    assert ok["passed"] and ok["final_loss"] <= 0.5 < ok["initial_loss"] and ok["tokens"] == 256
    starved = overfit_check(run_config(lr=1e-7), tokens, tokens=256, target=0.5, max_steps=30)
    assert not starved["passed"] and starved["steps"] == 30


def _cli(cwd, *args):
    return subprocess.run([sys.executable, "-m", "lmablate", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300, check=False)


def test_commands_explain_a_missing_token_store_in_one_line(tmp_path, tiny_study):
    write_yaml(tmp_path / "study.yaml", tiny_study)
    for cmd in ("lr-find", "overfit"):
        proc = _cli(tmp_path, cmd, "study.yaml", "post_norm")
        assert proc.returncode == 2
        line = proc.stderr.strip()
        assert "\n" not in line and "token store not found" in line and "snakemake -c2" in line
    proc = _cli(tmp_path, "lr-find", "study.yaml", "postnorm")
    assert "no run or variant 'postnorm'" in proc.stderr and "post_norm" in proc.stderr


@pytest.mark.workflow
def test_lr_find_as_a_study_option_through_snakemake(tmp_path, tiny_study):
    tiny_study["lr_find"] = {"runs": ["baseline", "post_norm"], "steps": 30}
    write_yaml(tmp_path / "study.yaml", tiny_study)
    snakemake(tmp_path, "-c2", "results/tiny/plots/lr_finder.png")
    found = sorted((tmp_path / "results" / "tiny" / "lr_find").glob("*/lr_find.json"))
    assert len(found) == 2
    labels = {json.loads(p.read_text())["label"] for p in found}
    assert labels == {"baseline", "post_norm"}
    assert (tmp_path / "results" / "tiny" / "plots" / "lr_finder.png").stat().st_size > 10_000
    # the CLI prints the same suggestion for the same run (deterministic on CPU)
    run_id = found[0].parent.name
    proc = _cli(tmp_path, "lr-find", "study.yaml", run_id, "--steps", "30", "--threads", "1",
                "--out", str(tmp_path / "cli"))
    assert proc.returncode == 0, proc.stderr
    suggested = json.loads(found[0].read_text())["lr_suggested"]
    assert f"suggested LR {suggested:.3g} (steepest descent); valley (min / 10) " in proc.stdout
    assert json.loads((tmp_path / "cli" / "lr_find.json").read_text())["lr_valley"] == \
        json.loads(found[0].read_text())["lr_valley"]
