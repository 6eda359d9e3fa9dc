"""Resolve a run's flat dotted settings into a checked :class:`~lmablate.study.config.RunConfig`.

    defaults / variant block ─► dotted settings (``model.preset`` expanded)
        ─► expressions evaluated in dependency order (``d_ff: 4 * d_model``)
        ─► sections checked ─► params_target solved (:mod:`lmablate.study.solve`)

:mod:`lmablate.study.sweep` calls this for every point of a sweep. Resolution is cached per section
(identical ``data``/``tokenizer``/``train`` dicts are checked once), so a shape sweep's 1,152-point
grid expands in about a second on 2 CPU cores.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from collections.abc import Mapping
from functools import cache
from typing import Any

from lmablate.dicts import canonical_json, flatten, unflatten
from lmablate.errors import ConfigError, did_you_mean
from lmablate.study import config as C
from lmablate.study.expr import evaluate, is_expression, names_in

__all__ = ["Resolver", "apply_presets", "check_axis", "check_section_block", "evaluate_setting",
           "expression_names", "expression_refs", "is_expr", "normalise_delta"]

LEAF_PRIORITY = ("model", "train", "tokenizer", "data")
TARGET_KEYS = ("embedding_share", "glu_expansion")  # model fields that shape a params_target


def expression_names(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Expression namespace: dotted keys plus unambiguous leaf names (model wins over train...)."""
    names = dict(flat)
    for section in reversed(LEAF_PRIORITY):
        for k, v in flat.items():
            if k.startswith(section + "."):
                names[k.split(".")[-1]] = v
    return names


@cache
def _numeric_fields() -> frozenset[str]:
    """Dotted keys of int/float fields (None allowed): strings there are expressions."""
    out = set()
    for section, cls in C.SECTIONS.items():
        for name, tp in typing.get_type_hints(cls).items():
            args = set(typing.get_args(tp) or (tp,)) - {type(None)}
            if args <= {int, float}:
                out.add(f"{section}.{name}")
    return frozenset(out)


def is_expr(key: str, value: Any) -> bool:
    """Whether a setting's value is an expression to evaluate.

    ``"=..."`` always is. In a numeric field, any string that is not a number (``"3e-4"``,
    ``"10M"``) is: ``"d_model"``, ``"4 * d_model"``. In string fields (paths, names, choices)
    only ``"=..."`` is, so ``tok/a-b.json`` stays a path.
    """
    if not isinstance(value, str):
        return False
    if value.lstrip().startswith("="):
        return True
    if key not in _numeric_fields():
        return False
    return is_expression(value) or not _is_number(value)


def _is_number(text: str) -> bool:
    """``"3e-4"``, ``"1_000"``, ``"10M"`` (what config parsing accepts as a number)."""
    text = text.strip().replace("_", "")
    try:
        float(text)
    except ValueError:
        return not isinstance(C.parse_size(text), str)
    return True


SECTION_EXAMPLES = {"model": "{preset: debug}", "train": "{lr: 3e-4}",
                    "data": "{val_fraction: 0.05}", "tokenizer": "{kind: bpe}"}


def normalise_delta(delta: Any, key: str) -> dict[str, Any]:
    """A variant / defaults block in nested or dotted form -> flat dotted dict under sections.
    An empty section (``model:``) sets nothing."""
    if delta is None:
        return {}
    if not isinstance(delta, Mapping):
        raise ConfigError(f"expected a mapping of settings, got {delta!r}", key=key)
    for name, block in delta.items():
        check_section_block(name, block, f"{key}.{name}")
    flat = flatten({k: v for k, v in delta.items() if not (k in C.SECTIONS and not v)})
    for k in flat:
        _check_section(k, f"{key}.{k}")
    return flat


def check_section_block(name: str, block: Any, key: str) -> None:
    """``model: debug`` where a mapping of model settings (``model: {preset: debug}``) goes."""
    if name in C.SECTIONS and block is not None and not isinstance(block, Mapping):
        raise ConfigError(f"expected a mapping of settings (e.g. {name}: "
                          f"{SECTION_EXAMPLES[name]}), got {block!r}", key=key)


def _check_section(dotted: str, key: str) -> None:
    section = dotted.split(".")[0]
    if section not in C.SECTIONS or "." not in dotted:
        raise ConfigError(f"unknown section '{section}'{did_you_mean(section, C.SECTIONS)}; "
                          f"settings live under {', '.join(C.SECTIONS)} (e.g. model.d_model)",
                          key=key)


def check_axis(dotted: str, key: str) -> None:
    """A grid/zip axis names a setting of a section (``model.d_model``), checked before the
    sweep expands, so a typo is reported under the axis and not under a point of the grid."""
    _check_section(dotted, key)
    section, name = dotted.split(".", 1)
    fields = [f.name for f in dataclasses.fields(C.SECTIONS[section])]
    if name not in fields:
        raise C.unknown_key(name, fields, key)


def apply_presets(flat: dict[str, Any], key: str) -> dict[str, Any]:
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


