"""Sanity tools run before a study: the LR range test and the overfit-one-batch check.

``lr_range_test``: Smith's range test (Smith 2017, as fastai's ``lr_find`` runs it). The run's
model and optimiser train from their initialisation while the learning rate grows exponentially
from ``min_lr`` to ``max_lr``; the loss is smoothed with a bias-corrected exponential average
(``smooth`` 0.9: fastai's 0.98 lags by ~50 steps, which on a 100-step ramp moves the minimum by
half a decade) and the test stops when it exceeds ``stop_factor`` x its minimum or rises 25%
above where it started (a cross-entropy that starts at ln(vocab) rarely quadruples). Three
LRs are reported: ``lr_steepest`` (where the smoothed loss falls fastest per decade of LR),
``lr_valley`` (the LR of the minimum divided by 10: the usual conservative pick) and
``lr_min_loss``. The headline, ``lr_suggested``, is the steepest-descent LR (:data:`HEADLINE`):
of the three, and of the configured LR, it was closest to the best LR of real short runs.
The test builds its model, optimiser and step with the training step's own setup
(:func:`lmablate.engine.step.build_step`) and writes ``lr_find.json`` (the curve and the
suggestions); it draws nothing: the rule's script and ``lmablate lr-find`` draw ``lr_find.png``
(:func:`lmablate.figures.sweeps.lr_finder`). Nothing is checkpointed; the run itself is not
touched.

How the headline was chosen (``bench/lr_find_check.py``; CPU, 1 thread, 200k-token runs with the
study's cosine schedule; numbers in ``bench/results/2026-12-05-cpu-lr_find_check-*.json`` and
the README's LR-finder table): the range test of the default study's baseline (config.yaml,
seeds 0 and 1) and of a wider, deeper shape of it (d_model 128, 4 layers), then real trainings
at each suggestion, at the configured LR and on a log grid. The steepest-descent LR was within a
factor 1.5 of the grid's best LR in all three (final val loss 0.023 nats above the best on
average); the valley follows the noisy minimum, which moved a decade between seeds (0.045 after
0.0039; 0.45 nats above the best on average, 1.06 at worst); the min-loss LR was always too high.

``overfit_check``: train on one fixed batch of ``tokens`` tokens until the loss falls below
``target`` nats. A model, optimiser and data pipeline that are wired correctly memorise a
single batch quickly; one that cannot has a bug (a mask, a shifted target, an LR of 0, a frozen
layer) that a full run would only reveal as a disappointing curve hours later.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmablate.data.tokens import Batches, TokenStore
from lmablate.engine.step import (
    DeviceBatches,
    StepParts,
    build_step,
    optimizer_step,
    select_device,
)
from lmablate.errors import ConfigError
from lmablate.io import atomic_write_json
from lmablate.study.config import SECTIONS, RunConfig, from_dict, to_dict

__all__ = ["lr_range_test", "overfit_check", "suggest", "HEADLINE"]

HEADLINE = "lr_steepest"  # the suggestion reported as ``lr_suggested`` (see the docstring)


def _config(run: RunConfig | Mapping[str, Any]) -> RunConfig:
    """A RunConfig from itself or a dict (``Run.to_dict()``: identity keys are ignored)."""
    if isinstance(run, RunConfig):
        return run
    return from_dict(RunConfig, {k: v for k, v in run.items() if k in SECTIONS})


def _setup(run: RunConfig | Mapping[str, Any], tokens_path: str | Path, device: str,
           threads: int | None) -> tuple[RunConfig, StepParts, DeviceBatches, torch.device]:
    """(cfg, the step's parts, batches, device) as train() builds them."""
    cfg = _config(run)
    if threads:
        torch.set_num_threads(threads)
    dev = select_device(device)
    with TokenStore(tokens_path) as store:
        vocab = store.vocab_size
        batches = Batches(np.asarray(store.split("train")), cfg.train.seq_len,
                          cfg.train.batch_size, cfg.train.seed)
    parts = build_step(cfg, cfg.model.padded_vocab(vocab),
                       cfg.model.context_length or cfg.train.seq_len, dev)
    return cfg, parts, DeviceBatches(batches, dev), dev


def _step(parts: StepParts, windows: torch.Tensor, lr: float, grad_clip: float) -> float:
    """One optimiser step at ``lr`` on ``windows``; its loss."""
    for group in parts.optimizer.param_groups:
        group["lr"] = lr
    if parts.graphs:
        torch.compiler.cudagraph_mark_step_begin()
    loss, total = parts.loss(windows)
    (parts.scaler.scale(total) if parts.scaler is not None else total).backward()
    optimizer_step(parts.model, parts.optimizer, parts.scaler, grad_clip)
    return float(loss.detach())


def suggest(lrs: list[float], smoothed: list[float]) -> dict[str, float | None]:
    """``lr_steepest``, ``lr_valley``, ``lr_min_loss`` and the headline ``lr_suggested``
    (:data:`HEADLINE`) from a range test's (LR, smoothed loss) curve."""
    lr, loss = np.asarray(lrs, dtype=float), np.asarray(smoothed, dtype=float)
    ok = np.isfinite(loss)
    lr, loss = lr[ok], loss[ok]
    if len(loss) < 5:
        return {"lr_suggested": None, "lr_steepest": None, "lr_valley": None,
                "lr_min_loss": None}
    i_min = int(np.argmin(loss))
    lo = max(1, len(loss) // 10)  # the first points are mostly the average warming up
    slope = np.gradient(loss, np.log10(lr))
    i_steep = lo + int(np.argmin(slope[lo:max(lo + 1, i_min)])) if i_min > lo else i_min
    out = {"lr_steepest": float(lr[i_steep]), "lr_valley": float(lr[i_min] / 10),
           "lr_min_loss": float(lr[i_min])}
    return {"lr_suggested": out[HEADLINE], **out}


def lr_range_test(run: RunConfig | Mapping[str, Any], tokens_path: str | Path,
                  out_dir: str | Path | None = None, *, min_lr: float = 1e-6,
                  max_lr: float = 10.0, steps: int = 100, smooth: float = 0.9,
                  stop_factor: float = 4.0, device: str = "auto", threads: int | None = None,
                  run_id: str = "run", progress: bool = False) -> dict[str, Any]:
    """Run the range test; write ``lr_find.json`` to ``out_dir``. The caller draws it
    (:func:`lmablate.figures.sweeps.lr_finder`)."""
    if not (0 < min_lr < max_lr):
        raise ConfigError(f"expected 0 < min_lr < max_lr, got {min_lr:g} and {max_lr:g}",
                          key="--min-lr")
    if steps < 10:
        raise ConfigError(f"expected at least 10 steps, got {steps}", key="--steps")
    cfg, parts, batches, dev = _setup(run, tokens_path, device, threads)
    parts.model.train()
    lrs, losses, smoothed = [], [], []
    avg, best = 0.0, math.inf
    stopped = "max_lr"
    it = range(steps)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"lr-find {run_id[:30]}", unit="step")
    for i in it:
        lr = min_lr * (max_lr / min_lr) ** (i / (steps - 1))
        loss = _step(parts, batches.get(i), lr, cfg.train.grad_clip)
        avg = smooth * avg + (1 - smooth) * loss
        s = avg / (1 - smooth ** (i + 1))
        lrs.append(lr)
        losses.append(loss)
        smoothed.append(s)
        if not math.isfinite(s):
            stopped = "non-finite loss"
            break
        best = min(best, s)
        if i > 0 and (s > stop_factor * best or s > 1.25 * smoothed[0]):
            stopped = "the loss blew up"
            break
    label = run.get("variant") if isinstance(run, Mapping) else None
    result = {"run_id": run_id, "label": label or run_id, "min_lr": min_lr, "max_lr": max_lr,
              "steps": len(lrs),
              "stopped": stopped, "smooth": smooth, **suggest(lrs, smoothed),
              "configured_lr": cfg.train.lr, "device": str(dev),
              "curve": [{"lr": a, "loss": b, "smoothed": c} for a, b, c in
                        zip(lrs, losses, smoothed)],
              "config": to_dict(cfg)}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "lr_find.json", _finite_json(result))
    return result


