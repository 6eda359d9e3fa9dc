"""A small, safe expression language for derived sweep values.

Parsed with :mod:`ast` and walked by hand; nothing is ever passed to ``eval``. Allowed:
numbers, strings, lists/tuples, ``+ - * / // % **``, comparisons, ``and/or/not``, ``x if c else y``,
names that refer to config keys (``n_heads`` or ``model.n_heads``), and the functions below.
Names starting with ``_`` (dunders), attribute access on anything but a config key, lambdas,
comprehensions, keyword arguments and every other construct are rejected with one line. Sizes are
bounded (ranges, repeated strings/lists, powers) so a typo cannot hang the Snakefile's parse.

Which strings of a study are expressions is decided by :mod:`lmablate.study.sweep`: one starting
with
``=`` always (``"=d_model"``); in a numeric setting any string that is not a number
(``"d_model * 4"``, ``"d_model"``; ``"3e-4"`` and ``"10M"`` are numbers); string settings such
as paths only with the ``=``. A string grid or zip axis follows the same rule (and must give a
list); ``where`` is always an expression.

``range(a, b, step)`` is Python's (end exclusive); ``seq(first, last, step)`` is bash's ``seq``
with its arguments in that order (end inclusive), so a shape sweep's
``$(seq $((H*8)) $((H*8)) $((H*64)))`` reads ``seq(n_heads*8, n_heads*64, n_heads*8)``.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable, Mapping
from typing import Any

from lmablate.errors import ConfigError, did_you_mean

__all__ = ["evaluate", "is_expression", "names_in"]


MAX_LENGTH = 2000  # characters of one expression
MAX_ITEMS = 100_000  # elements of a list (nested ones counted) or characters of a string it builds
MAX_INT_BITS = 4096  # bits of an integer it builds (10**1000 is fine, 10**10**6 is not)
MAX_ROUND_DIGITS = 400  # |ndigits| of round(): round(5, -10**9) would compute 10**(10**9)


def _seq(first: float, last: float, step: float = 1) -> list:
    if step == 0:
        raise ValueError("seq() step must not be 0")
    out, x = [], first
    while (x <= last) if step > 0 else (x >= last):
        out.append(x)
        x += step
        if len(out) > MAX_ITEMS:
            raise ValueError(f"seq() would produce more than {MAX_ITEMS} values")
    return out


def _range(*args: int) -> list:
    if any(not float(a).is_integer() for a in args):
        raise ValueError(f"range() needs integers, got {args}")
    r = range(*(int(a) for a in args))
    if len(r) > MAX_ITEMS:
        raise ValueError(f"range() would produce more than {MAX_ITEMS} values")
    return list(r)


def _logspace(start: float, stop: float, num: int) -> list:
    """``num`` values geometrically spaced from start to stop inclusive (e.g. LR sweeps)."""
    if not 1 <= num <= MAX_ITEMS:
        raise ValueError(f"logspace() num must be between 1 and {MAX_ITEMS}, got {num!r}")
    num = int(num)
    if num < 1 or start <= 0 or stop <= 0:
        raise ValueError("logspace(start, stop, num) needs start, stop > 0 and num >= 1")
    if num == 1:
        return [float(start)]
    ratio = (stop / start) ** (1 / (num - 1))
    return [float(f"{start * ratio**i:.6g}") for i in range(num)]


def _round(x: float, ndigits: int | None = None) -> float:
    """Python's round(), with ndigits bounded (``MAX_ROUND_DIGITS``)."""
    if ndigits is None:
        return round(x)
    if not isinstance(ndigits, int) or abs(ndigits) > MAX_ROUND_DIGITS:
        raise ValueError(f"round() ndigits must be an integer within ±{MAX_ROUND_DIGITS}, "
                         f"got {ndigits!r}")
    return round(x, ndigits)


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "range": _range, "seq": _seq, "logspace": _logspace,
    "min": min, "max": max, "abs": abs, "round": _round, "int": int, "float": float,
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

# a %-format's width or precision: '%999999999d' % 1 would build a 1 GB string
_FORMAT_SPEC = re.compile(r"%[#0 +\-]*(\*|\d*)(?:\.(\*|\d*))?")


def _size(value: Any, limit: int = MAX_ITEMS) -> int:
    """Characters of a string, or items of a list counting those of nested lists (each time
    they occur); counting stops just above ``limit``, so ``[[0] * 1000] * 1000`` costs little."""
    if isinstance(value, str):
        return len(value)
    if not isinstance(value, list):
        return 1
    total = len(value)
    for item in value:
        if total > limit:
            break
        if isinstance(item, (str, list)):
            total += _size(item, limit - total)
    return total


