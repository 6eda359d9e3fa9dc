"""What the training loop measures besides the training loss: the validation (and test) metrics
of held-out windows, and the forward latency of the final model."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from lmablate.engine.metrics import EvalAccumulator
from lmablate.engine.step import autocast_context

__all__ = ["evaluate", "measure_latency"]


@torch.no_grad()
def evaluate(model: torch.nn.Module, windows: np.ndarray, *, batch_size: int,
             device: torch.device, autocast: torch.dtype | None, vocab_size: int,
             reliability: bool = False) -> dict[str, Any]:
    """Loss, perplexity, accuracy, calibration ... of ``model`` on (N, T + 1) ``windows``
    (:class:`~lmablate.engine.metrics.EvalAccumulator`); with ``reliability``, its diagram too."""
    was_training = model.training
    model.eval()
    acc = EvalAccumulator()
    for i in range(0, len(windows), batch_size):
        w = torch.from_numpy(windows[i:i + batch_size]).to(device, non_blocking=True)
        with autocast_context(device, autocast):
            logits = model(w[:, :-1])
        acc.add(logits, w[:, 1:], vocab_size)
    model.train(was_training)
    out: dict[str, Any] = acc.result()
    if reliability:
        out["reliability"] = acc.reliability()
    return out


@torch.no_grad()
def measure_latency(model: torch.nn.Module, device: torch.device, autocast: torch.dtype | None,
                    vocab_size: int, max_len: int, lengths: tuple[int, ...] = (128, 512),
                    repeats: int = 5) -> dict[str, float]:
    """Forward latency (ms, median of ``repeats``) at batch 1 for each sequence length."""
    model.eval()
    out = {}
    for n in lengths:
        if n > max_len:
            continue
        x = torch.randint(0, vocab_size, (1, n), device=device,
                          generator=torch.Generator(device=device).manual_seed(0))
        times = []
        for _ in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            with autocast_context(device, autocast):
                model(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        out[f"latency_ms_seq{n}"] = float(np.median(times[1:]) * 1e3)
    return out
