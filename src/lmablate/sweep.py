"""Expand a study's sweep into runs, each with a stable run ID.

    defaults ─► variant (named delta, may carry its own grid) ─► grid point ─► zip row ─► seed
                                                         └─ where: drop points failing a constraint

Every run is resolved into a :class:`~lmablate.config.RunConfig`. Its **run ID** is a readable
slug (variant, grid values, seed) plus the first 8 hex digits of a SHA-256 over the canonical JSON
of the resolved config and the data identity, so the same resolved config gives the same ID
whatever the YAML order, and any change to a run's config gives it a new ID. IDs are never parsed:
tools read ``config.yaml`` beside the results.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import config as C
from .errors import ConfigError, did_you_mean
from .expr import evaluate, is_expression, names_in

__all__ = ["Run", "expand", "run_hash", "canonical_json", "flatten", "unflatten", "set_dotted"]

SWEEP_KEYS = ("variants", "grid", "zip", "where", "seeds")
VARIANT_KEYS = ("grid", "zip", "where", "seeds", "label")
LEAF_PRIORITY = ("model", "train", "tokenizer", "data")


@dataclass(frozen=True)
class Run:
    """One training run of a study."""

    run_id: str
    variant: str
    seed: int
    config: C.RunConfig
    axes: dict[str, Any] = field(default_factory=dict)  # grid/zip values of this point
    diff: dict[str, Any] = field(default_factory=dict)  # dotted keys differing from defaults
    data_id: str = ""  # identity of corpus + tokenizer + split (names the token store)
    tok_id: str = ""  # identity of corpus + tokenizer (names the tokenizer)

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "variant": self.variant, "seed": self.seed,
                "axes": dict(self.axes), "diff": dict(self.diff), "data_id": self.data_id,
                "tok_id": self.tok_id, **C.to_dict(self.config)}


# --------------------------------------------------------------------------------------------------
# dotted-key helpers


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
    parts = key.split(".")
    for p in parts[:-1]:
        nxt = d.get(p)
        if not isinstance(nxt, dict):
            nxt = d[p] = {}
        d = nxt
    d[parts[-1]] = value


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in flat.items():
        set_dotted(out, k, v)
    return out


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def run_hash(obj: Any, n: int = 8) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:n]


def _names(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Expression namespace: dotted keys plus unambiguous leaf names (model wins over train...)."""
    names = dict(flat)
    for section in reversed(LEAF_PRIORITY):
        for k, v in flat.items():
            if k.startswith(section + "."):
                names[k.split(".")[-1]] = v
    return names


# --------------------------------------------------------------------------------------------------
# resolution


def _normalise_delta(delta: Any, key: str) -> dict[str, Any]:
    """A variant / defaults block in nested or dotted form -> flat dotted dict under sections."""
    if delta is None:
        return {}
    if not isinstance(delta, Mapping):
        raise ConfigError(f"expected a mapping of settings, got {delta!r}", key=key)
    flat = flatten(delta)
    for k in flat:
        section = k.split(".")[0]
        if section not in C.SECTIONS:
            raise ConfigError(f"unknown section '{section}'{did_you_mean(section, C.SECTIONS)}; "
                              f"settings live under {', '.join(C.SECTIONS)}", key=f"{key}.{k}")
    return flat


def _apply_presets(flat: dict[str, Any], key: str) -> dict[str, Any]:
    """``model.preset: debug`` expands into that preset's model fields (explicit keys win)."""
    preset = flat.pop("model.preset", None)
    if preset is None:
        return flat
    if preset not in C.PRESETS:
        raise ConfigError(f"unknown model preset {preset!r}{did_you_mean(str(preset), C.PRESETS)}; "
                          f"known: {', '.join(C.PRESETS)}", key=f"{key}.model.preset")
    out = {f"model.{k}": v for k, v in C.PRESETS[preset].items()}
    out.update(flat)
    return out


def _resolve(flat: dict[str, Any], key: str) -> C.RunConfig:
    """Evaluate derived expressions (in dependency order) and build a checked RunConfig."""
    flat = dict(flat)
    pending = {k: v for k, v in flat.items() if is_expression(v)}
    while pending:
        pending_names = {n for k in pending for n in (k, k.split(".")[-1])}
        ready = [k for k, text in pending.items()
                 if not (names_in_safe(text, f"{key}.{k}") & (pending_names - {k, k.split(".")[-1]}))]
        if not ready:
            k = next(iter(pending))
            raise ConfigError(f"circular expression {pending[k]!r} (it depends on another derived "
                              "value that depends on it)", key=f"{key}.{k}")
        for k in ready:
            others = {n: v for n, v in flat.items() if n not in pending}
            flat[k] = evaluate(pending.pop(k), _names(others), key=f"{key}.{k}")
    try:
        return C.from_dict(C.RunConfig, unflatten(flat))
    except ConfigError as err:
        raise err.under(key)


def names_in_safe(text: str, key: str) -> set[str]:
    try:
        return names_in(text)
    except SyntaxError:
        evaluate(text, {}, key=key)  # raises the one-line syntax error
        raise


def _axis_values(spec: Any, names: Mapping[str, Any], key: str) -> list[Any]:
    if is_expression(spec):
        spec = evaluate(spec, names, key=key)
    if not isinstance(spec, list):
        spec = [spec]
    if not spec:
        raise ConfigError("axis has no values", key=key)
    return spec


