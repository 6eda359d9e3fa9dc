"""Expand a study's sweep into runs, each with a stable run ID.

    defaults ─► variant (named delta; may carry its own grid/zip/where/seeds)
             ─► zip row ─► grid point (axes may be expressions over other axes) ─► where ─► seed
             ─► params_target solved into d_model / n_layers / d_ff (:mod:`lmablate.study.solve`)

Every run is resolved into a :class:`~lmablate.study.config.RunConfig`. Its **run ID** is a readable
slug (variant, axis values sorted by key, seed) plus the first 16 hex digits (64 bits,
:data:`RUN_HASH_HEX`) of a SHA-256 over the canonical JSON (sorted keys) of the resolved model
and train sections and the data identity, so
the same resolved config gives the same ID whatever the YAML order, on every machine and Python
version, and any change to a run's config gives it a new ID. IDs and configs map one to one:
sweep points that resolve to the same config (one-axis sweeps sharing their centre point, seed
003's embedding share 0.35 = GLU 2.66) are one run, trained once, that belongs to each point's
group (:attr:`Run.shared`); its ID is the smallest of the points' IDs, so it does not depend on
the YAML order. IDs are never parsed: tools read ``config.yaml`` beside the results.

Each point's settings are resolved into a checked config by :mod:`lmablate.study.resolve`.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lmablate.dicts import canonical_json, flatten, run_hash
from lmablate.errors import ConfigError
from lmablate.study import config as C
from lmablate.study.expr import evaluate
from lmablate.study.resolve import (
    Resolver,
    apply_presets,
    check_axis,
    check_section_block,
    evaluate_setting,
    expression_names,
    expression_refs,
    is_expr,
    normalise_delta,
)

__all__ = [
    "MAX_RUNS",
    "SWEEP_KEYS",
    "VARIANT_KEYS",
    "Run",
    "expand",
    "identity",
    "legacy_run_id",
    "set_override",
    "without_later_defaults",
    "written_settings",
]

SWEEP_KEYS = ("variants", "grid", "zip", "where", "seeds")
# The most runs one study expands to (grid points x zip rows x seeds over all variants, before
# `where`): 8x the shape sweep's 1,152, and what `lmablate plan` resolves in a few seconds. The
# count is checked while the grid is built, so a grid of two large ranges stops without building it.
MAX_RUNS = 10_000
VARIANT_KEYS = ("grid", "zip", "where", "seeds", "label")


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
    # plain dict of ``config`` per section, made once at expansion (Snakemake asks per job)
    sections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, repr=False,
                                                      compare=False)
    # the other sweep points (variant, axes) that resolve to this config: the run belongs to
    # their groups too. Not part of to_dict(), so sharing never re-runs a finished run.
    shared: tuple[tuple[str, dict[str, Any]], ...] = field(default=(), compare=False)

    def memberships(self) -> list[tuple[str, dict[str, Any]]]:
        """Every sweep point this run stands for, (variant, axes), its own first."""
        return [(self.variant, dict(self.axes)), *((v, dict(a)) for v, a in self.shared)]

    def to_dict(self) -> dict[str, Any]:
        """Run metadata + the resolved config sections (fresh containers, safe to modify)."""
        sections = self.sections or C.to_dict(self.config)
        return {"run_id": self.run_id, "variant": self.variant, "seed": self.seed,
                "axes": dict(self.axes), "diff": dict(self.diff), "data_id": self.data_id,
                "tok_id": self.tok_id,
                **{name: {k: copy.copy(v) for k, v in d.items()} for name, d in sections.items()}}


# --------------------------------------------------------------------------------------------------
# study-document overrides (generic dict helpers: :mod:`lmablate.dicts`)


def _holds_settings(path: tuple[str, ...]) -> bool:
    """Mappings whose keys are dotted settings (``model.d_model``), not nested sections."""
    in_variants = path[:2] == ("sweep", "variants")
    return (path in (("sweep", "grid"), ("sweep", "zip")) or (in_variants and len(path) == 3)
            or (in_variants and len(path) == 4 and path[3] in ("grid", "zip")))


def set_override(doc: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted ``key`` in a study document, as ``scales``/``overrides``/``--config`` do.

    Grid, zip and variant blocks hold dotted settings as single keys, so
    ``sweep.grid.model.n_heads`` sets the key ``model.n_heads`` of ``sweep.grid``; where a dotted
    key already exists at some level (``defaults: {model.d_model: 64}``) that key is replaced.
    """
    parts = key.split(".")
    node, path = doc, ()
    while len(parts) > 1:
        rest = ".".join(parts)
        if rest in node:
            break
        nxt = node.get(parts[0])
        variant_block = len(path) == 3 and parts[0] in ("grid", "zip")  # a variant's own axes
        nested_section = isinstance(nxt, dict) and parts[0] in C.SECTIONS  # {model: {...}}
        if _holds_settings(path) and not (variant_block or nested_section):
            break
        if not isinstance(nxt, dict):
            nxt = node[parts[0]] = {}
        node, path, parts = nxt, (*path, parts[0]), parts[1:]
    node[".".join(parts)] = value


