"""The training state: everything that changes while a run trains, and all a checkpoint holds.

A checkpoint is :meth:`TrainState.to_checkpoint`'s plain dict (written by
:mod:`lmablate.engine.checkpoint`)::

    model, optimizer, scaler           state dicts (scaler: fp16 only, else None)
    step, tokens_seen                  optimiser steps and training tokens done
    records                            metrics.jsonl's lines so far
    best_val, train_time               lowest validation loss, seconds spent in training steps
    status, diverged_at, worse_since   completed | diverged | stopped_early, and when
    window, epoch_window               (summed train loss tensor, steps) since the last train
                                       line / in this epoch
    rng                                torch, numpy (and CUDA) RNG states
    config, run_id                     the run's resolved config (a resume checks it) and ID

The keys have not changed since the first checkpoints, so those still resume;
``epoch_window`` is optional (absent in checkpoints older than epoch budgets).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["TrainState", "rng_state", "set_rng_state"]


def rng_state() -> dict[str, Any]:
    """The torch, numpy and (where there is a GPU) CUDA RNG states."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore :func:`rng_state`'s states."""
    # the checkpoint is loaded onto the training device; RNG states must be CPU ByteTensors
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        # a run resumed with fewer GPUs visible (each job sees only its own) restores those
        for i, s in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s.cpu(), i)


@dataclass
class TrainState:
    """A run's training state; ``model``, ``optimizer`` and ``scaler`` are the live objects
    training updates, the rest the loop's counters (see the module docstring)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    config: dict[str, Any]  # the run's config as a dict (``to_dict(cfg)``)
    run_id: str
    window_loss: torch.Tensor  # train loss summed since the last train line (0-d, on the device)
    epoch_loss: torch.Tensor  # train loss summed in this epoch (epoch budgets)
    window_n: int = 0
    epoch_n: int = 0
    step: int = 0
    tokens_seen: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)
    best_val: float = math.inf
    train_time: float = 0.0
    status: str = "completed"  # completed | diverged | stopped_early
    diverged_at: int | None = None
    worse_since: int | None = None  # early stopping: tokens since which the run is behind
    resumed_from: str | None = None  # the checkpoint file it was restored from (not saved)

    @classmethod
    def start(cls, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
              scaler: torch.amp.GradScaler | None, config: dict[str, Any], run_id: str,
              device: torch.device) -> TrainState:
        """The state at step 0."""
        return cls(model, optimizer, scaler, config, run_id,
                   window_loss=torch.zeros((), device=device),
                   epoch_loss=torch.zeros((), device=device))

    @classmethod
    def from_checkpoint(cls, ckpt: Mapping[str, Any], model: torch.nn.Module,
                        optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
                        config: dict[str, Any], run_id: str, device: torch.device) -> TrainState:
        """The state a checkpoint holds, loaded into ``model``, ``optimizer`` and ``scaler`` in
        place; the RNGs are set to the checkpoint's. ``config`` and ``run_id`` are the run's
        (phase 2 continues a checkpoint written under the phase-1 settings)."""
        state = cls.start(model, optimizer, scaler, config, run_id, device)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        state.step, state.tokens_seen = ckpt["step"], ckpt["tokens_seen"]
        state.records, state.best_val = ckpt["records"], ckpt["best_val"]
        state.train_time = ckpt.get("train_time", 0.0)
        state.status, state.diverged_at = ckpt.get("status", "completed"), ckpt.get("diverged_at")
        state.worse_since = ckpt.get("worse_since")
        set_rng_state(ckpt["rng"])
        state.window_loss, state.window_n = ckpt["window"][0].to(device), ckpt["window"][1]
        if ckpt.get("epoch_window") is not None:
            state.epoch_loss = ckpt["epoch_window"][0].to(device)
            state.epoch_n = ckpt["epoch_window"][1]
        state.resumed_from = ckpt.get("_path")
        return state

    def to_checkpoint(self) -> dict[str, Any]:
        """The checkpoint's dict (tensors shared with the live state: save it before the next
        step)."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else None, "step": self.step,
                "tokens_seen": self.tokens_seen, "records": self.records,
                "best_val": self.best_val, "train_time": self.train_time, "status": self.status,
                "diverged_at": self.diverged_at, "worse_since": self.worse_since,
                "window": (self.window_loss.detach().clone(), self.window_n),
                "rng": rng_state(),
                "epoch_window": (self.epoch_loss.detach().clone(), self.epoch_n),
                "config": self.config, "run_id": self.run_id}