def _grid_points(grid: Mapping[str, Any], base: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """Cartesian product; an axis may be an expression over earlier axes (seed 000's ranges)."""
    points: list[dict[str, Any]] = [{}]
    for axis, spec in (grid or {}).items():
        axis_key = f"{key}.{axis}"
        _normalise_delta({axis: 0}, key)  # checks the section name
        new_points = []
        for p in points:
            for v in _axis_values(spec, _names({**base, **p}), axis_key):
                new_points.append({**p, axis: v})
        points = new_points
    return points


def _zip_rows(zipped: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    if not zipped:
        return [{}]
    cols = {k: v if isinstance(v, list) else [v] for k, v in zipped.items()}
    lengths = {len(v) for v in cols.values()}
    if len(lengths) != 1:
        raise ConfigError("all zip lists must have the same length, got "
                          + ", ".join(f"{k}: {len(v)}" for k, v in cols.items()), key=key)
    for k in cols:
        _normalise_delta({k: 0}, key)
    return [dict(zip(cols, row)) for row in zip(*cols.values())]


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _slug(variant: str | None, axes: Mapping[str, Any], seed: int) -> str:
    parts = [variant] if variant else []
    parts += [f"{k.split('.')[-1]}={_fmt(v)}" for k, v in axes.items()]
    slug = "-".join(parts) or "run"
    slug = re.sub(r"[^A-Za-z0-9._=+-]+", "_", slug)[:72].strip("-_")
    return f"{slug}-s{seed}"


def expand(study: Mapping[str, Any], corpora: Mapping[str, Any] | None = None) -> list[Run]:
    """All runs of a (validated) study document, in a stable order.

    ``corpora`` maps corpus names to their resolved source specs; they enter the data identity
    so that changing where a corpus comes from gives every run that uses it a new ID.
    """
    corpora = corpora or {}
    defaults = _apply_presets(_normalise_delta(study.get("defaults"), "defaults"), "defaults")
    for section in ("data", "tokenizer"):
        for k, v in flatten(study.get(section) or {}).items():
            defaults.setdefault(f"{section}.{k}", v)
    base_cfg = _resolve(defaults, "defaults")
    base_flat = flatten(C.to_dict(base_cfg))

    sweep = study.get("sweep") or {}
    variants = sweep.get("variants") or {"baseline": {}}
    named = bool(sweep.get("variants"))
    global_seeds = sweep.get("seeds", [base_cfg.train.seed])
    runs: dict[str, Run] = {}
    for vname, vspec in variants.items():
        vkey = f"sweep.variants.{vname}"
        vspec = dict(vspec or {})
        vgrid, vzip = vspec.pop("grid", None), vspec.pop("zip", None)
        vwhere, vseeds = vspec.pop("where", None), vspec.pop("seeds", None)
        vspec.pop("label", None)
        delta = _normalise_delta(vspec, vkey)
        vbase = {**defaults, **_apply_presets(delta, vkey)}
        grid = {**(sweep.get("grid") or {}), **(vgrid or {})}
        zipped = {**(sweep.get("zip") or {}), **(vzip or {})}
        wheres = [w for w in (sweep.get("where"), vwhere) if w]
        seeds = vseeds if vseeds is not None else global_seeds
        if not isinstance(seeds, list) or not seeds:
            raise ConfigError(f"expected a non-empty list of seeds, got {seeds!r}",
                              key=f"{vkey}.seeds" if vseeds is not None else "sweep.seeds")
        points = [{**g, **z} for g in _grid_points(grid, vbase, f"{vkey}.grid"
                                                   if vgrid else "sweep.grid")
                  for z in _zip_rows(zipped, "sweep.zip")]
        for point in points:
            flat = {**vbase, **point}
            if wheres:
                probe = _resolve(flat, vkey)  # constraints see derived values (d_ff etc.)
                names = _names(flatten(C.to_dict(probe)))
                if not all(evaluate(w, names, key="sweep.where") for w in wheres):
                    continue
            for seed in seeds:
                cfg = _resolve({**flat, "train.seed": seed}, vkey)
                runs_key = _make_run(cfg, vname if named else None, point, seed, base_flat,
                                     corpora)
                runs.setdefault(runs_key.run_id, runs_key)
    if not runs:
        raise ConfigError("the sweep expands to no runs (every point was removed by `where`)",
                          key="sweep")
    return list(runs.values())


def _make_run(cfg: C.RunConfig, variant: str | None, axes: Mapping[str, Any], seed: int,
              base_flat: Mapping[str, Any], corpora: Mapping[str, Any]) -> Run:
    resolved = C.to_dict(cfg)
    corpus_spec = corpora.get(cfg.data.corpus, {"name": cfg.data.corpus})
    tok_id = run_hash({"corpus": corpus_spec, "tokenizer": resolved["tokenizer"]})
    data_id = run_hash({"tok": tok_id, "data": resolved["data"]})
    ident = {"model": resolved["model"], "train": resolved["train"], "data_id": data_id}
    flat = flatten(resolved)
    diff = {k: v for k, v in flat.items() if base_flat.get(k) != v and k != "train.seed"}
    run_id = f"{_slug(variant, axes, seed)}-{run_hash(ident)}"
    return Run(run_id=run_id, variant=variant or "baseline", seed=seed, config=cfg,
               axes=dict(axes), diff=diff, data_id=data_id, tok_id=tok_id)


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``over`` wins; lists are replaced, not concatenated."""
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out
