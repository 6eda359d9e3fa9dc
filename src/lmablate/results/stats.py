"""Statistics over seeds: means, t-based confidence intervals and tests between variants.

With a handful of seeds per variant, normal-approximation intervals are far too narrow; every
interval here uses Student's t with n - 1 degrees of freedom, and comparisons use Welch's t-test
(unequal variances) or, when both variants ran the same seeds, the paired t-test (the same seed
means the same data order, which removes that source of variance).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
from scipy import stats as st

__all__ = ["Summary", "summarize", "compare", "Comparison", "holm", "pareto_front", "t_quantile"]


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float  # sample std (ddof=1); 0 for n = 1
    ci_low: float  # 95% t-interval of the mean; equal to mean for n = 1
    ci_high: float
    min: float
    max: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@lru_cache(maxsize=1024)
def t_quantile(q: float, df: float) -> float:
    """Student-t quantile, cached: a 1,000-run study asks for the same few thousands of times."""
    return float(st.t.ppf(q, df))


def _p_two_sided(t: float, df: float) -> float:
    return float(2 * st.t.sf(abs(t), df))


def _clean(values: Sequence[float]) -> np.ndarray:
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    return arr[np.isfinite(arr)]


def summarize(values: Sequence[float], confidence: float = 0.95) -> Summary | None:
    x = _clean(values)
    if len(x) == 0:
        return None
    mean = float(x.mean())
    if len(x) == 1:
        return Summary(1, mean, 0.0, mean, mean, mean, mean)
    std = float(x.std(ddof=1))
    half = t_quantile(0.5 + confidence / 2, len(x) - 1) * std / math.sqrt(len(x))
    return Summary(len(x), mean, std, mean - half, mean + half, float(x.min()), float(x.max()))


@dataclass(frozen=True)
class Comparison:
    delta: float  # mean(variant) - mean(baseline)
    rel_delta: float  # delta / mean(baseline)
    ci_low: float  # 95% interval of delta
    ci_high: float
    p_value: float | None  # two-sided; None when a side has fewer than 2 values
    test: str  # "paired t" | "Welch t" | "n/a"
    n_variant: int
    n_baseline: int

    def as_dict(self) -> dict[str, float | str | None]:
        return asdict(self)


def compare(variant: Sequence[float], baseline: Sequence[float],
            variant_seeds: Sequence[int] | None = None,
            baseline_seeds: Sequence[int] | None = None, confidence: float = 0.95) -> Comparison:
    """Difference of means with a 95% interval and a two-sided test.

    Paired by seed when both sides have the same set of (>= 2) seeds; Welch otherwise.
    """
    v, b = _clean(variant), _clean(baseline)
    if len(v) == 0 or len(b) == 0:
        nan = float("nan")
        return Comparison(nan, nan, nan, nan, None, "n/a", len(v), len(b))
    delta = float(v.mean() - b.mean())
    rel = delta / float(b.mean()) if b.mean() else float("nan")
    q = 0.5 + confidence / 2
    paired = (variant_seeds is not None and baseline_seeds is not None
              and len(v) == len(variant) and len(b) == len(baseline)
              and sorted(variant_seeds) == sorted(baseline_seeds) and len(v) >= 2
              and len(set(variant_seeds)) == len(variant_seeds))
    if paired:
        vb = dict(zip(variant_seeds, v))
        diffs = np.asarray([vb[s] - bb for s, bb in zip(baseline_seeds, b)])
        sd = float(diffs.std(ddof=1))
        se = sd / math.sqrt(len(diffs))
        half = t_quantile(q, len(diffs) - 1) * se
        p = _p_two_sided(float(diffs.mean()) / se, len(diffs) - 1) if sd > 0 else (
            0.0 if delta != 0 else 1.0)
        return Comparison(delta, rel, delta - half, delta + half, p, "paired t", len(v), len(b))
    if len(v) < 2 or len(b) < 2:
        return Comparison(delta, rel, float("nan"), float("nan"), None, "n/a", len(v), len(b))
    va, vb_ = v.var(ddof=1) / len(v), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb_)
    if se == 0:
        return Comparison(delta, rel, delta, delta, 0.0 if delta else 1.0, "Welch t", len(v),
                          len(b))
    df = (va + vb_) ** 2 / (va**2 / (len(v) - 1) + vb_**2 / (len(b) - 1))
    half = t_quantile(q, float(df)) * se
    p = _p_two_sided(delta / se, float(df))
    return Comparison(delta, rel, delta - half, delta + half, p, "Welch t", len(v), len(b))


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (same order; None stays None).

    A study compares every variant with the baseline, so some raw p < 0.05 are expected by chance
    alone; Holm's step-down adjustment controls the family-wise error rate without assuming the
    tests are independent (they are not: they share the baseline's seeds).
    """
    idx = [i for i, p in enumerate(p_values) if p is not None and math.isfinite(p)]
    order = sorted(idx, key=lambda i: p_values[i])
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * float(p_values[i])))
        out[i] = running
    return out


def pareto_front(cost: Sequence[float], loss: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats on both cost and loss (lower is better for
    both), ordered by cost: the configurations worth choosing at some budget."""
    pts = sorted((c, l_, i) for i, (c, l_) in enumerate(zip(cost, loss))
                 if math.isfinite(c) and math.isfinite(l_))
    front, best = [], math.inf
    for _c, l_, i in pts:
        if l_ < best:
            front.append(i)
            best = l_
    return front
