"""The workflow as a user runs it: real snakemake in a temporary directory."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from conftest import planned, snakemake, write_yaml

pytestmark = pytest.mark.workflow


def _reverse(obj):
    """The same document with every mapping's keys in reverse order."""
    if isinstance(obj, dict):
        return {k: _reverse(v) for k, v in reversed(list(obj.items()))}
    return obj


def test_study_runs_end_to_end_and_replans_only_what_changed(tmp_path, tiny_study):
    write_yaml(tmp_path / "study.yaml", tiny_study)
    snakemake(tmp_path, "-c2")

    res = tmp_path / "results" / "tiny"
    runs = pd.read_csv(res / "runs.csv")
    assert sorted(runs.variant) == ["baseline", "baseline", "post_norm", "post_norm"]
    assert set(runs.status) == {"completed"}
    assert runs.tokens.nunique() == 1  # an equal token budget for every run
    summary = json.loads((res / "summary.json").read_text())
    assert summary["groups"]["baseline"]["n"] == 2
    assert "post_norm" in summary["comparisons"]
    assert (res / "analysis.txt").read_text().strip() and (res / "RESULTS.md").read_text().strip()
    for rid in runs.run_id:
        d = res / "runs" / rid
        for name in ("config.yaml", "metrics.jsonl", "final.json", "trainer_state.json",
                     "model.safetensors"):
            assert (d / name).stat().st_size > 0, (rid, name)
        assert yaml.safe_load((d / "config.yaml").read_text())["run_id"] == rid
        assert (tmp_path / "logs" / "tiny" / "train_model" / f"{rid}.log").exists()
    for png in ("loss_curves.png", "final_val_loss.png"):
        assert (res / "plots" / png).read_bytes()[:4] == b"\x89PNG"

    # nothing to do after a full run
    rules, _ = planned(tmp_path)
    assert not rules, rules

    # reordering every mapping in the YAML changes nothing
    write_yaml(tmp_path / "study.yaml", _reverse(tiny_study))
    rules, _ = planned(tmp_path)
    assert not rules, rules

    # editing one variant re-plans that variant (one job per seed) plus the aggregates
    edited = json.loads(json.dumps(tiny_study))
    edited["sweep"]["variants"]["post_norm"]["model.norm_eps"] = 1e-6
    write_yaml(tmp_path / "study.yaml", edited)
    rules, run_ids = planned(tmp_path)
    assert dict(rules) == {"train_model": 2, "harvest_metrics": 1, "plot_study": 1,
                           "write_results_page": 1}, rules
    assert all(r.startswith("post_norm-") for r in run_ids) and len(run_ids) == 2
    assert not run_ids & set(runs.run_id)

    # adding a variant plans only it plus the aggregates
    added = json.loads(json.dumps(tiny_study))
    added["sweep"]["variants"]["nope"] = {"model.pos_emb": "none"}
    write_yaml(tmp_path / "study.yaml", added)
    rules, run_ids = planned(tmp_path)
    assert dict(rules) == {"train_model": 2, "harvest_metrics": 1, "plot_study": 1,
                           "write_results_page": 1}
    assert all(r.startswith("nope-") for r in run_ids)

    # the HTML report holds the figures
    write_yaml(tmp_path / "study.yaml", tiny_study)
    snakemake(tmp_path, "--report", "results/tiny/report.html")
    html = (res / "report.html").read_text(errors="replace")
    assert "loss_curves.png" in html and "final_val_loss.png" in html


def test_bad_config_fails_before_any_job_with_one_line(tmp_path, tiny_study):
    tiny_study["defaults"]["model"] = {"d_model": 128, "n_heads": 3, "n_layers": 1}
    write_yaml(tmp_path / "study.yaml", tiny_study)
    proc = snakemake(tmp_path, "-c1", check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out
    lines = [ln for ln in out.splitlines() if "n_heads" in ln]
    assert lines == [f"lmablate: {tmp_path / 'study.yaml'}: defaults.model.n_heads: n_heads (3) "
                     "must divide d_model (128)"]
    assert not (tmp_path / "resources").exists() and not (tmp_path / "results").exists()


def test_execution_from_include_and_scale_reaches_training_and_reruns_nothing(tmp_path,
                                                                               tiny_study):
    from lmablate import read_study

    # the study file itself has no `execution:`; its base and the base's scale do
    tiny_study["sweep"] = {"variants": {"baseline": {}}, "seeds": [0, 1]}
    tiny_study["execution"] = {"runs_per_gpu": 3}
    tiny_study["scales"] = {"packed": {"execution.runs_per_gpu": 5}}
    write_yaml(tmp_path / "base.yaml", tiny_study)
    write_yaml(tmp_path / "study.yaml", {"include": "base.yaml"})
    first, second = (r.run_id for r in read_study(tmp_path / "study.yaml").runs)

    def trained(run_id: str, *args: str) -> str:
        snakemake(tmp_path, "-c1", f"results/tiny/runs/{run_id}/final.json", *args)
        return (tmp_path / "logs" / "tiny" / "train_model" / f"{run_id}.log").read_text()

    assert "runs_per_gpu 5" in trained(first, "--config", "scale=packed")
    assert "runs_per_gpu 3" in trained(second)
    # execution settings are not part of a run: changing them plans no training
    tiny_study["execution"] = {"runs_per_gpu": 1, "train_threads": 2}
    write_yaml(tmp_path / "base.yaml", tiny_study)
    rules, _ = planned(tmp_path, *(f"results/tiny/runs/{r}/final.json" for r in (first, second)))
    assert not rules, rules
