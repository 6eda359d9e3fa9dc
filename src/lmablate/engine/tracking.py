"""Experiment trackers: a study's ``logging:`` block sends each run to TensorBoard, MLflow or
Weights & Biases, as Hugging Face Trainer's ``report_to`` does.

    logging:
      tensorboard: true                          # results/<study>/tensorboard/<run_id>/
      mlflow: {tracking_uri: sqlite:///mlflow.db} # experiment = the study, run name = run ID
      wandb: {project: my-project, mode: offline} # group = the study, name and id = run ID

Each run logs its train and validation curves (the records of metrics.jsonl, as ``train/loss``,
``val/loss``, ... against the optimiser step), its resolved config (config.yaml) and its final
metrics (final.json's numbers as ``final/...``). :func:`open_trackers` is called by
:func:`lmablate.engine.train.train`; every backend is imported only when a study asks for it.
The block's backends and settings, and its checks, are :mod:`lmablate.study.logging_spec`'s.

Resume: a run resumed from its checkpoint continues the same tracker run. TensorBoard appends to
the run's folder and purges what the interrupted attempt logged after the checkpoint; MLflow
continues the run whose ID ``tracking.json`` in the checkpoint dir holds; W&B resumes the run
whose id is the run ID. Steps an interrupted attempt logged after its checkpoint are kept once:
TensorBoard keeps the resumed attempt's values, MLflow and W&B the first ones.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lmablate import paths
from lmablate.dicts import flatten
from lmablate.io import atomic_write_json
from lmablate.study.logging_spec import check_logging

__all__ = ["Tracker", "Trackers", "open_trackers"]

STATE_FILE = "tracking.json"  # in the checkpoint dir: the tracker runs a resumed run continues


# --------------------------------------------------------------------------------------------------
# what is logged


def config_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved config as tracker params, ``{"model.d_model": 64, ...}``
    (:func:`lmablate.dicts.flatten`); lists become strings, as trackers take scalars."""
    return {k: str(v) if isinstance(v, (list, tuple)) else v
            for k, v in flatten(config).items() if not isinstance(v, Mapping)}


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def record_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """A metrics.jsonl record as ``{"<split>/<name>": value}`` (numbers only; not the step)."""
    split = record.get("split", "train")
    return {f"{split}/{k}": float(v) for k, v in record.items()
            if k not in ("step", "split") and _number(v)}


def final_metrics(final: Mapping[str, Any]) -> dict[str, float]:
    """final.json's numbers as ``{"final/<name>": value}`` (not its file manifest)."""
    keep = {k: v for k, v in final.items() if k not in ("files", "reliability")}
    return {f"final/{k}": float(v) for k, v in flatten(keep).items() if _number(v)}


# --------------------------------------------------------------------------------------------------
# backends


class Tracker:
    """One backend's run: ``start`` once, ``log`` per metrics.jsonl record, then ``finish`` (the
    run ended and final.json is written) or ``close`` (interrupted; a resume continues it)."""

    def start(self, run_id: str, study: str, config: Mapping[str, Any], *, step: int,
              state: Mapping[str, Any] | None) -> dict[str, Any]:
        """Open the run (``state``: what the previous attempt's ``start`` returned, when the run
        is resumed). Returns what a resumed attempt needs to continue this tracker run."""
        raise NotImplementedError

    def log(self, record: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def finish(self, final: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class TensorBoardTracker(Tracker):
    """Event files under ``dir/<run_id>/`` (torch's SummaryWriter); the config as text, final
    metrics as ``final/*`` scalars and as this run's entry in the HParams dashboard."""

    def __init__(self, settings: Mapping[str, Any], study: str):
        self.root = Path(settings.get("dir") or paths.fill(paths.TENSORBOARD_DIR, study=study))

    def start(self, run_id: str, study: str, config: Mapping[str, Any], *, step: int,
              state: Mapping[str, Any] | None) -> dict[str, Any]:
        import yaml
        from torch.utils.tensorboard import SummaryWriter

        self.config, self.step = config, step
        # purge_step: TensorBoard drops what an earlier attempt logged after step (a resumed run
        # re-runs those steps; a run started over re-runs all of them)
        self.writer = SummaryWriter(str(self.root / run_id), purge_step=step + 1)
        text = yaml.safe_dump(dict(config), sort_keys=False)
        self.writer.add_text("config", "```\n" + text + "```", global_step=step)
        self.writer.flush()
        return {"dir": str(self.root / run_id)}

    def log(self, record: Mapping[str, Any]) -> None:
        self.step = int(record["step"])
        for tag, value in record_metrics(record).items():
            self.writer.add_scalar(tag, value, global_step=self.step)
        self.writer.flush()

    def finish(self, final: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams

        metrics = final_metrics(final)
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, global_step=self.step)
        params = {k: v for k, v in config_params(self.config).items()
                  if isinstance(v, (int, float, str, bool))}
        for summary in hparams(params, {k: v for k, v in metrics.items() if math.isfinite(v)}):
            self.writer.file_writer.add_summary(summary, global_step=self.step)
        self.writer.add_text("status", str(final.get("status")), global_step=self.step)
        self.close()

    def close(self) -> None:
        self.writer.close()


class MLflowTracker(Tracker):
    """A run named by the run ID in the study's experiment: metrics per step, the flattened
    config as params (config.yaml as an artifact), final metrics and final.json at the end."""

    def __init__(self, settings: Mapping[str, Any], study: str):
        self.uri = settings.get("tracking_uri")
        self.experiment = settings.get("experiment") or study
        if self.uri and (self.uri.startswith("file:") or "://" not in self.uri):
            # MLflow >= 3.7 refuses its file store unless asked for it: here it was
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")

    def start(self, run_id: str, study: str, config: Mapping[str, Any], *, step: int,
              state: Mapping[str, Any] | None) -> dict[str, Any]:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(self.uri)
        self.logged: dict[str, int] = {}  # split -> last step the run holds
        if state and state.get("run_id"):
            self.run = state["run_id"]
            self.client.update_run(self.run, status="RUNNING")
            for split in ("train", "val"):
                history = self.client.get_metric_history(self.run, f"{split}/loss")
                self.logged[split] = max((m.step for m in history), default=0)
            return dict(state)
        experiment = self._experiment()
        run = self.client.create_run(experiment, run_name=run_id,
                                     tags={"lmablate.study": study, "lmablate.run_id": run_id})
        self.run = run.info.run_id
        self._log_params(config_params(config))
        self.client.log_dict(self.run, dict(config), "config.yaml")
        return {"run_id": self.run, "tracking_uri": self.client.tracking_uri}

    def _experiment(self) -> str:
        """The experiment's ID, created by the first run (parallel runs may race to create it)."""
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(self.experiment)
        except MlflowException:
            return self.client.get_experiment_by_name(self.experiment).experiment_id

    def _log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run, params=items[i:i + 100])

    def _log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run, metrics=[Metric(k, v, now, step)
                                                 for k, v in metrics.items()])

    def log(self, record: Mapping[str, Any]) -> None:
        step = int(record["step"])
        if step > self.logged.get(str(record.get("split")), 0):  # not logged before a resume
            self._log_metrics(record_metrics(record), step)

    def finish(self, final: Mapping[str, Any]) -> None:
        self._log_metrics(final_metrics(final), int(final.get("steps") or 0))
        self.client.set_tag(self.run, "lmablate.status", str(final.get("status")))
        self.client.log_dict(self.run, dict(final), "final.json")
        self.client.set_terminated(self.run, "FINISHED")

    def close(self) -> None:
        self.client.set_terminated(self.run, "KILLED")