# Hex digits of the hash in a run ID. Birthday bound: P(some collision among n runs) =
# 1 - exp(-n^2 / 2^(b+1)) for b bits. 8 digits (32 bits) give 1.2% at 10k runs and 69% at 100k;
# 16 digits (64 bits) give 1e12 / 2^65 = 2.7e-8 at 1M runs.
RUN_HASH_HEX = 16
# Run IDs made before RUN_HASH_HEX grew end in this many digits: the same SHA-256's prefix, so an
# old ID is the new one cut short (:func:`legacy_run_id`, ``lmablate migrate-ids``).
LEGACY_RUN_HASH_HEX = 8


def legacy_run_id(run_id: str) -> str:
    """The ID an older lmablate gave the run now called ``run_id`` (hash cut to 8 digits)."""
    return run_id[:len(run_id) - (RUN_HASH_HEX - LEGACY_RUN_HASH_HEX)]


def _axis_values(axis: str, spec: Any, names: Mapping[str, Any], key: str) -> list[Any]:
    if is_expr(axis, spec):
        spec = evaluate_setting(axis, spec, names, key)
    if not isinstance(spec, list):
        spec = [spec]
    if not spec:
        raise ConfigError("axis has no values (an empty list or an empty range)", key=key)
    return spec


def _axis_order(grid: Mapping[str, Any], key: str) -> list[str]:
    """Axes in dependency order (an expression axis after the axes it names), ties by key.

    A shape sweep's ``d_model: seq(n_heads*8, ...)`` must see each ``n_heads`` value whatever order
    the YAML lists the axes in, so the expanded set never depends on key order.
    """
    deps = {}
    for axis, spec in grid.items():
        check_axis(axis, f"{key}.{axis}")
        refs = expression_refs(spec, f"{key}.{axis}") if is_expr(axis, spec) else set()
        deps[axis] = {a for a in grid if a != axis and (a in refs or a.split(".")[-1] in refs)}
    order: list[str] = []
    while len(order) < len(grid):
        ready = sorted(a for a in grid if a not in order and deps[a] <= set(order))
        if not ready:
            stuck = sorted(a for a in grid if a not in order)
            raise ConfigError(f"grid axes depend on each other in a cycle: {', '.join(stuck)}",
                              key=key)
        order.append(ready[0])
    return order


def _too_many_runs(key: str) -> ConfigError:
    return ConfigError(f"the sweep expands to more than {MAX_RUNS} runs (grid points x zip rows x "
                       "seeds, summed over variants, counted before `where`), the most one study "
                       "may plan", key=key)


def _grid_points(grid: Mapping[str, Any], names: dict[str, Any], key: str,
                 limit: int = 10**9) -> list[dict[str, Any]]:
    """Cartesian product; an axis may be an expression over other axes (a shape sweep's ranges).
    More than ``limit`` points stop the expansion there, before the product is built."""
    points: list[dict[str, Any]] = [{}]
    for axis in _axis_order(grid, key):
        new_points = []
        for p in points:
            scope = expression_names({**names, **p}) if p else expression_names(names)
            for v in _axis_values(axis, grid[axis], scope, f"{key}.{axis}"):
                new_points.append({**p, axis: v})
            if len(new_points) > limit:
                raise _too_many_runs(key)
        points = new_points
    return points


