"""The ``logging:`` block of a study: which experiment trackers each run logs to.

    logging:
      tensorboard: true                          # results/<study>/tensorboard/<run_id>/
      mlflow: {tracking_uri: sqlite:///mlflow.db} # experiment = the study, run name = run ID
      wandb: {project: my-project, mode: offline} # group = the study, name and id = run ID

:func:`check_logging` checks the block while the study loads (known backends and settings, the
backend installed); :mod:`lmablate.engine.tracking` opens the trackers a run logs to.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import Any

from lmablate.errors import ConfigError
from lmablate.study.config import unknown_key

__all__ = ["BACKENDS", "WANDB_MODES", "check_logging", "require"]

# backend -> (module imported, extra that installs it, its settings and what they mean)
BACKENDS: dict[str, tuple[str, str, dict[str, str]]] = {
    "tensorboard": ("tensorboard", "tensorboard", {
        "dir": "Folder of the study's event files, one subfolder per run "
               "(default results/<study>/tensorboard)."}),
    "mlflow": ("mlflow", "mlflow", {
        "tracking_uri": "Where runs go (default: MLflow's, MLFLOW_TRACKING_URI or "
                        "sqlite:///mlflow.db); a file: URI is MLflow's local file store.",
        "experiment": "Experiment name (default: the study)."}),
    "wandb": ("wandb", "wandb", {
        "project": "W&B project (default: lmablate).",
        "entity": "W&B entity (team or user; default: yours).",
        "mode": "online, offline (files under dir/wandb, `wandb sync` later) or disabled "
                "(default: WANDB_MODE, else online).",
        "dir": "Folder that holds wandb/ (default: WANDB_DIR, else the working directory).",
        "tags": "Tags of every run (a list of strings)."}),
}
WANDB_MODES = ("online", "offline", "disabled")


def check_logging(value: Any) -> dict[str, dict[str, Any]]:
    """The checked ``logging:`` block: ``{backend: settings}`` of the backends switched on
    (``true`` or a mapping; ``false``/null switch one off). One-line :class:`ConfigError` for an
    unknown backend or setting, a wrong type, or a backend that is not installed."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"expected a mapping of trackers, got {value!r}", key="logging")
    out = {}
    for backend, settings in value.items():
        key = f"logging.{backend}"
        if backend not in BACKENDS:
            raise unknown_key(str(backend), BACKENDS, key)
        if settings is None or settings is False:
            continue
        if settings is True:
            settings = {}
        if not isinstance(settings, Mapping):
            raise ConfigError(f"expected true, false or a mapping, got {settings!r}", key=key)
        out[backend] = _settings(backend, dict(settings))
        require(backend)
    return out


def _settings(backend: str, settings: dict[str, Any]) -> dict[str, Any]:
    """One backend's checked settings (known names, strings; ``tags`` a list of strings), without
    those set to null."""
    known = BACKENDS[backend][2]
    for name, val in settings.items():
        key = f"logging.{backend}.{name}"
        if name not in known:
            raise unknown_key(str(name), known, key)
        if name == "tags":
            if not isinstance(val, list) or not all(isinstance(t, str) for t in val):
                raise ConfigError(f"expected a list of strings, got {val!r}", key=key)
        elif val is not None and not isinstance(val, str):
            raise ConfigError(f"expected a string, got {val!r}", key=key)
        if name == "mode" and val not in (None, *WANDB_MODES):
            raise ConfigError(f"expected one of {', '.join(WANDB_MODES)}, got {val!r}", key=key)
    return {k: v for k, v in settings.items() if v is not None}


def require(backend: str) -> None:
    """A one-line error naming the extra to install when ``backend``'s package is missing."""
    module, extra, _ = BACKENDS[backend]
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"{module} is not installed: pip install 'lmablate[{extra}]'",
                          key=f"logging.{backend}")
