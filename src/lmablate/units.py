"""Numbers as lmablate prints them: every scaled count, FLOP total, size and duration.

Counts of things (parameters, tokens) scale by thousands as ML papers write them (k, M, B, T:
a 7B model, 1T tokens); FLOPs and bytes take the SI prefixes (G, T, P, E: 3.2 PFLOPs, 80GB).
Bytes are decimal (1 MB = 10^6 bytes), as ``LMABLATE_DEVICE_MEMORY=80G`` is read.

=============== ============================================ ========== ======== ===============
function        used for                                     prefixes   digits   examples
=============== ============================================ ========== ======== ===============
``fmt_count``   parameters and tokens in findings, tables,   k M B T    3 sig.   10.6k, 17.6M,
                figure labels (lmablate.results.harvest, .plots)                         512
``fmt_params``  parameter counts that aim at a target        K M B T    2 dec.   10.74M, 1.50K,
                within 0.5% (lmablate.study.solve, the train log)                      2.00B, 512
``fmt_tokens``  token counts on figures (where a fit or a    k M B T    whole    2k, 250k, 1M
                comparison was made)
``fmt_amount``  tokens and parameters in ``lmablate plan``   k M B T    2 dec.   40.96k, 1.20B
``fmt_flops``   FLOPs in ``lmablate plan``                   k M G T P E 2 dec.  1.23P, 840.00G
``fmt_bytes``   memory in ``lmablate plan`` and its checks   kB MB GB   2 dec.   3.00MB, 79.65GB
                                                             TB PB EB
``fmt_seconds`` durations (estimated training time)          s m h d    0/1 dec. 90s, 2.5m, 1.2h
=============== ============================================ ========== ======== ===============

A value that rounds up to 1000 of one prefix is written with the next (999,999 -> "1.00M", not
"1000.00k"). ``None`` is "-" for the plan's columns (``fmt_amount``, ``fmt_flops``,
``fmt_bytes``, ``fmt_seconds``), whose rows may lack an estimate. ``plural`` writes a count with
its noun ("1 run", "3 runs").
"""

from __future__ import annotations

import numbers

__all__ = ["fmt_amount", "fmt_bytes", "fmt_count", "fmt_flops", "fmt_params", "fmt_seconds",
           "fmt_tokens", "plural"]

COUNT = ("k", "M", "B", "T")  # thousand, million, billion, trillion
COUNT_K = ("K", "M", "B", "T")  # the solver's and the train log's spelling of thousand
SI = ("k", "M", "G", "T", "P", "E")


def _scaled(n: float, prefixes: tuple[str, ...], spec: str, small: str) -> str:
    """``n`` over the largest power of 1000 it reaches (formatted with ``spec``, the prefix
    appended), or ``n`` formatted with ``small`` below 1000."""
    exp = 0
    while exp < len(prefixes) and abs(n) >= 1000 ** (exp + 1):
        exp += 1
    while True:  # rounding may reach 1000 of this prefix: then it is 1 of the next
        if exp == 0:
            text = format(n, small)
            if not abs(float(text)) >= 1000:  # nan stays nan
                return text
            exp = 1
            continue
        text = format(n / 1000**exp, spec)
        if not abs(float(text)) >= 1000 or exp == len(prefixes):
            return text + prefixes[exp - 1]
        exp += 1


def plural(n: float, noun: str, many: str | None = None) -> str:
    """A count and its noun, singular for exactly one: ``plural(1, "run")`` -> "1 run",
    ``plural(3, "run")`` -> "3 runs", ``plural(2, "degree of freedom", "degrees of freedom")``;
    ``n`` may be a formatted number ("1.2k runs"). lmablate's "N things" go through it."""
    word = noun if n == 1 else (many or noun + "s")
    whole = isinstance(n, numbers.Integral) or (isinstance(n, float) and n.is_integer())
    return f"{int(n):,} {word}" if whole else f"{n} {word}"


def fmt_count(n: float) -> str:
    """Parameters or tokens to 3 significant digits: 10_600 -> "10.6k"; 17_630_000 -> "17.6M"."""
    return _scaled(n, COUNT, ".3g", ".3g")


def fmt_params(n: float) -> str:
    """A parameter count to 2 decimals: 10_740_000 -> "10.74M"; 1_500 -> "1.50K";
    2e9 -> "2.00B"; 512 -> "512"."""
    return _scaled(n, COUNT_K, ".2f", "g")


def fmt_tokens(n: float) -> str:
    """A token count, whole: 2_048 -> "2k"; 250_000 -> "250k"."""
    return _scaled(n, COUNT, ".0f", ".0f")


def fmt_amount(n: float | None) -> str:
    """Tokens or parameters in the plan, 2 decimals: 40_960 -> "40.96k"; None -> "-"."""
    return "-" if n is None else _scaled(n, COUNT, ".2f", ".0f")


def fmt_flops(n: float | None) -> str:
    """FLOPs, SI prefixes, 2 decimals: 1.23e15 -> "1.23P"; None -> "-"."""
    return "-" if n is None else _scaled(n, SI, ".2f", ".0f")


def fmt_bytes(n: float | None) -> str:
    """Bytes, decimal SI, 2 decimals: 3e6 -> "3.00MB"; None -> "-"."""
    return "-" if n is None else _scaled(n, SI, ".2f", ".0f") + "B"


def fmt_seconds(s: float | None) -> str:
    """A duration: seconds below 2 minutes, minutes below 2 hours, hours below 3 days, else days
    (90 -> "90s"; 150 -> "2.5m"; 4_320 -> "72.0m"; 7_200 -> "2.0h"; None -> "-")."""
    if s is None:
        return "-"
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.1f}m"
    if s < 3 * 86400:
        return f"{s / 3600:.1f}h"
    return f"{s / 86400:.1f}d"