def _zip_rows(zipped: Mapping[str, Any], names: dict[str, Any], key: str) -> list[dict[str, Any]]:
    if not zipped:
        return [{}]
    cols = {}
    for k, v in zipped.items():
        check_axis(k, f"{key}.{k}")
        cols[k] = _axis_values(k, v, expression_names(names), f"{key}.{k}")
    lengths = {len(v) for v in cols.values()}
    if len(lengths) != 1:
        raise ConfigError("all zip lists must have the same length, got "
                          + ", ".join(f"{k}: {len(v)}" for k, v in cols.items()), key=key)
    return [dict(zip(cols, row)) for row in zip(*cols.values())]


def _seeds(spec: Any, key: str) -> list[int]:
    if isinstance(spec, str):
        spec = evaluate(spec, {}, key=key)
    if isinstance(spec, int) and not isinstance(spec, bool):
        spec = [spec]
    if (not isinstance(spec, list) or not spec or not all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= C.MAX_SEED for s in spec)):
        shown = repr(spec)
        raise ConfigError(f"expected a non-empty list of integer seeds from 0 to {C.MAX_SEED}, "
                          f"got {shown if len(shown) <= 80 else shown[:77] + '...'}", key=key)
    if len(set(spec)) != len(spec):
        raise ConfigError(f"seeds repeat: {spec!r}", key=key)
    return spec