def is_expression(value: Any) -> bool:
    """True for strings meant as expressions (``"=x"``, ``"range(...)"``, ``"d_model * 4"``)."""
    return isinstance(value, str) and (value.lstrip().startswith("=")
                                       or any(h in value for h in _EXPR_HINTS))


def _source(text: str) -> str:
    text = text.strip()
    return text[1:].strip() if text.startswith("=") else text


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def names_in(text: str) -> set[str]:
    """Config keys an expression refers to (for ordering grid axes)."""
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        name = _dotted(node) if isinstance(node, (ast.Name, ast.Attribute)) else None
        if name is not None:  # a whole dotted key, not its parts
            if name not in FUNCTIONS:
                out.add(name)
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(_source(text), mode="eval"))
    return out


def evaluate(text: str, names: Mapping[str, Any], *, key: str | None = None) -> Any:
    """Evaluate ``text`` with ``names`` (dotted keys and leaf names) bound.

    Every problem (syntax, a name not allowed or unknown, a runtime error) is a one-line
    :class:`ConfigError` under ``key``."""
    if len(text) > MAX_LENGTH:
        raise ConfigError(f"expression longer than {MAX_LENGTH} characters", key=key)
    try:
        tree = ast.parse(_source(text), mode="eval")
    except SyntaxError as err:
        raise ConfigError(f"syntax error in expression {text!r} at column {err.offset}: {err.msg}",
                          key=key) from None
    except (RecursionError, MemoryError):
        raise ConfigError(f"expression {text[:40]!r}... is nested too deeply", key=key) from None
    for node in ast.walk(tree):  # before anything is evaluated: no dunder anywhere
        name = node.id if isinstance(node, ast.Name) else (
            node.attr if isinstance(node, ast.Attribute) else "")
        if name.startswith("_"):
            shown = _dotted(node) or name
            raise ConfigError(f"'{shown}' is not allowed in expression {text!r}: names starting "
                              "with '_' are never looked up", key=key)

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool,
                                                                      type(None))):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            return bounded([ev(e) for e in node.elts])
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
            _check_size(node.op, left, right)
            return bounded(_BINOPS[type(node.op)](left, right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return bounded(_UNARY[type(node.op)](ev(node.operand)))
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
            return bounded(fn(*[ev(a) for a in node.args]))
        raise ConfigError(f"'{ast.unparse(node)}' is not allowed in expression {text!r} (only "
                          "arithmetic, comparisons, config keys and " + ", ".join(FUNCTIONS) + ")",
                          key=key)

    def too_many() -> ConfigError:
        return ConfigError(f"{text!r} would build more than {MAX_ITEMS} items", key=key)

    def _check_size(op: ast.operator, left: Any, right: Any) -> None:
        """Refuse an operation whose result would be too large, before it is computed."""
        if isinstance(op, ast.Pow) and isinstance(right, (int, float)) and not isinstance(
                left, (str, list)) and (abs(right) > 64 or (
                isinstance(left, int) and abs(left).bit_length() * abs(right) > MAX_INT_BITS)):
            raise ConfigError(f"power too large in {text!r}", key=key)
        if isinstance(op, ast.Mult):
            for seq, n in ((left, right), (right, left)):
                if (isinstance(seq, (str, list)) and isinstance(n, int)
                        and _size(seq) * n > MAX_ITEMS):
                    raise too_many()
        if isinstance(op, ast.Add) and isinstance(left, (str, list)) and isinstance(
                right, type(left)) and _size(left) + _size(right) > MAX_ITEMS:
            raise too_many()
        if isinstance(op, ast.Mod) and isinstance(left, str):
            for width in (w for m in _FORMAT_SPEC.finditer(left) for w in m.groups()):
                if width == "*" or (width and int(width) > MAX_ITEMS):
                    raise ConfigError(f"format width or precision above {MAX_ITEMS} (or '*') in "
                                      f"{text!r}", key=key)

    def bounded(value: Any) -> Any:
        """``value`` if within the size limits (a last guard behind the checks above)."""
        if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
            raise ConfigError(f"integer above 2**{MAX_INT_BITS} in {text!r}", key=key)
        if isinstance(value, (str, list)) and _size(value) > MAX_ITEMS:
            raise too_many()
        return value

    try:
        return ev(tree)
    except ConfigError:
        raise
    except (ArithmeticError, TypeError, ValueError, RecursionError) as err:
        raise ConfigError(f"cannot evaluate {text!r}: {err}", key=key) from None