class Resolver:
    """Flat dotted settings -> checked RunConfig, with per-section caches.

    A study's runs share most sections (one tokenizer, one data block, a train block per seed),
    and ``from_dict`` re-reads type hints on every call, so identical sections are built once and
    copied; only what differs is validated again.
    """

    def __init__(self) -> None:
        self._sections: dict[tuple[str, str], Any] = {}
        self._solved: dict[str, C.ModelConfig] = {}

    def section(self, name: str, data: dict[str, Any], key: str) -> tuple[Any, dict[str, Any]]:
        """(checked section object, its plain dict); the dict is shared: read it only."""
        ck = (name, canonical_json(data))
        hit = self._sections.get(ck)
        if hit is None:
            try:
                obj = C.from_dict(C.SECTIONS[name], data, name)
            except ConfigError as err:
                raise err.under(key) from None
            hit = self._sections[ck] = (obj, C.to_dict(obj))
        return copy.copy(hit[0]), hit[1]

    def resolve(self, flat: Mapping[str, Any], key: str,
                fallback: Mapping[str, Any] | None = None) -> C.RunConfig:
        return self.resolve_with_dict(flat, key, fallback)[0]

    def resolve_with_dict(self, flat: Mapping[str, Any], key: str,
                          fallback: Mapping[str, Any] | None = None
                          ) -> tuple[C.RunConfig, dict[str, Any]]:
        """Evaluate derived expressions (dependency order), check, solve a params target.

        Names an expression uses that ``flat`` does not set (or that the expression itself sets:
        ``d_model: "d_model * 2 // 3"``) take their value from ``fallback``, the resolved
        defaults (for the defaults themselves: the dataclass defaults).
        """
        fallback = _class_defaults() if fallback is None else fallback
        flat = _target_placeholder(_evaluate_derived(dict(flat), key, fallback), fallback)
        nested = unflatten(flat)
        built = {name: self.section(name, nested.get(name) or {}, key) for name in C.SECTIONS}
        cfg = C.RunConfig(**{name: obj for name, (obj, _) in built.items()})
        resolved = {name: d for name, (_, d) in built.items()}
        if cfg.model.params_target is not None:
            cfg.model = self.solved(cfg, key)
            resolved["model"] = C.to_dict(cfg.model)
        else:
            for name in TARGET_KEYS:
                if getattr(cfg.model, name) is not None:
                    raise ConfigError("only applies with model.params_target (without a target, "
                                      "set d_model / d_ff directly)", key=f"{key}.model.{name}")
        problems = cfg.check()
        if problems:
            raise problems[0].under(key)
        return cfg, resolved

    def solved(self, cfg: C.RunConfig, key: str) -> C.ModelConfig:
        from lmablate.study.solve import solve_for_run

        ck = canonical_json([C.to_dict(cfg.model), C.to_dict(cfg.tokenizer), cfg.train.seq_len])
        if ck not in self._solved:
            try:
                self._solved[ck] = solve_for_run(cfg)
            except ConfigError as err:
                raise err.under(f"{key}.model") from None
        return copy.copy(self._solved[ck])


@cache
def _class_defaults() -> dict[str, Any]:
    return flatten(C.to_dict(C.RunConfig()))


def _target_placeholder(flat: dict[str, Any], fallback: Mapping[str, Any]) -> dict[str, Any]:
    """With a params_target and an embedding_share the solver picks d_model; until then it holds
    a width every head count divides, so the shape checks do not reject a value that goes away."""
    def get(k: str) -> Any:
        return flat.get(k, fallback.get(k))

    if get("model.params_target") is None or get("model.embedding_share") is None:
        return flat
    heads = get("model.n_heads")
    if isinstance(heads, int) and heads > 0:
        flat["model.d_model"] = 2 * heads
    return flat


def _evaluate_derived(flat: dict[str, Any], key: str,
                      fallback: Mapping[str, Any]) -> dict[str, Any]:
    pending = {k: v for k, v in flat.items() if is_expr(k, v)}
    while pending:
        pending_names = {n for k in pending for n in (k, k.split(".")[-1])}
        ready = [k for k, text in pending.items()
                 if not (expression_refs(text, f"{key}.{k}")
                         & (pending_names - {k, k.split(".")[-1]}))]
        if not ready:
            k = next(iter(pending))
            raise ConfigError(f"circular expression {pending[k]!r} (it depends on another derived "
                              "value that depends on it)", key=f"{key}.{k}")
        for k in ready:
            others = {n: v for n, v in flat.items() if n not in pending}
            flat[k] = evaluate_setting(k, pending.pop(k), expression_names({**fallback, **others}),
                                        f"{key}.{k}")
    return flat


def evaluate_setting(setting: str, text: str, names: Mapping[str, Any], key: str) -> Any:
    """The value of a setting's expression. A lone word that names nothing (``batch_size:
    eight``) is a value of the wrong type rather than an expression, and is reported so."""
    word = text.strip()
    if word.isidentifier() and word not in names and word not in ("True", "False", "None"):
        section, name = setting.split(".", 1)
        raise ConfigError(f"expected {C.expected_type(section, name)} or an expression over "
                          f"config keys, got {text!r}{did_you_mean(word, names)}", key=key)
    return evaluate(text, names, key=key)


def expression_refs(text: str, key: str) -> set[str]:
    """Names an expression refers to; a syntax error becomes the one-line ConfigError."""
    try:
        return names_in(text)
    except SyntaxError:
        evaluate(text, {}, key=key)  # raises the one-line syntax error
        raise
