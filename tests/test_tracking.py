"""Experiment trackers (lmablate.engine.tracking): each backend, read back with its own reader,
after a
run that is interrupted and resumed; the study's `logging:` block and its one-line errors."""

from __future__ import annotations

import json
import math
import struct
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_STUDY

from lmablate import from_dict, read_study
from lmablate.engine.tracking import STATE_FILE
from lmablate.engine.train import train
from lmablate.errors import ConfigError
from lmablate.study.config import RunConfig
from lmablate.study.load import study_from_dict
from lmablate.study.logging_spec import check_logging

# 40 steps: train records at 1, 5, 10, ..., 40; validation at 10, 20, 30, 40; checkpoints every 4
TRAIN = {"tokens": 10240, "batch_size": 8, "seq_len": 32, "lr": 3e-3, "eval_every": 10,
         "eval_tokens": 2048, "log_every": 5, "checkpoint_every": 4}
RUN_ID = "tiny-d_model=32-s0-0123abcd"


def run_config() -> RunConfig:
    return from_dict(RunConfig, {"model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64},
                                 "train": TRAIN, "tokenizer": {"vocab_size": 320}})


def train_interrupted(tmp_path: Path, tokens: Path, logging: dict) -> tuple[dict, list[dict]]:
    """Train with ``logging``, stopped at step 6 (after logging step 5, checkpointed at step 4),
    then resumed to the end. Returns final.json and the metrics.jsonl records."""
    torch.set_num_threads(1)
    out, ckpt = tmp_path / "run", tmp_path / "ckpt"
    kw = {"ckpt_dir": ckpt, "run_id": RUN_ID, "meta": {"study": "demo"}, "progress": False,
          "tracking": logging}
    assert train(run_config(), tokens, out, stop_after_steps=6, **kw)["status"] == "stopped"
    assert (ckpt / STATE_FILE).is_file()
    time.sleep(1)  # W&B names an offline attempt's folder by the second it started
    final = train(run_config(), tokens, out, **kw)
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return final, records


def curve(records: list[dict], split: str) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in records if r["split"] == split]


def assert_curve(got: list[tuple[int, float]], records: list[dict], split: str) -> None:
    """``got`` is the loss curve of metrics.jsonl: the same steps, each once, the same values
    (to float32, the precision TensorBoard stores)."""
    want = curve(records, split)
    assert [s for s, _ in got] == [s for s, _ in want]
    assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6)


def test_tensorboard_events_hold_curves_config_and_final_metrics(tmp_path, tokens):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    final, records = train_interrupted(tmp_path, tokens, {"tensorboard": {"dir": str(tmp_path /
                                                                                      "tb")}})
    events = EventAccumulator(str(tmp_path / "tb" / RUN_ID), size_guidance={"tensors": 0})
    events.Reload()
    # step 5, logged by the interrupted attempt and again after the resume, is there once
    for split in ("train", "val"):
        got = [(e.step, e.value) for e in events.Scalars(f"{split}/loss")]
        assert_curve(got, records, split)
    assert [e.step for e in events.Scalars("train/lr")] == [1, 5, 10, 15, 20, 25, 30, 35, 40]
    assert events.Scalars("final/val_loss")[-1].value == pytest.approx(final["val_loss"])
    assert events.Scalars("final/params.total")[-1].value == final["params"]["total"]
    text = events.Tensors("config/text_summary")[-1].tensor_proto.string_val[0].decode()
    config = yaml.safe_load(text.strip("`\n"))
    assert config["run_id"] == RUN_ID and config["study"] == "demo"
    assert config["model"]["d_model"] == 32
    # the HParams dashboard's session of this run: its config and final metrics
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    session = HParamsPluginData.FromString(content).session_start_info
    assert session.hparams["model.d_model"].number_value == 32
    assert session.hparams["train.schedule"].string_value == "cosine"


def test_mlflow_file_store_holds_one_run_resumed(tmp_path, tokens):
    from mlflow.tracking import MlflowClient

    uri = f"file:{tmp_path / 'mlruns'}"
    final, records = train_interrupted(tmp_path, tokens, {"mlflow": {"tracking_uri": uri}})
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("demo")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1  # the resumed attempt continued the run
    run = runs[0]
    assert run.info.run_name == RUN_ID and run.info.status == "FINISHED"
    assert run.data.tags["lmablate.status"] == "completed"
    assert run.data.params["model.d_model"] == "32" and run.data.params["run_id"] == RUN_ID
    for split in ("train", "val"):
        history = sorted((m.step, m.value) for m in
                         client.get_metric_history(run.info.run_id, f"{split}/loss"))
        assert_curve(history, records, split)
    assert run.data.metrics["final/val_loss"] == pytest.approx(final["val_loss"])
    assert run.data.metrics["final/tokens"] == final["tokens"]
    artifacts = Path(run.info.artifact_uri.removeprefix("file://").removeprefix("file:"))
    assert yaml.safe_load((artifacts / "config.yaml").read_text())["train"]["log_every"] == 5
    assert json.loads((artifacts / "final.json").read_text())["status"] == "completed"