def _finite_json(obj: Any) -> Any:
    """NaN/inf -> None (valid JSON)."""
    if isinstance(obj, dict):
        return {k: _finite_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite_json(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def overfit_check(run: RunConfig | Mapping[str, Any], tokens_path: str | Path, *,
                  tokens: int = 1024, target: float = 0.2, max_steps: int = 500,
                  device: str = "auto", threads: int | None = None) -> dict[str, Any]:
    """Train on the first ``tokens`` train tokens until the loss is below ``target`` nats.

    Returns ``{"passed", "initial_loss", "final_loss", "steps", "tokens", "target"}``. The batch
    is the leading ``tokens`` tokens cut into ``seq_len`` windows (at least one window); the run's
    optimiser and LR (constant, no warmup) are used, without weight decay (decay fights
    memorisation and is not what the check is about).
    """
    cfg = _config(run)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, weight_decay=0.0))
    cfg, parts, batches, dev = _setup(cfg, tokens_path, device, threads)
    seq = cfg.train.seq_len
    n = max(1, tokens // seq)
    data = np.asarray(batches.batches.tokens[: n * seq + 1], dtype=np.int64)
    if len(data) < n * seq + 1:
        raise ConfigError(f"the train split has {len(data)} tokens, fewer than {n * seq + 1}",
                          key="--tokens")
    windows = torch.from_numpy(data[np.arange(n)[:, None] * seq + np.arange(seq + 1)]).to(dev)
    parts.model.train()
    losses = []
    for _ in range(max_steps):
        losses.append(_step(parts, windows, cfg.train.lr, cfg.train.grad_clip))
        if losses[-1] <= target or not math.isfinite(losses[-1]):
            break
    passed = math.isfinite(losses[-1]) and losses[-1] <= target
    return {"passed": passed, "initial_loss": losses[0], "final_loss": losses[-1],
            "steps": len(losses), "tokens": n * seq, "target": target, "lr": cfg.train.lr}
