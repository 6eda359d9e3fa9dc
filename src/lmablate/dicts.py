"""Plain-dict helpers the study, the data and the harvest share.

    flatten / unflatten / set_dotted   nested sections <-> dotted keys (``model.d_model``)
    deep_merge                         a study over its ``include:`` base, Snakemake's --config
    canonical_json / run_hash          the byte string an identity hashes, and its SHA-256 prefix

Run IDs, tokenizer and data identities and corpus folders are all ``run_hash`` of a canonical
JSON, so these functions must not change what they return for a given input.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["canonical_json", "deep_merge", "flatten", "run_hash", "set_dotted", "unflatten"]


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists and scalars are leaves)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    """Set ``d["a"]["b"] = value`` for ``key`` ``"a.b"``, making (or replacing) the dicts on the
    way."""
    parts = key.split(".")
    for p in parts[:-1]:
        nxt = d.get(p)
        if not isinstance(nxt, dict):
            nxt = d[p] = {}
        d = nxt
    d[parts[-1]] = value


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1}`` -> ``{"a": {"b": 1}}`` (the inverse of :func:`flatten`)."""
    out: dict[str, Any] = {}
    for k, v in flat.items():
        set_dotted(out, k, v)
    return out


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``over`` wins; lists are replaced, not concatenated."""
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def canonical_json(obj: Any) -> str:
    """Sorted-key, whitespace-free JSON: the byte string run IDs hash."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def run_hash(obj: Any, n: int = 8) -> str:
    """The first ``n`` hex digits of the SHA-256 of ``obj``'s canonical JSON (8 for the tokenizer
    and data identities, which a study has a handful of;
    :data:`lmablate.study.sweep.RUN_HASH_HEX` for run IDs)."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:n]