def wandb_records(path: Path) -> list:
    """The protobuf records of a ``.wandb`` file: W&B's record protos in LevelDB's log format
    (a 7-byte file header, 32 KiB blocks of chunks, each a crc32, a length and a chunk type)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, out, buf = path.read_bytes(), [], b""
    assert data[:4] == b":W&B"
    pos, block = 7, 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            break
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = pb.Record()
            record.ParseFromString(buf)
            out.append(record)
            buf = b""
    return out


def test_wandb_offline_files_hold_curves_config_and_summary(tmp_path, tokens, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")  # and no network, whatever the settings say
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):  # nothing in ~
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    wdir = tmp_path / "wb"
    final, records = train_interrupted(tmp_path, tokens, {"wandb": {
        "project": "lmablate-test", "mode": "offline", "dir": str(wdir), "tags": ["t1"]}})
    import wandb

    wandb.teardown()  # W&B's service writes the files; this waits for it (as exiting does)
    attempts = sorted(wdir.glob("wandb/offline-run-*"))
    assert len(attempts) == 2  # the interrupted attempt and the resumed one, same run id
    history, summary, runs = {}, {}, []
    for attempt in attempts:
        for rec in wandb_records(next(attempt.glob("run-*.wandb"))):
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                runs.append(rec.run)
            elif kind == "history":
                row = {i.nested_key[0] if i.nested_key else i.key: json.loads(i.value_json)
                       for i in rec.history.item}
                history.setdefault(row["_step"], {}).update(row)
            elif kind == "summary":
                summary.update({u.nested_key[0] if u.nested_key else u.key:
                                json.loads(u.value_json) for u in rec.summary.update})
    assert {(r.run_id, r.display_name, r.run_group, r.project) for r in runs} == \
        {(RUN_ID, RUN_ID, "demo", "lmablate-test")}
    config = {u.key: json.loads(u.value_json) for u in runs[0].config.update}
    assert config["model"]["d_model"] == 32 and config["study"] == "demo"
    assert list(runs[0].tags) == ["t1"]
    for split in ("train", "val"):
        got = [(s, row[f"{split}/loss"]) for s, row in sorted(history.items())
               if f"{split}/loss" in row]
        assert_curve(got, records, split)
    assert summary["final/val_loss"] == pytest.approx(final["val_loss"])
    assert summary["status"] == "completed"


def test_trackers_leave_the_run_and_its_metrics_unchanged(tmp_path, tokens):
    """Logging is not part of the run: same run IDs with or without it, same results."""
    plain = read_study_doc(tmp_path, None)
    logged = read_study_doc(tmp_path, {"tensorboard": True, "wandb": {"mode": "offline"}})
    assert [r.run_id for r in plain.runs] == [r.run_id for r in logged.runs]
    assert logged.doc["logging"] == {"tensorboard": {}, "wandb": {"mode": "offline"}}
    torch.set_num_threads(1)
    ref = train(run_config(), tokens, tmp_path / "ref", run_id=RUN_ID, progress=False)
    final, _ = train_interrupted(tmp_path, tokens, {"tensorboard": {"dir": str(tmp_path / "tb")}})
    assert final["val_loss"] == ref["val_loss"] and final["steps"] == ref["steps"]
    assert not math.isnan(final["val_loss"])


def read_study_doc(tmp_path: Path, logging: dict | None):
    doc = {**TINY_STUDY, **({"logging": logging} if logging is not None else {})}
    return study_from_dict(doc, source=str(tmp_path / "study.yaml"))


@pytest.mark.parametrize("logging, message", [
    pytest.param({"tensorbord": True}, "logging.tensorbord: unknown key (did you mean "
                 "'tensorboard'?); expected one of: tensorboard, mlflow, wandb", id="backend"),
    pytest.param({"wandb": {"projet": "x"}}, "logging.wandb.projet: unknown key (did you mean "
                 "'project'?)", id="setting"),
    pytest.param({"wandb": {"mode": "offline-ish"}}, "logging.wandb.mode: expected one of "
                 "online, offline, disabled, got 'offline-ish'", id="mode"),
    pytest.param({"wandb": {"tags": "a"}}, "logging.wandb.tags: expected a list of strings",
                 id="tags"),
    pytest.param({"mlflow": 3}, "logging.mlflow: expected true, false or a mapping, got 3",
                 id="value"),
    pytest.param(["tensorboard"], "logging: expected a mapping of trackers", id="list"),
])
def test_a_bad_logging_block_is_one_line_naming_the_key(tmp_path, logging, message):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**TINY_STUDY, "logging": logging}))
    with pytest.raises(ConfigError) as err:
        read_study(path)
    assert str(err.value).startswith(f"{path}: {message}")
    assert "\n" not in str(err.value)


def test_a_missing_backend_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # how Python spells "not installed"
    with pytest.raises(ConfigError, match=r"^logging\.wandb: wandb is not installed: "
                                          r"pip install 'lmablate\[wandb\]'$"):
        check_logging({"wandb": {"mode": "offline"}})
    assert check_logging({"wandb": False, "tensorboard": None}) == {}


@pytest.mark.workflow
@pytest.mark.slow
def test_the_workflow_logs_every_run_and_logging_never_reruns_a_run(tmp_path, tiny_study):
    """Snakemake's training jobs get the study's resolved `logging:` block (here from an
    included base study); editing it later plans no training job."""
    from conftest import planned, snakemake, write_yaml
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tiny_study["sweep"]["seeds"] = [0]
    write_yaml(tmp_path / "base.yaml", {"logging": {"tensorboard": True}})
    write_yaml(tmp_path / "study.yaml", {"include": "base.yaml", **tiny_study})
    runs = read_study(tmp_path / "study.yaml").by_id
    finals = [f"results/tiny/runs/{rid}/final.json" for rid in runs]
    snakemake(tmp_path, "-c2", *finals)
    for rid in runs:
        metrics = tmp_path / "results/tiny/runs" / rid / "metrics.jsonl"
        records = [json.loads(x) for x in metrics.read_text().splitlines()]
        events = EventAccumulator(str(tmp_path / "results/tiny/tensorboard" / rid))
        events.Reload()
        assert_curve([(e.step, e.value) for e in events.Scalars("val/loss")], records, "val")
    write_yaml(tmp_path / "base.yaml", {"logging": {"wandb": {"mode": "offline"}}})
    rules, run_ids = planned(tmp_path, *finals)
    assert not run_ids and "train_model" not in rules
