"""A small, safe expression language for derived sweep values.

Parsed with :mod:`ast` and walked by hand; nothing is ever passed to ``eval``. Allowed:
numbers, strings, lists/tuples, ``+ - * / // % **``, comparisons, ``and/or/not``, ``x if c else y``,
names that refer to config keys (``n_heads`` or ``model.n_heads``), and the functions below.

``range(a, b, step)`` is Python's (end exclusive); ``seq(a, b, step)`` is bash's (end inclusive),
so seed 000's ``$(seq $((H*8)) $((H*8)) $((H*64)))`` reads ``seq(n_heads*8, n_heads*64, n_heads*8)``.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Mapping
from typing import Any

from .errors import ConfigError, did_you_mean

__all__ = ["evaluate", "is_expression", "names_in"]


def _seq(first: float, last: float, step: float = 1) -> list:
    if step == 0:
        raise ValueError("seq() step must not be 0")
    out, x = [], first
    while (x <= last) if step > 0 else (x >= last):
        out.append(x)
        x += step
        if len(out) > 100_000:
            raise ValueError("seq() would produce more than 100000 values")
    return out


def _range(*args: int) -> list:
    if any(not float(a).is_integer() for a in args):
        raise ValueError(f"range() needs integers, got {args}")
    r = range(*(int(a) for a in args))
    if len(r) > 100_000:
        raise ValueError("range() would produce more than 100000 values")
    return list(r)


def _logspace(start: float, stop: float, num: int) -> list:
    """``num`` values geometrically spaced from start to stop inclusive (e.g. LR sweeps)."""
    num = int(num)
    if num < 1 or start <= 0 or stop <= 0:
        raise ValueError("logspace(start, stop, num) needs start, stop > 0 and num >= 1")
    if num == 1:
        return [float(start)]
    ratio = (stop / start) ** (1 / (num - 1))
    return [float(f"{start * ratio**i:.6g}") for i in range(num)]


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "range": _range, "seq": _seq, "logspace": _logspace,
    "min": min, "max": max, "abs": abs, "round": round, "int": int, "float": float,
    "len": len, "sqrt": math.sqrt, "log2": math.log2, "ceil": math.ceil, "floor": math.floor,
}

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
           ast.Pow: operator.pow}
_CMPOPS = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
           ast.Gt: operator.gt, ast.GtE: operator.ge, ast.In: lambda a, b: a in b,
           ast.NotIn: lambda a, b: a not in b}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_}

# strings that look like expressions: contain a call, an operator between names, or a bare name
_EXPR_HINTS = ("(", "*", "+", "//", "/", "%", " if ", "<", ">", "==")


def is_expression(value: Any) -> bool:
    """True for strings meant as expressions (``"range(...)"``, ``"d_model * 4"``)."""
    return isinstance(value, str) and any(h in value for h in _EXPR_HINTS)


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def names_in(text: str) -> set[str]:
    """Config keys an expression refers to (for ordering grid axes)."""
    tree = ast.parse(text, mode="eval")
    out = set()
    for node in ast.walk(tree):
        name = _dotted(node) if isinstance(node, (ast.Name, ast.Attribute)) else None
        if name and name not in FUNCTIONS:
            out.add(name)
    return out


def evaluate(text: str, names: Mapping[str, Any], *, key: str | None = None) -> Any:
    """Evaluate ``text`` with ``names`` (dotted keys and leaf names) bound. Errors -> ConfigError."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        raise ConfigError(f"syntax error in expression {text!r} at column {err.offset}: {err.msg}",
                          key=key) from None

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool,
                                                                      type(None))):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            return [ev(e) for e in node.elts]
        if isinstance(node, (ast.Name, ast.Attribute)):
            name = _dotted(node)
            if name is None:
                raise ConfigError(f"only config keys can be looked up in {text!r}", key=key)
            if name in ("True", "False", "None"):
                return {"True": True, "False": False, "None": None}[name]
            if name in names:
                return names[name]
            raise ConfigError(f"unknown name '{name}' in expression {text!r}"
                              f"{did_you_mean(name, [*names, *FUNCTIONS])}", key=key)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 64:
                raise ConfigError(f"exponent too large in {text!r}", key=key)
            return _BINOPS[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](ev(node.operand))
        if isinstance(node, ast.BoolOp):
            values = [ev(v) for v in node.values]
            return all(values) if isinstance(node.op, ast.And) else any(values)
        if isinstance(node, ast.Compare):
            left = ev(node.left)
            for op, comp in zip(node.ops, node.comparators):
                right = ev(comp)
                if type(op) not in _CMPOPS or not _CMPOPS[type(op)](left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.IfExp):
            return ev(node.body) if ev(node.test) else ev(node.orelse)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
            fn = FUNCTIONS.get(node.func.id)
            if fn is None:
                raise ConfigError(f"function '{node.func.id}' is not allowed in {text!r}; allowed: "
                                  f"{', '.join(FUNCTIONS)}", key=key)
            return fn(*[ev(a) for a in node.args])
        raise ConfigError(f"'{ast.unparse(node)}' is not allowed in expression {text!r} (only "
                          "arithmetic, comparisons, config keys and " + ", ".join(FUNCTIONS) + ")",
                          key=key)

    try:
        return ev(tree)
    except ConfigError:
        raise
    except (ArithmeticError, TypeError, ValueError) as err:
        raise ConfigError(f"cannot evaluate {text!r}: {err}", key=key) from None