class WandbTracker(Tracker):
    """A W&B run whose name and id are the run ID, grouped by study; config = the resolved
    config, history = the records, summary = final metrics and status."""

    def __init__(self, settings: Mapping[str, Any], study: str):
        self.settings = dict(settings)

    def start(self, run_id: str, study: str, config: Mapping[str, Any], *, step: int,
              state: Mapping[str, Any] | None) -> dict[str, Any]:
        import wandb

        s = self.settings
        if s.get("dir"):
            Path(s["dir"]).mkdir(parents=True, exist_ok=True)
        # console off: the job's stderr is its log file; W&B would wrap it
        self.run = wandb.init(project=s.get("project", "lmablate"), entity=s.get("entity"),
                              group=study, name=run_id, id=_wandb_id(run_id), resume="allow",
                              job_type="train", config=dict(config), tags=s.get("tags"),
                              mode=s.get("mode"), dir=s.get("dir"), reinit="create_new",
                              settings=wandb.Settings(console="off", silent=True))
        return {"id": self.run.id}

    def log(self, record: Mapping[str, Any]) -> None:
        self.run.log(record_metrics(record), step=int(record["step"]))

    def finish(self, final: Mapping[str, Any]) -> None:
        self.run.summary.update({**final_metrics(final), "status": str(final.get("status"))})
        self.run.finish()

    def close(self) -> None:
        self.run.mark_preempting()
        self.run.finish(exit_code=75)


def _wandb_id(run_id: str) -> str:
    """The run ID without the characters W&B refuses in a run id (lmablate's slugs have none)."""
    return "".join("_" if c in ":;,#?/'\\% " else c for c in run_id)


TRACKERS = {"tensorboard": TensorBoardTracker, "mlflow": MLflowTracker, "wandb": WandbTracker}


# --------------------------------------------------------------------------------------------------
# the set of trackers one run logs to


class Trackers:
    """The trackers of one run, driven by :func:`lmablate.engine.train.train`."""

    def __init__(self, trackers: Mapping[str, Tracker]):
        self.trackers = dict(trackers)

    def log(self, record: Mapping[str, Any]) -> None:
        for tracker in self.trackers.values():
            tracker.log(record)

    def finish(self, final: Mapping[str, Any]) -> None:
        for tracker in self.trackers.values():
            tracker.finish(final)
        self.trackers = {}

    def close(self) -> None:
        for tracker in self.trackers.values():
            tracker.close()
        self.trackers = {}


def open_trackers(settings: Mapping[str, Any] | None, *, run_id: str, study: str,
                  config: Mapping[str, Any], state_dir: str | Path, step: int = 0,
                  resumed: bool = False) -> Trackers:
    """Start the trackers of ``settings`` (a study's ``logging:`` block) for one run.

    ``state_dir`` (the checkpoint dir) keeps ``tracking.json``: what each tracker needs to
    continue its run. ``resumed``: the run continues a checkpoint at ``step``; a run that starts
    over starts new tracker runs."""
    chosen = check_logging(settings)
    if not chosen:
        return Trackers({})
    path = Path(state_dir) / STATE_FILE
    saved: dict[str, Any] = {}
    if resumed and path.is_file():
        try:
            saved = json.loads(path.read_text())
        except ValueError:
            saved = {}
    opened, state = {}, {}
    for backend, options in chosen.items():
        tracker = TRACKERS[backend](options, study)
        state[backend] = tracker.start(run_id, study, config, step=step,
                                       state=saved.get(backend))
        opened[backend] = tracker
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, state)
    return Trackers(opened)