def format_value(v: Any) -> str:
    """A config value as it appears in run IDs and group labels (``3e-4``, ``true``)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _slug(variant: str | None, axes: Mapping[str, Any], seed: int) -> str:
    parts = [variant] if variant else []
    # sorted, so reordering grid axes in the YAML keeps every run ID
    parts += [f"{k.split('.')[-1]}={format_value(v)}" for k, v in sorted(axes.items())]
    slug = "-".join(parts) or "run"
    slug = re.sub(r"[^A-Za-z0-9._=+-]+", "_", slug)[:72].strip("-_")
    return f"{slug}-s{seed}"


def expand(study: Mapping[str, Any], corpora: Mapping[str, Any] | None = None) -> list[Run]:
    """All runs of a (validated) study document, in a stable order.

    ``corpora`` maps corpus names to their resolved source specs; their identity (not their
    machine-specific absolute paths) enters the data identity, so changing where a corpus comes
    from gives every run that uses it a new ID.
    """
    corpora = corpora or {}
    resolver = Resolver()
    defaults = apply_presets(normalise_delta(study.get("defaults"), "defaults"), "defaults")
    written = set(defaults)
    top = _top_level_settings(study)
    for k, v in top.items():
        defaults.setdefault(k, v)
    try:
        base_cfg = resolver.resolve(defaults, "defaults")
    except ConfigError as err:
        raise _keyed_as_written(err, {k.split(".")[0] for k in top}, written) from None
    base_flat = flatten(C.to_dict(base_cfg))

    sweep = study.get("sweep") or {}
    variants = sweep.get("variants") or {"baseline": {}}
    named = bool(sweep.get("variants"))
    global_seeds = _seeds(sweep["seeds"], "sweep.seeds") if "seeds" in sweep else [
        base_cfg.train.seed]
    runs: dict[str, Run] = {}
    by_hash: dict[str, str] = {}
    sharing: dict[str, list[Run]] = {}  # first run ID -> the other points of the same config
    planned = 0  # runs of the variants so far, before `where`
    for vname, vspec in variants.items():
        vkey = f"sweep.variants.{vname}" if named else "sweep"
        vspec = dict(vspec or {})
        vgrid, vzip = vspec.pop("grid", None), vspec.pop("zip", None)
        vwhere, vseeds = vspec.pop("where", None), vspec.pop("seeds", None)
        vspec.pop("label", None)
        vbase = {**defaults, **apply_presets(normalise_delta(vspec, vkey), vkey)}
        seeds = _seeds(vseeds, f"{vkey}.seeds") if vseeds is not None else global_seeds
        wheres = [(w, k) for w, k in ((sweep.get("where"), "sweep.where"),
                                      (vwhere, f"{vkey}.where")) if w]
        # axes see the defaults as resolved (derived d_ff etc.) plus this variant's literal values
        names = {**base_flat, **{k: v for k, v in vbase.items() if not is_expr(k, v)},
                 "variant": vname}
        points = []
        room = (MAX_RUNS - planned) // len(seeds)
        gkey = f"{vkey}.grid" if vgrid else "sweep.grid"
        for zrow in _zip_rows({**(sweep.get("zip") or {}), **(vzip or {})}, names,
                              f"{vkey}.zip" if vzip else "sweep.zip"):
            grid = {**(sweep.get("grid") or {}), **(vgrid or {})}
            for g in _grid_points(grid, {**names, **zrow}, gkey, room - len(points)):
                points.append({**zrow, **g})
            if len(points) > room:
                raise _too_many_runs(gkey if grid else vkey)
        planned += len(points) * len(seeds)
        kept = 0
        for point in points:
            flat = {**vbase, **point}
            shown = ", ".join(f"{k}={format_value(v)}" for k, v in sorted(point.items()))
            pkey = f"{vkey} ({shown})" if point else vkey
            cfg, resolved = resolver.resolve_with_dict({**flat, "train.seed": seeds[0]}, pkey,
                                                       base_flat)
            if wheres:  # constraints see derived and solved values (d_ff, params_target dims)
                scope = expression_names({**flatten(resolved), "variant": vname})
                if any("params_" in w for w, _ in wheres):  # a shape sweep's "ignored under 1M"
                    scope.update(_param_names(cfg, corpora))
                if not all(evaluate(w, scope, key=k) for w, k in wheres):
                    continue
            kept += 1
            for i, seed in enumerate(seeds):
                if i:
                    cfg, resolved = resolver.resolve_with_dict({**flat, "train.seed": seed}, pkey,
                                                               base_flat)
                run = _make_run(cfg, resolved, vname if named else None, point, seed, base_flat,
                                corpora)
                ident = run.run_id.rsplit("-", 1)[1]
                if run.run_id not in runs and ident in by_hash:
                    sharing.setdefault(by_hash[ident], []).append(run)
                    continue
                by_hash[ident] = run.run_id
                runs.setdefault(run.run_id, run)
        if not kept:
            where = " and ".join(repr(w) for w, _ in wheres)
            raise ConfigError(f"`where` {where} removes all {len(points)} points, so this "
                              f"{'variant' if named else 'sweep'} expands to no runs", key=vkey)
    return [_shared_run(r, sharing[i]) if i in sharing else r for i, r in runs.items()]


def written_settings(study: Mapping[str, Any]) -> dict[str, list[str]]:
    """Variant -> the dotted settings the study writes for it: its delta (``model.preset`` as one
    setting) and its own grid/zip axes. Settings derived from them (a default ``d_ff`` following
    ``d_model``, a solved shape) are not listed: the findings use this to tell a variant that
    changes two things at once from one whose single change moves derived values."""
    out = {}
    for name, spec in ((study.get("sweep") or {}).get("variants") or {}).items():
        spec = dict(spec or {})
        axes = [*(spec.pop("grid", None) or {}), *(spec.pop("zip", None) or {})]
        for key in ("where", "seeds", "label"):
            spec.pop(key, None)
        out[str(name)] = sorted({*normalise_delta(spec, f"sweep.variants.{name}"), *axes})
    return out


def _param_names(cfg: C.RunConfig, corpora: Mapping[str, Any]) -> dict[str, Any]:
    """``params_total``, ``params_non_embedding``, ... of a resolved run, for ``where``: the
    counts ``lmablate plan`` prints and runs.csv holds (a pre-tokenized corpus's own vocabulary
    where it states one)."""
    from lmablate.study.accounting import param_counts
    from lmablate.study.solve import model_vocab

    m, t = cfg.model, cfg.tokenizer
    spec = corpora.get(cfg.data.corpus) or {}
    if spec.get("source") == "hdf5" and spec.get("vocab_size") and t.kind not in ("file", "hub"):
        vocab = m.padded_vocab(int(spec["vocab_size"]))
    else:
        vocab = model_vocab(m, t) or m.padded_vocab(t.vocab_size)
    counts = param_counts(m, vocab, m.context_length or cfg.train.seq_len)
    return {f"params_{k}": v for k, v in counts.items()}


def _shared_run(first: Run, others: list[Run]) -> Run:
    """One run for sweep points that resolve to the same config: the point with the smallest
    ID names it (whatever the YAML order), the others are listed in ``shared``."""
    points = sorted([first, *others], key=lambda r: r.run_id)
    seen = {(points[0].variant, canonical_json(points[0].axes))}
    shared = []
    for r in points[1:]:
        if (r.variant, canonical_json(r.axes)) not in seen:
            seen.add((r.variant, canonical_json(r.axes)))
            shared.append((r.variant, dict(r.axes)))
    return dataclasses.replace(points[0], shared=tuple(shared))


def _top_level_settings(study: Mapping[str, Any]) -> dict[str, Any]:
    """The study's top-level ``data:`` and ``tokenizer:`` sections as dotted settings (defaults
    for every run, below ``defaults:``)."""
    out: dict[str, Any] = {}
    for section in ("data", "tokenizer"):
        block = study.get(section)
        check_section_block(section, block, section)
        out.update(flatten({section: block}) if block else {})
    return out


def _keyed_as_written(err: ConfigError, top_sections: set[str], written: set[str]) -> ConfigError:
    """An error in a setting of a top-level ``tokenizer:``/``data:`` section, keyed as the study
    wrote it (``tokenizer.kind``) rather than as the defaults it was merged into."""
    key = err.key or ""
    inner = key.removeprefix("defaults.")
    if key.startswith("defaults.") and inner.split(".")[0] in top_sections and inner not in written:
        return ConfigError(err.message, key=inner, file=err.file)
    return err


def without_later_defaults(section: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` of a config section without the fields added in a later version
    (``F(since=...)``) that hold their default: what run IDs, the tokenizer's identity and the
    params Snakemake compares see, so adding a field never re-runs or renames existing work."""
    later = C.later_fields()
    return {k: v for k, v in values.items()
            if f"{section}.{k}" not in later or later[f"{section}.{k}"] != v}


