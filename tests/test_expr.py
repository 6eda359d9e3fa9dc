"""The derived-value expression language: what it computes, and what it refuses."""

from __future__ import annotations

import pytest

from lmablate.errors import ConfigError
from lmablate.study.expr import evaluate, is_expression, names_in

NAMES = {"model.n_heads": 6, "n_heads": 6, "model.d_model": 48, "d_model": 48, "lr": 3e-4}


@pytest.mark.parametrize("text, expected", [
    pytest.param("n_heads * 8", 48, id="arithmetic"),
    pytest.param("model.d_model // 2 + 1", 25, id="dotted-reference"),
    pytest.param("seq(n_heads * 8, n_heads * 64, n_heads * 8)", list(range(48, 385, 48)),
                 id="seq-is-bash-inclusive"),
    pytest.param("seq(d_model // 2, 2 * d_model, d_model // 2)", [24, 48, 72, 96], id="seq-000"),
    pytest.param("seq(10, 4, -3)", [10, 7, 4], id="seq-down"),
    pytest.param("range(2, 10, 4)", [2, 6], id="range-is-python-exclusive"),
    pytest.param("logspace(1e-4, 1e-2, 3)", [1e-4, 1e-3, 1e-2], id="logspace"),
    pytest.param("min(max(n_heads, 8), 7)", 7, id="min-max"),
    pytest.param("d_model if n_heads > 4 else 0", 48, id="conditional"),
    pytest.param("n_heads in (6, 8) and not lr > 1e-3", True, id="boolean"),
    pytest.param("=d_model", 48, id="explicit-reference"),
    pytest.param("= [d_model, 2 * d_model]", [48, 96], id="explicit-list"),
    pytest.param("2 ** 10", 1024, id="small-power"),
    pytest.param("'%05d' % n_heads", "00006", id="format-with-a-width"),
    pytest.param("round(lr, 5)", 3e-4, id="round-digits"),
    pytest.param("len([[0] * 300] * 300)", 300, id="nested-list-within-bounds"),
    pytest.param("10 ** 9", 10**9, id="large-number"),
])
def test_evaluates(text, expected):
    assert evaluate(text, NAMES) == expected


@pytest.mark.parametrize("text, message", [
    pytest.param("__import__('os')", "'__import__' is not allowed", id="import"),
    pytest.param("n_heads.__class__", "'n_heads.__class__' is not allowed", id="dunder-attribute"),
    pytest.param("().__class__.__bases__", "'__bases__' is not allowed", id="tuple-dunder"),
    pytest.param("lambda: 1", "'lambda: 1' is not allowed", id="lambda"),
    pytest.param("(lambda: 1)()", "is not allowed", id="lambda-call"),
    pytest.param("[x for x in range(3)]", "is not allowed", id="comprehension"),
    pytest.param("getattr(n_heads, 'real')", "function 'getattr' is not allowed", id="getattr"),
    pytest.param("max(1, key=2)", "is not allowed", id="keyword-argument"),
    pytest.param("open('/etc/passwd')", "function 'open' is not allowed", id="open"),
    pytest.param("'x' * 10 ** 9", "more than 100000 items", id="huge-string"),
    pytest.param("[0] * 10 ** 9", "more than 100000 items", id="huge-list"),
    pytest.param("9 ** 9 ** 9", "power too large", id="huge-power"),
    pytest.param("range(10 ** 9)", "more than 100000 values", id="huge-range"),
    pytest.param("logspace(1e-4, 1e-2, 10**9)", "logspace() num must be between 1 and 100000, "
                 "got 1000000000", id="huge-logspace"),
    pytest.param("'%999999999d' % 1", "format width or precision above 100000 (or '*')",
                 id="format-width"),
    pytest.param("'%.999999999f' % 1", "format width or precision above 100000",
                 id="format-precision"),
    pytest.param("'%*d' % [10 ** 9, 1]", "(or '*')", id="format-star"),
    pytest.param("[[0] * 1000] * 1000", "would build more than 100000 items", id="nested-lists"),
    pytest.param("'a' * 99999 + 'b' * 99999", "would build more than 100000 items",
                 id="concatenation"),
    pytest.param("int(1e308) ** 4 * int(1e308) ** 4", "integer above 2**4096", id="huge-product"),
    pytest.param("round(5, -10 ** 9)", "round() ndigits must be an integer within ±400",
                 id="round-digits"),
    pytest.param("seq(n_heads,", "syntax error in expression 'seq(n_heads,' at column",
                 id="syntax"),
    pytest.param("n_haeds * 2", "unknown name 'n_haeds' in expression 'n_haeds * 2' (did you mean "
                 "'n_heads'?)", id="typo-did-you-mean"),
    pytest.param("d_model / 0", "cannot evaluate 'd_model / 0': division by zero", id="zero"),
])
def test_refuses_with_one_line(text, message):
    with pytest.raises(ConfigError) as info:
        evaluate(text, NAMES, key="sweep.grid.model.d_ff")
    line = str(info.value)
    assert "\n" not in line
    assert line.startswith("sweep.grid.model.d_ff: ")
    assert message in line


def test_is_expression_and_names():
    assert is_expression("d_model * 4") and is_expression("=d_model")
    assert not is_expression("tinystories-1k") and not is_expression(3)
    assert names_in("seq(n_heads * 8, model.d_model, 2)") == {"n_heads", "model.d_model"}
    assert names_in("=min(d_ff, 4)") == {"d_ff"}
