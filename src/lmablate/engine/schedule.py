"""The plan of a run: step counts from its token (or epoch) budget, and the learning rate per step.

``make_plan`` turns ``train.tokens`` / ``train.epochs`` into optimiser steps, warmup steps and the
evaluation and checkpoint intervals; ``get_lr(step)`` is a pure function of the step (linear
warmup, then constant, linear or cosine decay to ``min_lr_ratio``). Shared by the training loop,
the fused sweep trainer and the study plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lmablate.study.config import RunConfig

__all__ = ["Plan", "epoch_ended", "get_lr", "make_plan"]


@dataclass(frozen=True)
class Plan:
    total_steps: int
    tokens_per_step: int
    warmup_steps: int
    eval_every: int
    checkpoint_every: int

    @property
    def total_tokens(self) -> int:
        return self.total_steps * self.tokens_per_step


def make_plan(cfg: RunConfig, train_tokens: int | None = None) -> Plan:
    """The run's steps; ``train_tokens`` (the train split's size) is needed for an epoch budget."""
    t = cfg.train
    per_step = t.batch_size * t.grad_accum * t.seq_len
    budget = t.tokens
    if t.epochs is not None:
        if train_tokens is None:
            raise ValueError("an epoch budget needs the size of the train split")
        budget = int(t.epochs * train_tokens)
    total = max(1, math.ceil(budget / per_step))
    warmup = int(t.warmup * total) if t.warmup < 1 else math.ceil(t.warmup / per_step)
    return Plan(total_steps=total, tokens_per_step=per_step, warmup_steps=min(warmup, total),
                eval_every=t.eval_every or max(1, total // 10),
                checkpoint_every=t.checkpoint_every or max(1, total // 10))


def get_lr(step: int, cfg: RunConfig, plan: Plan) -> float:
    """Learning rate at optimiser step ``step`` (0-based): linear warmup, then the schedule."""
    t = cfg.train
    if step < plan.warmup_steps:
        return t.lr * (step + 1) / plan.warmup_steps
    if t.schedule == "constant":
        return t.lr
    decay_steps = max(1, plan.total_steps - plan.warmup_steps)
    progress = min(1.0, (step - plan.warmup_steps) / decay_steps)
    floor = t.lr * t.min_lr_ratio
    if t.schedule == "linear":
        return floor + (t.lr - floor) * (1 - progress)
    return floor + (t.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def epoch_ended(tokens_seen: int, tokens_per_step: int, split_tokens: int) -> int | None:
    """The number (1-based) of the last epoch completed by the step that brought the tokens seen
    to ``tokens_seen``; None when that step crossed no epoch boundary."""
    done = tokens_seen // max(1, split_tokens)
    return done if done > (tokens_seen - tokens_per_step) // max(1, split_tokens) else None
