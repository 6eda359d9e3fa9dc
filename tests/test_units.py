"""lmablate.units: the one place numbers are scaled for people, checked against its table."""

from __future__ import annotations

import math

import pytest

from lmablate.units import (
    fmt_amount,
    fmt_bytes,
    fmt_count,
    fmt_flops,
    fmt_params,
    fmt_seconds,
    fmt_tokens,
    plural,
)


@pytest.mark.parametrize(("fmt", "value", "text"), [
    pytest.param(fmt_count, 10_600, "10.6k", id="count-k"),
    pytest.param(fmt_count, 17_630_000, "17.6M", id="count-M"),
    pytest.param(fmt_count, 512, "512", id="count-small"),
    pytest.param(fmt_count, 7.2e9, "7.2B", id="count-B"),
    pytest.param(fmt_count, 1.5e12, "1.5T", id="count-T"),
    pytest.param(fmt_params, 10_740_000, "10.74M", id="params-M"),
    pytest.param(fmt_params, 1_500, "1.50K", id="params-K"),
    pytest.param(fmt_params, 2_000_000_000, "2.00B", id="params-B"),
    pytest.param(fmt_params, 512, "512", id="params-small"),
    pytest.param(fmt_tokens, 2_048, "2k", id="tokens-k"),
    pytest.param(fmt_tokens, 250_000, "250k", id="tokens-250k"),
    pytest.param(fmt_tokens, 2e9, "2B", id="tokens-B"),
    pytest.param(fmt_amount, 40_960, "40.96k", id="amount-k"),
    pytest.param(fmt_amount, 1.2e9, "1.20B", id="amount-B"),
    pytest.param(fmt_flops, 1.23e15, "1.23P", id="flops-P"),
    pytest.param(fmt_flops, 840e9, "840.00G", id="flops-G"),
    pytest.param(fmt_bytes, 3e6, "3.00MB", id="bytes-MB"),
    pytest.param(fmt_bytes, 79.65e9, "79.65GB", id="bytes-GB"),
    pytest.param(fmt_seconds, 90, "90s", id="seconds"),
    pytest.param(fmt_seconds, 150, "2.5m", id="minutes"),
    pytest.param(fmt_seconds, 7_200, "2.0h", id="hours"),
    pytest.param(fmt_seconds, 4 * 86_400, "4.0d", id="days"),
])
def test_the_documented_examples(fmt, value, text):
    assert fmt(value) == text


@pytest.mark.parametrize(("fmt", "value", "text"), [
    pytest.param(fmt_count, 999_999, "1M", id="count"),
    pytest.param(fmt_count, 999.9, "1k", id="count-small"),
    pytest.param(fmt_params, 999_999, "1.00M", id="params"),
    pytest.param(fmt_tokens, 999_600, "1M", id="tokens"),
    pytest.param(fmt_flops, 999_999, "1.00M", id="flops"),
    pytest.param(fmt_amount, 999.9, "1.00k", id="amount-small"),
])
def test_rounding_up_to_1000_takes_the_next_prefix(fmt, value, text):
    assert fmt(value) == text


def test_plan_columns_show_a_missing_value_as_a_dash_and_nan_stays_nan():
    assert {f(None) for f in (fmt_amount, fmt_flops, fmt_bytes, fmt_seconds)} == {"-"}
    assert fmt_count(math.nan) == "nan"
    assert fmt_count(-2_048) == "-2.05k"



@pytest.mark.parametrize(("n", "noun", "many", "text"), [
    pytest.param(1, "run", None, "1 run", id="one"),
    pytest.param(0, "run", None, "0 runs", id="zero"),
    pytest.param(3, "seed", None, "3 seeds", id="many"),
    pytest.param(1.0, "configuration", None, "1 configuration", id="whole-float"),
    pytest.param(12_345, "token", None, "12,345 tokens", id="thousands"),
    pytest.param(1, "degree of freedom", "degrees of freedom", "1 degree of freedom",
                 id="irregular-one"),
    pytest.param(2, "degree of freedom", "degrees of freedom", "2 degrees of freedom",
                 id="irregular-many"),
    pytest.param("1.2k", "run", None, "1.2k runs", id="formatted"),
])
def test_plural_is_singular_for_exactly_one(n, noun, many, text):
    assert plural(n, noun, many) == text