def identity(sections: Mapping[str, Any], data_id: str) -> dict[str, Any]:
    """What a run ID hashes: the resolved model and train sections and the data identity (the
    data and tokenizer sections enter through ``data_id``). Fields added in a later version
    (``F(since=...)``) enter only when set to something other than their default, so adding a
    field never changes the ID of an existing run."""
    return {name: without_later_defaults(name, sections[name])
            for name in ("model", "train")} | {"data_id": data_id}


def _make_run(cfg: C.RunConfig, resolved: Mapping[str, Any], variant: str | None,
              axes: Mapping[str, Any], seed: int, base_flat: Mapping[str, Any],
              corpora: Mapping[str, Any]) -> Run:
    spec = corpora.get(cfg.data.corpus, {"name": cfg.data.corpus})
    corpus_id = {k: v for k, v in spec.items() if not k.startswith("_")}  # no absolute paths
    tokenizer = without_later_defaults("tokenizer", resolved["tokenizer"])
    tok_id = run_hash({"corpus": corpus_id, "tokenizer": tokenizer})
    data_id = run_hash({"tok": tok_id, "data": resolved["data"]})
    flat = flatten(resolved)
    diff = {k: v for k, v in flat.items() if base_flat.get(k) != v and k != "train.seed"}
    run_id = f"{_slug(variant, axes, seed)}-{run_hash(identity(resolved, data_id), RUN_HASH_HEX)}"
    return Run(run_id=run_id, variant=variant or "baseline", seed=seed, config=cfg,
               axes=dict(sorted(axes.items())), diff=diff, data_id=data_id, tok_id=tok_id,
               sections=resolved)
