"""Statistics over seeds, checked against values worked out by hand.

t quantiles are written as literals (scipy.stats.t.ppf(0.975, df)): df=1 12.706204736174694,
df=2 4.302652729749462. For df = 2 the t distribution has a closed-form
CDF, 1/2 + t / (2 sqrt(t^2 + 2)), so two-sided p-values are computed by hand too.
"""

from __future__ import annotations

import math

import pytest

from lmablate.results.stats import compare, holm, pareto_front, summarize

T975 = {1: 12.706204736174694, 2: 4.302652729749462}


def p_two_sided_df2(t: float) -> float:
    return 1 - abs(t) / math.sqrt(t * t + 2)


def test_summary_of_three_seeds():
    s = summarize([1.0, 1.1, 1.2])
    half = T975[2] * 0.1 / math.sqrt(3)
    assert s.n == 3
    assert s.mean == pytest.approx(1.1, abs=1e-12)
    assert s.std == pytest.approx(0.1, abs=1e-12)
    assert (s.ci_low, s.ci_high) == pytest.approx((1.1 - half, 1.1 + half), abs=1e-12)
    assert (s.min, s.max) == (1.0, 1.2)


@pytest.mark.parametrize("values, n", [
    pytest.param([2.0], 1, id="one-seed"),
    pytest.param([2.0, float("nan"), None], 1, id="nan-and-none-dropped"),
])
def test_single_value_has_a_degenerate_interval(values, n):
    s = summarize(values)
    assert (s.n, s.mean, s.std, s.ci_low, s.ci_high) == (n, 2.0, 0.0, 2.0, 2.0)


def test_two_seeds_use_t_with_one_degree_of_freedom():
    s = summarize([4.0, 5.0])
    half = T975[1] * math.sqrt(0.5) / math.sqrt(2)
    assert (s.ci_low, s.ci_high) == pytest.approx((4.5 - half, 4.5 + half))


def test_empty_is_none():
    assert summarize([]) is None
    assert summarize([float("inf")]) is None


def test_paired_comparison_by_seed():
    # variant - baseline per seed: 0.3, 0.4, 0.2 -> mean 0.3, sd 0.1
    c = compare([1.3, 1.5, 1.4], [1.0, 1.1, 1.2], [0, 1, 2], [0, 1, 2])
    half = T975[2] * 0.1 / math.sqrt(3)
    tstat = 0.3 / (0.1 / math.sqrt(3))
    assert c.test == "paired t"
    assert c.delta == pytest.approx(0.3)
    assert c.rel_delta == pytest.approx(0.3 / 1.1)
    assert (c.ci_low, c.ci_high) == pytest.approx((0.3 - half, 0.3 + half))
    assert c.p_value == pytest.approx(p_two_sided_df2(tstat), rel=1e-9)


def test_pairing_follows_seeds_not_order():
    a = compare([1.4, 1.3, 1.5], [1.0, 1.1, 1.2], [2, 0, 1], [0, 1, 2])
    b = compare([1.3, 1.5, 1.4], [1.0, 1.1, 1.2], [0, 1, 2], [0, 1, 2])
    assert (a.delta, a.ci_low, a.ci_high, a.p_value) == pytest.approx(
        (b.delta, b.ci_low, b.ci_high, b.p_value))


def test_welch_when_seeds_differ():
    v, b = [2.0, 2.2, 2.4], [1.0, 1.1, 1.2]
    c = compare(v, b, [0, 1, 2], [3, 4, 5])
    va, vb = 0.04 / 3, 0.01 / 3
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)
    assert c.test == "Welch t"
    assert df == pytest.approx(2.9411764705882355)
    assert c.delta == pytest.approx(1.1)
    from scipy.stats import t

    assert (c.ci_low, c.ci_high) == pytest.approx((1.1 - t.ppf(0.975, df) * se,
                                                    1.1 + t.ppf(0.975, df) * se))


def test_comparison_without_enough_seeds_has_no_test():
    c = compare([1.5], [1.0, 1.1], [0], [0, 1])
    assert c.test == "n/a" and c.p_value is None and math.isnan(c.ci_low)
    assert c.delta == pytest.approx(0.45)


def test_holm_step_down():
    # sorted: 0.01*3 = 0.03, 0.02*2 = 0.04, 0.04*1 -> max(0.04, 0.04) = 0.04
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.5, None, 0.6]) == [pytest.approx(1.0), None, pytest.approx(1.0)]


def test_pareto_front_keeps_only_undominated_points():
    cost = [10, 20, 20, 40, 80, 30]
    loss = [5.0, 4.0, 4.5, 4.2, 3.0, 3.9]
    # 20/4.5 dominated by 20/4.0; 40/4.2 dominated by 30/3.9
    assert pareto_front(cost, loss) == [0, 1, 5, 4]
