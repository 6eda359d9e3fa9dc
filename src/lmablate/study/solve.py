"""Model dims for a parameter target (a parameter-allocation study: "10M parameters, 35% of
them in the embedding, GLU expansion 2.66x", hit to within ±0.5%).

The researchers fixed the total and two shape ratios and computed the rest by hand. Here the
study says ``model: {params_target: 10M, embedding_share: 0.35, glu_expansion: 2.66}`` and the
sweep resolves it, before any job, into concrete dims:

- ``d_model`` from the embedding share (vocab x d_model over the total; kept as given when no
  share is set), a multiple of ``n_heads`` (times 2 for RoPE's even head dim);
- ``n_layers`` and ``d_ff`` so that the total is within ``tolerance`` of the target and
  ``d_ff / d_model`` is as close as it can be to the expansion (d_ff is the fine knob: one unit
  of it is ``3 * d_model * n_layers`` parameters, so the total can be hit almost exactly).

Counts come from :func:`lmablate.study.accounting.param_counts`, so "10M" means what ``plan`` and
the
trained model report. A target that cannot be met within the tolerances is a one-line
:class:`ConfigError` naming the nearest achievable shape. The vocabulary is the tokenizer's,
padded as training pads it (:func:`model_vocab`), so it is known before the tokenizer exists.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from lmablate.errors import ConfigError
from lmablate.study import accounting
from lmablate.study.config import ModelConfig, RunConfig, TokenizerConfig
from lmablate.units import fmt_params

__all__ = [
    "EXPANSION_TOLERANCE",
    "SHARE_TOLERANCE",
    "TOLERANCE",
    "Solution",
    "model_vocab",
    "solve",
    "solve_for_run",
]

TOLERANCE = 0.005  # |total - target| / target (±0.5%)
SHARE_TOLERANCE = 0.02  # |embedding share - target share|, absolute (0.35 -> 0.33..0.37)
EXPANSION_TOLERANCE = 0.10  # |d_ff/d_model - expansion| / expansion
D_FF_MULTIPLE = 8  # solved d_ff is a multiple of this (tensor-core friendly) where that fits
WINDOW = 2000  # d_model candidates examined below (and a few above) the share's ideal width


@dataclass(frozen=True)
class Solution:
    """Solved dims and how close they come to the target."""

    d_model: int
    n_layers: int
    d_ff: int
    counts: dict[str, Any]  # accounting.param_counts of the solved model
    target: int
    embedding_share: float | None  # the asked-for share (None: d_model was given)
    glu_expansion: float  # the asked-for (or default) d_ff / d_model

    @property
    def total(self) -> int:
        return int(self.counts["total"])

    @property
    def error(self) -> float:
        """Relative distance of the total from the target."""
        return abs(self.total - self.target) / self.target

    @property
    def share(self) -> float:
        return float(self.counts["embedding_share"])

    @property
    def expansion(self) -> float:
        return self.d_ff / self.d_model

    def misses(self, tolerance: float = TOLERANCE, expansion_given: bool = True) -> list[str]:
        """What is out of tolerance (empty when the solution is accepted)."""
        out = []
        if self.error > tolerance:
            out.append(f"total {fmt_params(self.total)} is {self.error:.2%} off")
        if self.embedding_share is not None and abs(self.share - self.embedding_share) > \
                SHARE_TOLERANCE:
            out.append(f"embedding share {self.share:.3f} (asked {self.embedding_share:g})")
        if expansion_given and abs(self.expansion - self.glu_expansion) / self.glu_expansion > \
                EXPANSION_TOLERANCE:
            out.append(f"d_ff/d_model {self.expansion:.2f} (asked {self.glu_expansion:g})")
        return out

    def describe(self) -> str:
        return (f"{fmt_params(self.total)} params with d_model={self.d_model}, "
                f"n_layers={self.n_layers}, d_ff={self.d_ff} (embedding share {self.share:.3f}, "
                f"d_ff/d_model {self.expansion:.2f})")

    def to_dict(self) -> dict[str, Any]:
        return {"d_model": self.d_model, "n_layers": self.n_layers, "d_ff": self.d_ff,
                "total": self.total, "non_embedding": int(self.counts["non_embedding"]),
                "embedding": int(self.counts["embedding"]), "embedding_share": self.share,
                "glu_expansion": self.expansion, "target": self.target, "error": self.error}


def model_vocab(model: ModelConfig, tokenizer: TokenizerConfig) -> int | None:
    """Embedding rows training will use (tokenizer vocab padded to ``vocab_multiple``).

    None when only the trained tokenizer knows it (``char``, ``file``) and ``model.vocab_size``
    is not set. BPE training fails rather than stop short of ``vocab_size``, so it is exact.
    """
    if model.vocab_size:
        return model.vocab_size
    raw = {"bpe": tokenizer.vocab_size, "byte": 256 + len(tokenizer.special_tokens)}.get(
        tokenizer.kind)
    if raw is None:
        return None
    return math.ceil(raw / model.vocab_multiple) * model.vocab_multiple


def _score(sol: Solution, tolerance: float) -> float:
    """0 at a perfect fit; every term is 1 at its tolerance."""
    terms = [sol.error / tolerance, (sol.expansion - sol.glu_expansion) / sol.glu_expansion
             / EXPANSION_TOLERANCE]
    if sol.embedding_share is not None:
        terms.append((sol.share - sol.embedding_share) / SHARE_TOLERANCE)
    return sum(t * t for t in terms)


def solve(model: ModelConfig, vocab_size: int, max_seq_len: int, target: int, *,
          embedding_share: float | None = None, glu_expansion: float | None = None,
          tolerance: float = TOLERANCE, d_model_multiple: int | None = None) -> Solution:
    """Dims of ``model`` (other fields kept) that put its parameter count at ``target``.

    Raises :class:`ConfigError` (key ``params_target``) with the nearest achievable shape when
    no shape is within ``tolerance`` of the target and the share/expansion tolerances.
    """
    if model.num_experts:
        raise ConfigError("params_target is not supported for MoE models (num_experts > 0); "
                          "solve the dense shape, then add experts", key="params_target")
    g = glu_expansion or (8 / 3 if model.gated else 4.0)
    step = d_model_multiple or model.n_heads * (2 if model.pos_emb == "rope" else 1)

    def counts(d: int, layers: int, d_ff: int) -> dict[str, Any]:
        m = dataclasses.replace(model, d_model=d, n_layers=layers, d_ff=d_ff)
        return accounting.param_counts(m, vocab_size, max_seq_len)

    if embedding_share is None:
        widths = [model.d_model]
    else:
        per_unit = counts(step, 1, D_FF_MULTIPLE)["embedding"] / step
        ideal = max(1, round(embedding_share * target / per_unit / step))
        widths = [k * step for k in range(max(1, ideal - WINDOW), ideal + 9)]

    candidates = []
    for d in widths:
        f0 = D_FF_MULTIPLE
        a = counts(d, 1, f0)["total"]
        per_layer = counts(d, 2, f0)["total"] - a
        slope = counts(d, 1, f0 + 1)["total"] - a  # params per unit of d_ff in one layer
        base, fixed = a - per_layer, per_layer - slope * f0  # outside blocks; per block w/o FFN
        ideal_layers = (target - base) / (fixed + slope * g * d)
        for layers in sorted({max(1, math.floor(ideal_layers)), max(1, math.ceil(ideal_layers))}):
            f_exact = ((target - base) / layers - fixed) / slope
            for multiple in (D_FF_MULTIPLE, 1):  # a multiple of 8 unless that misses the target
                d_ff = max(multiple, round(f_exact / multiple) * multiple)
                sol = Solution(d, layers, d_ff, counts(d, layers, d_ff), target, embedding_share,
                               g)
                if sol.error <= tolerance:
                    break
            candidates.append(sol)
    best = min(candidates, key=lambda s: (_score(s, tolerance), s.d_model, s.n_layers))
    misses = best.misses(tolerance, expansion_given=glu_expansion is not None)
    if misses:
        asked = ", ".join(f"{k} {v:g}" for k, v in (("embedding_share", embedding_share),
                                                    ("glu_expansion", glu_expansion)) if v)
        raise ConfigError(f"{fmt_params(target)} cannot be met within "
                          f"±{tolerance:.1%}{' with ' + asked if asked else ''} (vocab "
                          f"{vocab_size}): nearest achievable is {best.describe()}: "
                          + "; ".join(misses), key="params_target")
    return best


def solve_for_run(cfg: RunConfig) -> ModelConfig:
    """``cfg.model`` with ``params_target`` resolved into concrete dims (checked)."""
    m = cfg.model
    vocab = model_vocab(m, cfg.tokenizer)
    if vocab is None:
        raise ConfigError(f"params_target needs the vocabulary size before training: set "
                          f"model.vocab_size (tokenizer kind {cfg.tokenizer.kind!r} only knows it "
                          "after training)", key="params_target")
    sol = solve(m, vocab, m.context_length or cfg.train.seq_len, m.params_target,
                embedding_share=m.embedding_share, glu_expansion=m.glu_expansion)
    return dataclasses.replace(m, d_model=sol.d_model, n_layers=sol.n_layers, d_ff=sol.d_ff)
