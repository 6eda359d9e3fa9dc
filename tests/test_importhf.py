"""import-hf against output written by the real transformers Trainer (seed 000's layout).

A tiny LlamaForCausalLM (hidden 32, one layer) is trained for 10 steps on random sequences on the
CPU, logging every 2 steps, evaluating and saving every 5, into directories named like seed 000's
``{heads}_{layers}_{n}_single_gpu_{hidden}_{inter}_from_scratch_{tag}``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from lmablate.__main__ import main
from lmablate.errors import ConfigError, DataError
from lmablate.interop.importhf import import_hf, latest_state

PATTERN = (r"(?P<heads>\d+)_(?P<layers>\d+)_\d+_single_gpu_(?P<hidden>\d+)_(?P<inter>\d+)"
           r"_from_scratch_.*")
SHAPES = {"2_1_8_single_gpu_32_64_from_scratch_a": (2, 32, 64),
          "4_1_8_single_gpu_32_128_from_scratch_a": (4, 32, 128)}


def train_hf(out: Path, heads: int, hidden: int, inter: int) -> int:
    """Train with transformers.Trainer; returns the model's parameter count."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

    class Random(torch.utils.data.Dataset):
        def __init__(self, n: int, seed: int):
            g = torch.Generator().manual_seed(seed)
            self.x = torch.randint(0, 64, (n, 16), generator=g)

        def __len__(self) -> int:
            return len(self.x)

        def __getitem__(self, i: int) -> dict:
            return {"input_ids": self.x[i], "labels": self.x[i]}

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=64, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=1,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=32))
    args = TrainingArguments(
        output_dir=str(out), max_steps=10, logging_steps=2, eval_strategy="steps", eval_steps=5,
        save_steps=5, per_device_train_batch_size=4, per_device_eval_batch_size=8,
        learning_rate=1e-3, report_to=[], use_cpu=True, dataloader_num_workers=0,
        disable_tqdm=True, seed=0)
    Trainer(model=model, args=args, train_dataset=Random(64, 0),
            eval_dataset=Random(16, 1)).train()
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def hf_runs(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    root = tmp_path_factory.mktemp("hf")
    params = {name: train_hf(root / name, *shape) for name, shape in SHAPES.items()}
    return root, params


@pytest.mark.slow
def test_curves_equal_the_trainer_log_history(hf_runs, tmp_path):
    root, params = hf_runs
    dirs = [root / name for name in SHAPES]
    summary = import_hf(dirs, tmp_path / "out", name_pattern=PATTERN)
    runs = pd.read_parquet(tmp_path / "out" / "runs.parquet")
    curves = pd.read_parquet(tmp_path / "out" / "curves.parquet")
    for name in SHAPES:
        state = json.loads((root / name / "checkpoint-10" / "trainer_state.json").read_text())
        history = state["log_history"]
        c = curves[curves.run_id == name]

        def curve(split: str, metric: str, c=c) -> list[tuple[int, float]]:
            s = c[(c.split == split) & (c.metric == metric)]
            return list(zip(s.step.tolist(), s.value.tolist()))

        assert curve("train", "loss") == [(e["step"], e["loss"]) for e in history if "loss" in e]
        assert curve("train", "lr") == [(e["step"], e["learning_rate"]) for e in history
                                        if "learning_rate" in e]
        assert curve("train", "grad_norm") == [(e["step"], e["grad_norm"]) for e in history
                                               if "grad_norm" in e]
        assert curve("val", "loss") == [(e["step"], e["eval_loss"]) for e in history
                                        if "eval_loss" in e]
        assert [s for s, _ in curve("val", "loss")] == [5, 10]
        row = runs[runs.run_id == name].iloc[0]
        heads, hidden, inter = SHAPES[name]
        assert (row.heads, row.layers, row.hidden, row.inter) == (heads, 1, hidden, inter)
        assert (row["model.d_model"], row["model.d_ff"], row["model.n_heads"]) == (
            hidden, inter, heads)
        assert row.params_total == params[name]
        assert row.steps == 10 and row.status == "completed" and row.checkpoint == "checkpoint-10"
        assert row.val_loss == history[-1]["eval_loss"]
    assert summary["n_runs"] == 2 and len(summary["ranking"]) == 2
    # heads and inter vary together (two runs: no grid, no heatmap, but loss against each
    # numeric axis of the name pattern); no calibration or throughput data in a Trainer state
    assert {p.name for p in (tmp_path / "out" / "plots").iterdir()} == {
        "loss_curves.png", "final_val_loss.png", "final_val_ppl.png", "loss_vs_axis.png"}
    assert "Ranking by final validation loss" in (tmp_path / "out" / "analysis.txt").read_text()


@pytest.mark.slow
def test_a_run_still_training_is_ranked_at_common_progress(hf_runs, tmp_path):
    root, _ = hf_runs
    early = tmp_path / "8_1_8_single_gpu_32_64_from_scratch_b"
    shutil.copytree(root / "2_1_8_single_gpu_32_64_from_scratch_a" / "checkpoint-5",
                    early / "checkpoint-5")
    summary = import_hf([root / "2_1_8_single_gpu_32_64_from_scratch_a", early],
                        tmp_path / "out", name_pattern=PATTERN, plots=False)
    assert summary["runs"][early.name]["status"] == "in_progress"
    assert summary["progress"]["column"] == "step" and summary["progress"]["at"] == 5
    assert "every run reached" in (tmp_path / "out" / "analysis.txt").read_text()


@pytest.mark.slow
def test_cli(hf_runs, tmp_path, capsys):
    root, _ = hf_runs
    rc = main(["import-hf", *(str(root / n) for n in SHAPES), "--name-pattern", PATTERN,
               "--out", str(tmp_path / "cli"), "--no-plots"])
    assert rc == 0
    assert "2 runs ->" in capsys.readouterr().out
    assert (tmp_path / "cli" / "RESULTS.md").is_file()


def test_latest_checkpoint_by_global_step(tmp_path):
    for step in (500, 1500, 1000):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        (d / "trainer_state.json").write_text(json.dumps({"global_step": step,
                                                          "log_history": []}))
    assert latest_state(tmp_path).parent.name == "checkpoint-1500"


def test_dir_without_trainer_state_is_a_one_line_error(tmp_path, capsys):
    run = tmp_path / "10_22_160_240"
    (run / "checkpoint-20000").mkdir(parents=True)
    with pytest.raises(DataError, match=r"10_22_160_240: no trainer_state.json"):
        import_hf([run], tmp_path / "out", name_pattern=r"(?P<heads>\d+)_.*")
    rc = main(["import-hf", str(run), "--name-pattern", r"(?P<heads>\d+)_.*", "--out",
               str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and f"{run}: no trainer_state.json" in err


def test_name_and_pattern_errors(tmp_path):
    run = tmp_path / "abc"
    run.mkdir()
    with pytest.raises(DataError, match=r"abc: the name 'abc' does not match --name-pattern"):
        import_hf([run], tmp_path / "out", name_pattern=r"(?P<heads>\d+)")
    with pytest.raises(ConfigError, match="--name-pattern: expected named groups"):
        import_hf([run], tmp_path / "out", name_pattern=r"\d+")
    with pytest.raises(ConfigError, match="--name-pattern: not a valid regular expression"):
        import_hf([run], tmp_path / "out", name_pattern=r"(?P<x")
