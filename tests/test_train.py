"""The training loop: outputs, determinism, resume after SIGKILL, divergence, preemption."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import COMPARED, TINY_STUDY, TRAIN, assert_same_run, run_config, write_yaml

from lmablate import read_study
from lmablate.engine.checkpoint import list_checkpoints
from lmablate.engine.schedule import get_lr, make_plan
from lmablate.engine.train import EXIT_PREEMPTED, train


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = run_config(lr=1e-3, warmup=0.1, min_lr_ratio=0.1)
    plan = make_plan(cfg)
    assert plan.total_steps == 40 and plan.warmup_steps == 4
    lrs = [get_lr(s, cfg, plan) for s in range(plan.total_steps)]
    assert lrs[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert max(lrs) == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))  # monotone decay after warmup
    assert get_lr(plan.total_steps, cfg, plan) == pytest.approx(1e-4)
    const = run_config(schedule="constant", warmup=0)
    assert {get_lr(s, const, make_plan(const)) for s in range(40)} == {3e-3}


def test_training_writes_every_output_and_learns(tmp_path, tokens):
    torch.set_num_threads(1)
    final = train(run_config(), tokens, tmp_path / "run", run_id="r1", progress=False)
    assert final["status"] == "completed" and final["steps"] == 40
    records = [json.loads(line) for line in
               (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["loss"] for r in records if r["split"] == "train"]
    assert train_losses[-1] < train_losses[0] - 0.5
    val = [r for r in records if r["split"] == "val"]
    assert [r["step"] for r in val] == [10, 20, 30, 40]
    for key in ("loss", "ppl", "acc", "top5", "ece", "confidence", "entropy"):
        assert all(math.isfinite(r[key]) for r in val), key
    assert final["val_ppl"] == pytest.approx(math.exp(final["val_loss"]))
    assert 0 < final["val_acc"] <= final["val_top5"] <= 1
    assert final["params"]["total"] > 0 and final["tokens_per_s"] > 0
    assert "latency_ms_seq128" not in final  # seq 128 exceeds this model's 32-token context
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    assert state["global_step"] == 40 and state["max_steps"] == 40
    assert state["best_metric"] == pytest.approx(final["best_val_loss"])
    logs = [h for h in state["log_history"] if "loss" in h]
    evals = [h for h in state["log_history"] if "eval_loss" in h]
    assert {"loss", "learning_rate", "step", "epoch"} <= set(logs[0])
    assert [h["step"] for h in evals] == [10, 20, 30, 40]
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "run" / "model.safetensors")
    assert sum(v.numel() for v in weights.values()) == final["params"]["total"]


def test_same_seed_same_result_other_seed_differs(tmp_path, tokens):
    torch.set_num_threads(1)
    a = train(run_config(tokens=2560), tokens, tmp_path / "a", run_id="a", progress=False)
    b = train(run_config(tokens=2560), tokens, tmp_path / "b", run_id="b", progress=False)
    c = train(run_config(tokens=2560, seed=1), tokens, tmp_path / "c", run_id="c", progress=False)
    assert a["val_loss"] == b["val_loss"]
    assert a["val_loss"] != c["val_loss"]


def test_diverging_run_is_recorded_not_raised(tmp_path, tokens):
    torch.set_num_threads(1)
    final = train(run_config(lr=10.0, grad_clip=0.0, warmup=0), tokens, tmp_path / "run",
                  run_id="boom", progress=False)
    assert final["status"] == "diverged"
    assert final["diverged_at_step"] is not None and final["steps"] < 40
    assert (tmp_path / "run" / "model.safetensors").exists()
    assert json.loads((tmp_path / "run" / "final.json").read_text())["status"] == "diverged"


def test_the_token_store_is_closed_however_training_ends(tmp_path, tokens):
    import shutil

    import h5py

    from lmablate.data.tokens import TokenStore

    store = tmp_path / "tokens.h5"
    shutil.copyfile(tokens, store)

    def closed() -> bool:  # HDF5 refuses to open for writing a file this process still reads
        with h5py.File(store, "a"):
            return True

    with TokenStore(store) as opened:
        assert opened.split("train").size > 0
    assert closed()
    torch.set_num_threads(1)
    too_small = {"model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "vocab_size": 64},
                 "train": TRAIN, "tokenizer": {"vocab_size": 320}}
    with pytest.raises(ValueError, match="smaller than the tokenizer's 320") as raised:
        train(too_small, store, tmp_path / "raised", progress=False)
    assert closed() and raised.tb  # closed while the traceback (a notebook keeps it) lives on
    stopped = train(run_config(), store, tmp_path / "stopped", stop_after_steps=2, progress=False)
    assert stopped["status"] == "stopped" and closed()
    done = train(run_config(tokens=512), store, tmp_path / "done", progress=False)
    assert done["status"] == "completed" and closed()


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path, tokens):
    torch.set_num_threads(1)
    ref = train(run_config(), tokens, tmp_path / "ref", run_id="x", progress=False)
    partial = train(run_config(), tokens, tmp_path / "run", run_id="x", progress=False,
                    stop_after_steps=13)
    assert partial["status"] == "stopped"
    ckpts = list_checkpoints(tmp_path / "run" / "ckpt")
    assert len(ckpts) == 2  # keep_checkpoints
    newest = ckpts[0]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # truncated
    final = train(run_config(), tokens, tmp_path / "run", run_id="x", progress=False)
    assert_same_run(final, ref)



def test_on_first_step_is_called_once_per_train_call_fresh_or_resumed(tmp_path, tokens):
    """The hook a GPU slot records its start-up with: once per train() call, fresh or resumed."""
    torch.set_num_threads(1)
    calls = []
    train(run_config(), tokens, tmp_path / "run", run_id="x", progress=False, stop_after_steps=3,
          on_first_step=lambda: calls.append("fresh"))
    train(run_config(), tokens, tmp_path / "run", run_id="x", progress=False,
          on_first_step=lambda: calls.append("resumed"))
    assert calls == ["fresh", "resumed"]


# ---- real processes: the CLI a user (or Snakemake, or Slurm) runs


def _cli_study(tmp_path: Path, **train) -> tuple[Path, str]:
    doc = json.loads(json.dumps(TINY_STUDY))
    doc["defaults"] = {"model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64},
                       "train": {**TRAIN, **train}}
    doc["sweep"] = {"seeds": [0]}
    path = write_yaml(tmp_path / "study.yaml", doc)
    return path, read_study(path).runs[0].run_id


def _cli(tmp_path: Path, study: Path, run_id: str, tokens: Path) -> subprocess.Popen:
    """Start ``lmablate train`` as a real process; its stderr goes to tmp_path/train.<n>.log."""
    n = len(list(tmp_path.glob("train.*.log")))
    with open(tmp_path / f"train.{n}.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lmablate", "train", str(study), run_id, "--tokens",
             str(tokens), "--threads", "1", "--device", "cpu"],
            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=log,
            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    proc.log = tmp_path / f"train.{n}.log"  # type: ignore[attr-defined]
    return proc


def _final(tmp_path: Path, run_id: str) -> dict:
    return json.loads((tmp_path / "results" / "tiny" / "runs" / run_id / "final.json").read_text())


@pytest.mark.slow
def test_sigkill_at_any_point_then_resume_gives_bitwise_equal_results(tmp_path, tokens):
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    study, run_id = _cli_study(ref_dir, checkpoint_every=1)
    proc = _cli(ref_dir, study, run_id, tokens)
    assert proc.wait(timeout=300) == 0, proc.log.read_text()
    ref = _final(ref_dir, run_id)
    ref_curve = (ref_dir / "results/tiny/runs" / run_id / "metrics.jsonl").read_text()

    # kill points: after the checkpoint of step k appears, plus a small delay that lands inside
    # training steps, evaluations and checkpoint writes
    for i, (step, delay) in enumerate([(3, 0.0), (9, 0.05), (10, 0.01), (21, 0.2), (33, 0.03),
                                       (39, 0.0)]):
        work = tmp_path / f"kill{i}"
        work.mkdir()
        study, run_id = _cli_study(work, checkpoint_every=1)
        ckpt = work / "checkpoints" / "tiny" / run_id
        proc = _cli(work, study, run_id, tokens)
        deadline = time.monotonic() + 120
        while not (ckpt / f"step-{step:08d}.pt.sha256").exists():
            assert proc.poll() is None, proc.log.read_text()
            assert time.monotonic() < deadline
            time.sleep(0.005)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not (work / "results/tiny/runs" / run_id / "final.json").exists()
        proc = _cli(work, study, run_id, tokens)
        assert proc.wait(timeout=300) == 0, proc.log.read_text()
        assert "resumed from" in proc.log.read_text()
        final = _final(work, run_id)
        for key in COMPARED:
            assert final[key] == ref[key], (step, key)
        curve = (work / "results/tiny/runs" / run_id / "metrics.jsonl").read_text()
        strip = [{k: v for k, v in json.loads(line).items()
                  if k not in ("tokens_per_s", "eval_s")} for line in curve.splitlines()]
        ref_strip = [{k: v for k, v in json.loads(line).items()
                      if k not in ("tokens_per_s", "eval_s")} for line in ref_curve.splitlines()]
        assert strip == ref_strip, step


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_for_requeue(tmp_path, tokens):
    study, run_id = _cli_study(tmp_path, tokens=40960, checkpoint_every=1000)
    ckpt = tmp_path / "checkpoints" / "tiny" / run_id
    metrics = tmp_path / "results" / "tiny" / "runs" / run_id / "metrics.jsonl"
    proc = _cli(tmp_path, study, run_id, tokens)
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, proc.log.read_text()
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == EXIT_PREEMPTED, proc.log.read_text()
    assert list_checkpoints(ckpt), "no checkpoint written on SIGTERM"
    proc = _cli(tmp_path, study, run_id, tokens)
    assert proc.wait(timeout=300) == 0, proc.log.read_text()
    assert "resumed from" in proc.log.read_text()
    assert _final(tmp_path, run_id)["status"] == "completed"
