"""Fine-tune mode: a classification head on the LM's last hidden state, GLUE style.

Models of a few million parameters sit at chance zero-shot; a linear probe (or full fine-tuning)
on the task's train split still tells ablations apart. The budget is fixed so runs compare:
at most ``max_train`` rows (a seeded subset), ``epochs`` passes, ``batch_size`` rows per AdamW
step, one seed for the head's init, the subset and the batch order.

- Input: the prompt (the task's template, no answer), tokenized and cut from the left to the
  model's context, so the question and ``Answer:`` survive a long passage.
- Features: the final hidden state (the output of ``model.norm_f``, read with a forward hook so
  the model's own forward stays the single definition of the network), mean-pooled over the
  prompt's tokens or taken at its last token.
- Head only (default): the model is frozen, features are computed once and a linear layer is
  trained on them (seconds). ``full``: a copy of the model is trained with the head; the loaded
  model is left untouched.
- Reported: accuracy on the evaluation split with its standard error, n, the train rows used.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmablate.evaluation.loading import LoadedRun
from lmablate.evaluation.prompts import gold_index, render
from lmablate.evaluation.scoring import mean_stderr
from lmablate.evaluation.specs import FinetuneConfig, TaskSpec

__all__ = ["finetune_classifier", "pooled_features"]


def _encode(run: LoadedRun, spec: TaskSpec, rows: Sequence[Mapping[str, Any]]
            ) -> tuple[list[list[int]], list[int]]:
    choices = list(spec.choices or [])
    ids, labels = [], []
    for row in rows:
        tokens = run.tokenizer.encode(render(spec, row), add_special_tokens=False).ids
        tokens = tokens[-run.max_len:] or ([run.eot_id] if run.eot_id is not None else [0])
        ids.append(tokens)
        labels.append(gold_index(spec, row, choices))
    return ids, labels


def pooled_features(model: nn.Module, inputs: Sequence[Sequence[int]], pool: str,
                    device: torch.device) -> torch.Tensor:
    """(B, d_model) final hidden states of right-padded ``inputs``, mean or last-token pooled."""
    captured: dict[str, torch.Tensor] = {}
    handle = model.norm_f.register_forward_hook(lambda m, i, o: captured.__setitem__("h", o))
    try:
        lens = torch.as_tensor([len(x) for x in inputs], device=device)
        batch = torch.zeros(len(inputs), int(lens.max()), dtype=torch.long)
        for i, x in enumerate(inputs):
            batch[i, :len(x)] = torch.as_tensor(x, dtype=torch.long)
        model(batch.to(device))
    finally:
        handle.remove()
    h = captured["h"].float()  # (B, T, C)
    if pool == "last":
        return h[torch.arange(len(inputs), device=device), lens - 1]
    mask = (torch.arange(h.size(1), device=device)[None, :] < lens[:, None]).float()  # (B, T)
    return (h * mask[..., None]).sum(1) / lens[:, None].float()


def finetune_classifier(run: LoadedRun, spec: TaskSpec, train: Sequence[Mapping[str, Any]],
                        rows: Sequence[Mapping[str, Any]], cfg: FinetuneConfig, *,
                        batch_size: int = 32) -> dict[str, Any]:
    """Train a head (or the whole model) on ``train``; accuracy on ``rows``."""
    device = next(run.model.parameters()).device
    if len(train) > cfg.max_train:
        keep = sorted(random.Random(cfg.seed).sample(range(len(train)), cfg.max_train))
        train = [train[i] for i in keep]
    x_train, y_train = _encode(run, spec, train)
    x_eval, y_eval = _encode(run, spec, rows)
    gen = torch.Generator().manual_seed(cfg.seed)
    head = nn.Linear(run.cfg.model.d_model, len(spec.choices or []))
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * 0.02)
        head.bias.zero_()
    head.to(device)
    model = copy.deepcopy(run.model).requires_grad_(True) if cfg.full else run.model
    params = list(head.parameters()) + (list(model.parameters()) if cfg.full else [])
    lr = cfg.lr or (1e-4 if cfg.full else 1e-3)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)

    def features(ids: Sequence[Sequence[int]], grad: bool) -> torch.Tensor:
        with torch.set_grad_enabled(grad):
            return pooled_features(model, ids, cfg.pool, device)

    cached = None
    if not cfg.full:  # frozen model: features once
        model.eval()
        cached = torch.cat([features(x_train[i:i + batch_size], False)
                            for i in range(0, len(x_train), batch_size)])
    targets = torch.as_tensor(y_train, device=device)
    steps = math.ceil(cfg.epochs * len(x_train) / cfg.batch_size)
    per_epoch = math.ceil(len(x_train) / cfg.batch_size)
    model.train(cfg.full)
    order: list[int] = []
    losses = []
    for step in range(steps):
        if step % per_epoch == 0:
            order = torch.randperm(len(x_train), generator=gen).tolist()
        idx = order[(step % per_epoch) * cfg.batch_size:(step % per_epoch + 1) * cfg.batch_size]
        feats = cached[idx] if cached is not None else features([x_train[i] for i in idx], True)
        loss = F.cross_entropy(head(feats), targets[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.full:
            torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        logits = torch.cat([head(features(x_eval[i:i + batch_size], False))
                            for i in range(0, len(x_eval), batch_size)])
    hits = (logits.argmax(-1).cpu() == torch.as_tensor(y_eval)).double().tolist()
    return {"acc": sum(hits) / len(hits), "acc_stderr": mean_stderr(hits), "n": len(hits),
            "n_train": len(x_train), "steps": steps, "lr": lr,
            "final_train_loss": sum(losses[-per_epoch:]) / max(1, len(losses[-per_epoch:]))}
