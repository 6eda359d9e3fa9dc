"""Evaluation metrics computed from logits, plus the statistics of expert load.

All functions are pure and accumulate sums, so a validation pass over many batches gives the
same numbers as one pass over their concatenation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["EvalAccumulator", "gini", "entropy", "ECE_BINS"]

ECE_BINS = 15


@dataclass
class EvalAccumulator:
    """Sums over evaluated tokens: loss, top-1/top-5 hits, confidence, entropy and the 15-bin
    reliability table (expected calibration error, Guo et al. 2017)."""

    n: int = 0
    loss: float = 0.0
    top1: float = 0.0
    top5: float = 0.0
    confidence: float = 0.0
    entropy: float = 0.0
    bin_count: np.ndarray = field(default_factory=lambda: np.zeros(ECE_BINS))
    bin_conf: np.ndarray = field(default_factory=lambda: np.zeros(ECE_BINS))
    bin_acc: np.ndarray = field(default_factory=lambda: np.zeros(ECE_BINS))

    @torch.no_grad()
    def add(self, logits: torch.Tensor, targets: torch.Tensor,
            vocab_size: int | None = None) -> None:
        """logits (B, T, V) any float dtype; targets (B, T). Padding columns beyond ``vocab_size``
        are dropped so padded vocabularies do not change the metrics."""
        logits = logits.float()
        if vocab_size is not None:
            logits = logits[..., :vocab_size]
        logits = logits.reshape(-1, logits.size(-1))
        targets = targets.reshape(-1)
        logp = F.log_softmax(logits, dim=-1)
        nll = -logp.gather(1, targets[:, None]).squeeze(1)
        p = logp.exp()
        conf, pred = p.max(dim=-1)
        hit = (pred == targets).double()
        top5 = (logits.topk(min(5, logits.size(-1)), dim=-1).indices == targets[:, None]).any(-1)
        ent = -(p * logp).sum(-1)
        self.n += targets.numel()
        self.loss += nll.double().sum().item()
        self.top1 += hit.sum().item()
        self.top5 += top5.double().sum().item()
        self.confidence += conf.double().sum().item()
        self.entropy += ent.double().sum().item()
        bins = torch.clamp((conf * ECE_BINS).long(), max=ECE_BINS - 1)
        self.bin_count += torch.bincount(bins, minlength=ECE_BINS).double().cpu().numpy()
        self.bin_conf += torch.bincount(bins, weights=conf.double(),
                                        minlength=ECE_BINS).cpu().numpy()
        self.bin_acc += torch.bincount(bins, weights=hit, minlength=ECE_BINS).cpu().numpy()

    def result(self) -> dict[str, float]:
        if self.n == 0:
            return {}
        loss = self.loss / self.n
        ece = float(np.sum(np.abs(self.bin_acc - self.bin_conf)) / self.n)
        return {
            "loss": loss,
            "ppl": math.exp(min(loss, 700.0)),
            "acc": self.top1 / self.n,
            "top5": self.top5 / self.n,
            "confidence": self.confidence / self.n,
            "entropy": self.entropy / self.n,
            "ece": ece,
            "eval_tokens": self.n,
        }

    def reliability(self) -> dict[str, list[float]]:
        """Per-bin mean confidence, accuracy and count (for the reliability diagram)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return {"bin_confidence": (self.bin_conf / self.bin_count).tolist(),
                    "bin_accuracy": (self.bin_acc / self.bin_count).tolist(),
                    "bin_count": self.bin_count.astype(int).tolist()}


def gini(load: np.ndarray) -> float:
    """Gini coefficient of a load vector: 0 = perfectly even, -> 1 = one expert takes all."""
    x = np.sort(np.asarray(load, dtype=np.float64).ravel())
    n, total = len(x), x.sum()
    if n == 0 or total <= 0:
        return 0.0
    cum = np.cumsum(x)
    return float((n + 1 - 2 * np.sum(cum) / total) / n)


def entropy(load: np.ndarray) -> float:
    """Shannon entropy (bits) of the load distribution; log2(num_experts) = perfectly even."""
    x = np.asarray(load, dtype=np.float64).ravel()
    total = x.sum()
    if total <= 0:
        return 0.0
    p = x[x > 0] / total
    return float(-(p * np.log2(p)).sum())
