"""``lmablate plan`` and ``lmablate solve`` as a user calls them (``main([...])``)."""

from __future__ import annotations

import csv
import io
import json
import math

import pandas as pd
import pytest
import yaml

from lmablate.__main__ import main
from lmablate.errors import ConfigError
from lmablate.study import accounting
from lmablate.study.config import ModelConfig
from lmablate.study.load import read_study, study_from_dict
from lmablate.study.phases import select_top_k
from lmablate.study.plan import (
    DEFAULT_TRAIN_FLOPS_PER_S,
    DEFAULT_TRAIN_RUNTIME_MIN,
    DEFAULT_TRAIN_TOKENS_PER_S,
    device_memory,
    planned_tokens,
    study_train_rate,
    train_memory_bytes,
    train_runtime_min,
)

STUDY = {
    "study": "p",
    "data": {"corpus": "tinystories-1k"},
    "tokenizer": {"kind": "bpe", "vocab_size": 512},
    "defaults": {"model": {"d_model": 32, "n_heads": 2, "n_layers": 2},
                 "train": {"tokens": 10_000, "batch_size": 8, "seq_len": 32}},
    "sweep": {"variants": {"baseline": {}, "wide": {"model.d_model": 64}},
              "seeds": [0, 1]},
}


@pytest.fixture
def study_file(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    return path


def plan(capsys, *args) -> str:
    assert main(["plan", *map(str, args)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    return out


def test_table_lists_every_run_with_counts_and_totals(study_file, tmp_path, capsys):
    out = plan(capsys, study_file, "--results", tmp_path / "results")
    lines = out.splitlines()
    assert lines[0].split() == ["run", "ID", "differs", "from", "defaults", "params", "non-emb",
                                "memory", "tokens", "FLOPs", "est.", "time", "status"]
    runs = read_study(study_file).runs
    for r in runs:
        row = next(line for line in lines if line.startswith(r.run_id))
        counts = accounting.param_counts(r.config.model, 512, 32)
        assert f"{counts['total'] / 1e3:.2f}k" in row and "to run" in row
        assert ("d_model=64" in row) == (r.variant == "wide")
    # 10,000 tokens round up to whole steps of 8 x 32 = 256 tokens: 40 steps, 10,240 tokens
    assert "10.24k" in lines[2]
    assert lines[-1].startswith("total: 4 runs (2 variants) in study 'p': 40.96k tokens, ")
    assert "no throughput measured yet" in lines[-1]


def test_csv_and_json_hold_the_same_rows(study_file, tmp_path, capsys):
    rows = list(csv.DictReader(io.StringIO(plan(capsys, study_file, "--format", "csv",
                                                "--results", tmp_path))))
    doc = json.loads(plan(capsys, study_file, "--format", "json", "--results", tmp_path))
    assert [r["run_id"] for r in rows] == [r["run_id"] for r in doc["runs"]]
    assert {"run_id", "differs", "params", "non_embedding", "tokens", "flops", "est_seconds",
            "done"} <= set(rows[0])
    assert doc["totals"]["runs"] == 4 and doc["totals"]["tokens"] == 4 * 10_240
    assert doc["totals"]["flops"] == sum(r["flops"] for r in doc["runs"])
    for r in doc["runs"]:
        assert r["params"] > r["non_embedding"] > 0


def test_memory_column_is_the_documented_estimate(study_file, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LMABLATE_DEVICE_MEMORY", raising=False)
    device_memory.cache_clear()
    doc = json.loads(plan(capsys, study_file, "--format", "json", "--results", tmp_path))
    runs = read_study(study_file).by_id
    for row in doc["runs"]:
        m, t = runs[row["run_id"]].config.model, runs[row["run_id"]].config.train
        counts = accounting.param_counts(m, 512, 32)
        tokens = t.batch_size * t.seq_len  # 8 x 32, SwiGLU (k = 3), fp32 on this CPU (a = 4)
        expected = (16 * counts["total"] + tokens * m.n_layers * (10 * m.d_model + 3 * m.d_ff) * 4
                    + tokens * 512 * 8)
        assert row["memory"] == expected
        # bf16 activations on a GPU halve that term; fp32 keeps it
        run = runs[row["run_id"]]
        assert train_memory_bytes(run, cuda=True) < expected == train_memory_bytes(run)
    wide = next(r for r in doc["runs"] if r["variant"] == "wide")
    assert wide["memory"] > doc["runs"][0]["memory"]
    assert " memory " in plan(capsys, study_file, "--results", tmp_path).splitlines()[0]


def test_a_run_that_cannot_fit_the_device_is_refused_naming_it(study_file, tmp_path, capsys,
                                                                monkeypatch):
    device_memory.cache_clear()
    monkeypatch.setenv("LMABLATE_DEVICE_MEMORY", "3M")
    try:
        assert main(["plan", str(study_file), "--results", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        wide = next(r for r in read_study(study_file).runs if r.variant == "wide")
        assert err.count("\n") == 1 and err.startswith(f"lmablate: error: {study_file}: run "
                                                        f"{wide.run_id}: training needs about ")
        assert "more than LMABLATE_DEVICE_MEMORY (3.00MB)" in err
        monkeypatch.setenv("LMABLATE_DEVICE_MEMORY", "1G")
        device_memory.cache_clear()
        plan(capsys, study_file, "--results", tmp_path)
        monkeypatch.setenv("LMABLATE_DEVICE_MEMORY", "lots")
        device_memory.cache_clear()
        assert main(["plan", str(study_file)]) == 2
        assert capsys.readouterr().err == ("lmablate: error: LMABLATE_DEVICE_MEMORY: expected a "
                                           "size in bytes such as 80G, got 'lots'\n")
    finally:
        device_memory.cache_clear()


def test_runs_too_big_for_this_machine_are_a_warning_in_plan(study_file, tmp_path, capsys,
                                                             monkeypatch):
    """Planned where it will not train (a laptop, a login node), a study whose runs do not fit
    this machine still gets its table, with one warning line; only a run no single device holds
    is refused without LMABLATE_DEVICE_MEMORY."""
    import lmablate.study.plan as plan_mod

    monkeypatch.delenv("LMABLATE_DEVICE_MEMORY", raising=False)
    monkeypatch.setattr(plan_mod, "device_memory", lambda: (3 << 20, "this machine's RAM", False))
    assert main(["plan", str(study_file), "--results", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    wide = next(r for r in read_study(study_file).runs if r.variant == "wide")
    assert wide.run_id in out
    assert err.count("\n") == 1 and err.startswith(f"lmablate: warning: {study_file}: ")
    assert f"(run {wide.run_id}): they cannot train here" in err


def test_config_overrides_change_the_plan(study_file, tmp_path, capsys):
    doc = json.loads(plan(capsys, study_file, "--format", "json", "--results", tmp_path,
                          "--config", "defaults.train.tokens=20480", "-C", "sweep.seeds=[0]"))
    assert [r["tokens"] for r in doc["runs"]] == [20_480, 20_480]


def test_wall_time_comes_from_the_measured_flop_rate(study_file, tmp_path, capsys):
    runs = read_study(study_file).runs
    done = runs[0]
    run_dir = tmp_path / "results" / "p" / "runs" / done.run_id
    run_dir.mkdir(parents=True)
    fpt = accounting.flops_per_token(done.config.model, 512, 32)
    (run_dir / "final.json").write_text(json.dumps({"tokens_per_s": 5000.0,
                                                    "flops_per_token": fpt}))
    doc = json.loads(plan(capsys, study_file, "--format", "json", "--results",
                          tmp_path / "results"))
    rate = 5000.0 * fpt
    for row in doc["runs"]:
        assert row["done"] == (row["run_id"] == done.run_id)
        assert row["est_seconds"] == pytest.approx(row["flops"] / rate)
    wide = [r for r in doc["runs"] if r["variant"] == "wide"]
    assert wide[0]["est_seconds"] > doc["runs"][0]["est_seconds"]  # a bigger model takes longer
    remaining = sum(r["est_seconds"] for r in doc["runs"][1:])
    assert doc["totals"]["est_seconds"] == pytest.approx(remaining)
    out = plan(capsys, study_file, "--results", tmp_path / "results")
    assert f"{done.run_id}" in out and ", 1 already done" in out and "at the measured rate" in out
    for r in runs[1:]:
        (tmp_path / "results" / "p" / "runs" / r.run_id).mkdir()
        (tmp_path / "results" / "p" / "runs" / r.run_id / "final.json").write_text("{}")
    out = plan(capsys, study_file, "--results", tmp_path / "results")
    last = out.rstrip().splitlines()[-1]
    assert "4 already done" in last and last.endswith("; nothing left to train")


def test_tokens_per_second_flag(study_file, tmp_path, capsys):
    doc = json.loads(plan(capsys, study_file, "--format", "json", "--results", tmp_path,
                          "--tokens-per-second", "1024"))
    assert [r["est_seconds"] for r in doc["runs"]] == [10.0] * 4


def _study(**train):
    import copy

    doc = copy.deepcopy(STUDY)
    doc["defaults"]["train"].update(train)
    return study_from_dict(doc)


def test_train_runtime_is_the_planned_tokens_at_the_rate_with_margin_and_floor():
    run = _study().runs[0]
    assert planned_tokens(run) == 10_240  # 10_000 rounded up to whole steps of 8 x 32
    assert train_runtime_min(run, 1.0) == math.ceil(2 * 10_240 / 60)
    assert train_runtime_min(run, 1.0, margin=1.0) == math.ceil(10_240 / 60)
    assert train_runtime_min(run, 1e6) == 30  # a short run gets the floor
    assert train_runtime_min(run, 1e6, floor=5) == 5
    # a measured FLOP rate becomes this run's tokens/s: a bigger model gets a longer limit
    base, wide = [r for r in _study(tokens=10**9).runs if r.seed == 0]
    fpt = accounting.flops_per_token(base.config.model, 512, 32)
    assert train_runtime_min(base, ("flops", 1e4 * fpt)) == train_runtime_min(base, 1e4)
    assert train_runtime_min(wide, ("flops", 1e4 * fpt)) > train_runtime_min(base, 1e4)
    assert train_runtime_min(base, ("tokens", 1e4)) == train_runtime_min(base, 1e4)


def test_train_runtime_default_rate_is_slow_and_epoch_budgets_get_a_fixed_limit():
    run = _study(tokens=10**9).runs[0]
    rate = min(DEFAULT_TRAIN_TOKENS_PER_S, DEFAULT_TRAIN_FLOPS_PER_S /
               accounting.flops_per_token(run.config.model, 512, 32))
    assert train_runtime_min(run) == math.ceil(2 * planned_tokens(run) / rate / 60)
    epochs = _study(epochs=2).runs[0]
    assert planned_tokens(epochs) is None
    assert train_runtime_min(epochs, 1e4) == DEFAULT_TRAIN_RUNTIME_MIN
    with pytest.raises(ValueError, match="throughput"):
        train_runtime_min(run, 0.0)


def test_study_train_rate_prefers_the_study_then_finished_runs(tmp_path):
    study = _study()
    assert study_train_rate(study, tmp_path) is None  # nothing known: the default applies
    run_dir = tmp_path / "p" / "runs" / study.runs[0].run_id
    run_dir.mkdir(parents=True)
    (run_dir / "final.json").write_text(json.dumps({"tokens_per_s": 5000.0,
                                                    "flops_per_token": 1e6}))
    assert study_train_rate(study, tmp_path) == ("flops", 5e9)
    doc = {**STUDY, "execution": {"tokens_per_s": 2000}}
    assert study_train_rate(study_from_dict(doc), tmp_path) == 2000.0
    with pytest.raises(ConfigError, match="execution.tokens_per_s"):
        study_from_dict({**STUDY, "execution": {"tokens_per_s": 0.5}})


def test_solve_prints_dims_within_tolerance(capsys):
    assert main(["solve", "--params", "10M", "--embedding-share", "0.35", "--glu-expansion",
                 "2.66", "--vocab", "16000", "--format", "json"]) == 0
    sol = json.loads(capsys.readouterr().out)
    model = ModelConfig(d_model=sol["d_model"], n_layers=sol["n_layers"], d_ff=sol["d_ff"],
                        n_heads=4)
    total = accounting.param_counts(model, 16000, 512)["total"]
    assert total == sol["total"] and abs(total - 10_000_000) <= 50_000
    assert abs(sol["embedding_share"] - 0.35) <= 0.02
    assert main(["solve", "--params", "10M", "--embedding-share", "0.35", "--vocab", "16000"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("d_model=") and "from the target" in out


def test_solve_rejects_an_unreachable_target_in_one_line(capsys):
    assert main(["solve", "--params", "10M", "--embedding-share", "0.99", "--vocab", "16000"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("lmablate: error: params_target: 10.00M cannot be met")
    assert "nearest achievable is" in err


# --------------------------------------------------------------------------------------------------
# two-phase ranking: what phase 2 receives from phase 1

PHASE1 = [
    {"run_id": "emb25-s0", "axis": "embedding", "status": "completed", "val_loss": 3.10},
    {"run_id": "emb35-s0", "axis": "embedding", "status": "completed", "val_loss": 2.90},
    {"run_id": "emb45-s0", "axis": "embedding", "status": "completed", "val_loss": 2.95},
    {"run_id": "glu2-s0", "axis": "glu", "status": "completed", "val_loss": 3.00},
    {"run_id": "glu3-s0", "axis": "glu", "status": "completed", "val_loss": 3.00},
    {"run_id": "glu4-s0", "axis": "glu", "status": "diverged", "val_loss": 1.00},
    {"run_id": "glu266-s0", "axis": "glu", "status": "stopped_early", "val_loss": 2.00},
    {"run_id": "nan-s0", "axis": "glu", "status": "completed", "val_loss": float("nan")},
]


@pytest.mark.parametrize("k, per, maximize, expected", [
    pytest.param(1, None, False, ["emb35-s0"], id="top-1"),
    pytest.param(3, None, False, ["emb35-s0", "emb45-s0", "glu2-s0"], id="ties-by-run-id"),
    pytest.param(1, "axis", False, ["emb35-s0", "glu2-s0"], id="top-1-per-axis"),
    pytest.param(2, None, True, ["emb25-s0", "glu2-s0"], id="maximize"),
    pytest.param(99, None, False, ["emb35-s0", "emb45-s0", "glu2-s0", "glu3-s0", "emb25-s0"],
                 id="fewer-than-k"),
])
def test_select_top_k_is_exactly_the_best_finished_runs(k, per, maximize, expected):
    assert select_top_k(PHASE1, k, "val_loss", per=per, maximize=maximize) == expected


def test_select_top_k_reads_the_harvested_table():
    table = pd.DataFrame(PHASE1)
    assert select_top_k(table, 2) == ["emb35-s0", "emb45-s0"]
    assert select_top_k(table.iloc[5:7], 1) == []  # nothing finished: nothing goes on


@pytest.mark.parametrize("k, metric, message", [
    pytest.param(0, "val_loss", "select.top_k: expected an integer k >= 1", id="k-zero"),
    pytest.param(1, "val_los", "select.metric: no column 'val_los'", id="metric-typo"),
])
def test_select_top_k_rejects_bad_arguments(k, metric, message):
    with pytest.raises(ConfigError, match=message):
        select_top_k(PHASE1, k, metric)


TASKS = {"tasks": ["sst2", {"name": "continuation", "limit": 300}], "mode": "both",
         "limit": 500, "harness": {"tasks": ["arc_easy"], "limit": 100}}


def test_plan_lists_the_downstream_tasks_and_the_runs_they_score(tmp_path, capsys):
    """eval_tasks: every score a run gets (zero-shot, fine-tuned, harness) with its rows, on
    every run; once runs are scored, the rows they scored and the median time per run, and the
    scoring time left; the json holds the same."""
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({**STUDY, "eval_tasks": TASKS}))
    results = tmp_path / "results"
    out = plan(capsys, path, "--results", results)
    section = out[out.index("downstream tasks"):].splitlines()
    assert section[0] == "downstream tasks (eval_tasks): scored on every run once it has " \
                         "trained (4 runs)"
    assert [line.split()[:2] for line in section[1:6]] == [
        ["task", "evaluation"], ["sst2", "zero-shot"], ["sst2_ft", "fine-tuned,"],
        ["continuation", "zero-shot"], ["arc_easy", "lm-eval"]]
    assert "fine-tuned, 3 epochs on <= 2,000 train rows  <= 500" in section[3]
    assert section[4].split()[-3:] == ["<=", "300", "-"]  # its own limit
    # two runs scored: the rows they scored, the median time per run
    study = read_study(path)
    for run, wall in zip(study.runs[:2], (2.0, 4.0)):
        d = results / "p" / "runs" / run.run_id
        d.mkdir(parents=True)
        (d / "tasks.json").write_text(json.dumps({"status": "completed", "tasks": {
            "sst2": {"n": 500, "wall_s": wall}, "sst2_ft": {"n": 500, "wall_s": 10 * wall},
            "continuation": {"n": 120, "wall_s": wall / 2}}}))
    out = plan(capsys, path, "--results", results)
    section = out[out.index("downstream tasks"):].splitlines()
    assert section[0].endswith("(4 runs); 2 already scored")
    rows = {line.split()[0]: line for line in section[2:6]}
    assert rows["sst2"].endswith("500          3s (n=2)")
    assert rows["sst2_ft"].endswith("500          30s (n=2)")
    assert rows["continuation"].endswith("120          2s (n=2)")  # 1.5 s, its corpus's rows
    assert rows["arc_easy"].endswith("<= 100       -")  # the harness has not run
    assert section[6] == "  time per run: the median over the runs already scored (n); - " \
                         "until one is"
    doc = json.loads(plan(capsys, path, "--results", results, "--format", "json"))
    tasks = {t["key"]: t for t in doc["eval_tasks"]["tasks"]}
    assert tasks["sst2"]["seconds"] == 3.0 and tasks["continuation"]["rows"] == 120
    assert doc["eval_tasks"]["runs"] == 4 and doc["eval_tasks"]["scored"] == 2
    # every score measured (no harness): the time the two unscored runs will take
    path.write_text(yaml.safe_dump({**STUDY, "eval_tasks": {**TASKS, "harness": {}}}))
    out = plan(capsys, path, "--results", results)
    assert out.splitlines()[-1] == "  about 69s of task scoring left (2 runs at the measured times)"


def test_plan_of_a_two_phase_study_scores_tasks_on_the_selected_runs_only(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({**STUDY, "eval_tasks": {"tasks": ["continuation"]},
                                    "ranking": {"tokens": 2048, "top_k": 1}}))
    out = plan(capsys, path, "--results", tmp_path / "results")
    assert "downstream tasks (eval_tasks): scored only on the phase-2 runs phase 1 selects (at " \
           "most 1 of 4 phase-2 runs), never on phase-1 runs" in out
    assert out.splitlines()[-2].split() == ["continuation", "zero-shot", "all", "-"]
    # once its rows are prepared (resources/ beside results/), the plan counts them
    from lmablate.evaluation.steps import study_eval

    prepared = tmp_path / study_eval(read_study(path)).task_file("continuation")
    prepared.parent.mkdir(parents=True)
    prepared.write_text(json.dumps({"name": "continuation", "rows": {"eval": 1234}}))
    out = plan(capsys, path, "--results", tmp_path / "results")
    assert out.splitlines()[-2].split() == ["continuation", "zero-shot", "1,234", "-"]
