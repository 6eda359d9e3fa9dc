"""Log-likelihood scoring of continuations, and multiple-choice accuracy as lm-eval computes it.

Conventions copied from lm-evaluation-harness (0.4.x, ``TemplateLM`` and the HF model):

- A (context, continuation) pair is tokenized as a whole; trailing spaces of the context move
  to the continuation; the continuation's tokens are those of ``context + continuation`` after
  the context's own tokens. An empty context becomes the end-of-text token.
- Context and continuation together are cut from the left to ``max_len + 1`` tokens; the model
  reads all but the last and each continuation token is scored at its position.
- ``acc``: the choice with the highest summed log-probability; ``acc_norm``: the highest
  log-probability divided by the choice's length in characters (``len(choice)``, without the
  target delimiter: lm-eval's ``completion_len``; ``acc_bytes`` uses UTF-8 bytes instead); ties go
  to the first choice (``np.argmax``); stderr is the sample standard deviation over sqrt(n).

Batches are sorted by length (longest first, so an out-of-memory error shows at once), padded on
the right (a causal model never looks right, so padding changes nothing), and scored in fp32 over
the tokenizer's vocabulary (padding rows of the embedding are dropped, as in training's metrics).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lmablate.evaluation.loading import LoadedRun

__all__ = ["Scorer", "MCExample", "MCResult", "score_multiple_choice", "mean_stderr"]

TokenPair = tuple[list[int], list[int]]  # (context ids, continuation ids)


class Scorer:
    """Log-likelihoods of continuations under one loaded run, batched, on its model's device."""

    def __init__(self, run: LoadedRun, *, batch_size: int = 32):
        self.run, self.batch_size = run, batch_size
        self.model, self.tokenizer = run.model, run.tokenizer
        self.device = next(run.model.parameters()).device
        self.max_len, self.vocab_size = run.max_len, run.vocab_size

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def encode_pair(self, context: str, continuation: str) -> TokenPair:
        """Token ids of a (context, continuation) pair, split as lm-eval splits them."""
        if context == "":
            cont = self.encode(continuation)
            if self.run.eot_id is None:
                raise ValueError("an empty context needs an end-of-text token; the tokenizer has "
                                 "none")
            return ([self.run.eot_id], cont) if cont[:1] != [self.run.eot_id] else (cont[:1],
                                                                                     cont[1:])
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        whole = self.encode(context + continuation)
        ctx = self.encode(context)
        return ctx, whole[len(ctx):]

    def loglikelihood(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        """(sum of log p(continuation | context), continuation is the greedy one) per pair."""
        return self.loglikelihood_tokens([self.encode_pair(c, x) for c, x in pairs])

    @torch.no_grad()
    def logits(self, inputs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, list[int]]:
        """fp32 log-probabilities (B, T, vocab) of right-padded ``inputs``, and their lengths."""
        lens = [len(x) for x in inputs]
        batch = torch.zeros(len(inputs), max(lens), dtype=torch.long)
        for i, x in enumerate(inputs):
            batch[i, :len(x)] = torch.as_tensor(x, dtype=torch.long)
        logits = self.model(batch.to(self.device))  # (B, T, V_padded)
        return F.log_softmax(logits[..., :self.vocab_size].float(), dim=-1), lens

    def loglikelihood_tokens(self, requests: Sequence[TokenPair]) -> list[tuple[float, bool]]:
        """The same for already tokenized pairs (the lm-eval adapter enters here)."""
        windows = []
        for ctx, cont in requests:
            if not cont:
                raise ValueError("empty continuation: nothing to score")
            if len(cont) > self.max_len:
                raise ValueError(f"continuation of {len(cont)} tokens exceeds the model's "
                                 f"context of {self.max_len}")
            full = (list(ctx) + list(cont))[-(self.max_len + 1):]
            windows.append((full[:-1], list(cont)))
        order = sorted(range(len(windows)), key=lambda i: -len(windows[i][0]))
        out: list[tuple[float, bool]] = [(0.0, False)] * len(windows)
        was_training = self.model.training
        self.model.eval()
        try:
            for b in range(0, len(order), self.batch_size):
                idx = order[b:b + self.batch_size]
                logp, lens = self.logits([windows[i][0] for i in idx])
                for row, (i, n) in enumerate(zip(idx, lens)):
                    cont = windows[i][1]
                    lp = logp[row, n - len(cont):n]  # (len(cont), V)
                    target = torch.as_tensor(cont, device=lp.device)
                    ll = float(lp.gather(1, target[:, None]).sum())
                    greedy = bool((lp.argmax(dim=-1) == target).all())
                    out[i] = (ll, greedy)
        finally:
            self.model.train(was_training)
        return out


# --------------------------------------------------------------------------------------------------
# multiple choice


@dataclass(frozen=True)
class MCExample:
    """A prompt, its answers and the index of the right one."""

    context: str
    choices: tuple[str, ...]
    gold: int


@dataclass
class MCResult:
    """Per-example predictions and the aggregate metrics of one multiple-choice evaluation."""

    lls: list[list[float]]
    acc: list[float]
    acc_norm: list[float]

    @property
    def n(self) -> int:
        return len(self.acc)

    def metrics(self) -> dict[str, float | None]:
        return {"acc": _mean(self.acc), "acc_stderr": mean_stderr(self.acc),
                "acc_norm": _mean(self.acc_norm), "acc_norm_stderr": mean_stderr(self.acc_norm)}


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def mean_stderr(xs: Sequence[float]) -> float | None:
    """Sample standard deviation / sqrt(n) (lm-eval's ``mean_stderr``); None below 2 values."""
    if len(xs) < 2:
        return None
    mu = _mean(xs)
    return math.sqrt(sum((x - mu) ** 2 for x in xs) / (len(xs) - 1)) / math.sqrt(len(xs))


def score_multiple_choice(scorer: Scorer, examples: Sequence[MCExample], *,
                          target_delimiter: str = " ") -> MCResult:
    """acc and acc_norm of ``examples``: every (context, delimiter + choice) pair in one pass."""
    pairs = [(ex.context, f"{target_delimiter}{c}") for ex in examples for c in ex.choices]
    flat = [ll for ll, _ in scorer.loglikelihood(pairs)]
    lls, acc, acc_norm, pos = [], [], [], 0
    for ex in examples:
        ll = np.asarray(flat[pos:pos + len(ex.choices)])
        pos += len(ex.choices)
        lengths = np.asarray([float(len(c)) for c in ex.choices])
        lls.append(ll.tolist())
        acc.append(1.0 if int(np.argmax(ll)) == ex.gold else 0.0)
        acc_norm.append(1.0 if int(np.argmax(ll / lengths)) == ex.gold else 0.0)
    return MCResult(lls, acc, acc_norm)
