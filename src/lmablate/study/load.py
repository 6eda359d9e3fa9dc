"""Load a study file: YAML -> include/scale/overrides -> checks -> runs.

This is the single entry point used by the Snakefile (``rules/common.smk``), the CLI
(``lmablate plan``) and notebooks, so config resolution and run IDs have one source of truth.

Order of application, each step over the previous one:

1. ``include: base.yaml`` (path relative to this file): the base study, deep-merged under this one;
2. top-level overrides (``--config scale=smoke``), which may pick the scale;
3. ``scales[scale]``: dotted overrides (``defaults.train.tokens: 20000``, ``sweep.grid: {...}``);
4. ``overrides:`` then dotted command-line overrides (``lmablate plan X --config
   defaults.train.lr=1e-3``). Snakemake's ``--config`` only takes plain top-level names, so from
   Snakemake dotted overrides go through this mapping:
   ``snakemake --config scale=smoke 'overrides={defaults.train.lr: 1e-3}'``. Snakemake passes the
   nested values as strings; string values of ``overrides`` are therefore read as YAML again
   (``"20000"`` -> 20000, ``"true"`` -> true).

Dotted keys name settings inside grid/zip/variant blocks as one key (``sweep.grid.model.n_heads``
sets the axis ``model.n_heads``), see :func:`lmablate.study.sweep.set_override`.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmablate.dicts import deep_merge
from lmablate.errors import ConfigError, did_you_mean
from lmablate.study import corpus_spec, yamlsafe
from lmablate.study.config import unknown_key
from lmablate.study.keys import EXECUTION_KEYS, TOP_KEYS
from lmablate.study.logging_spec import check_logging
from lmablate.study.sweep import SWEEP_KEYS, VARIANT_KEYS, Run, expand, set_override

__all__ = ["Study", "parse_override", "read_study", "read_workflow_study", "study_from_dict"]

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
SCHEMA_TYPES = {"array": "a list", "object": "a mapping", "string": "a string", "integer":
                "an integer", "number": "a number", "boolean": "true/false", "null": "null"}


@dataclass
class Study:
    name: str
    doc: dict[str, Any]  # the fully merged study document
    runs: list[Run]
    corpora: dict[str, dict[str, Any]]
    source: str | None = None  # file the study came from (for messages)

    @property
    def by_id(self) -> dict[str, Run]:
        return {r.run_id: r for r in self.runs}

    @property
    def baseline(self) -> str:
        return str(self.doc.get("baseline", "baseline"))

    @property
    def execution(self) -> dict[str, Any]:
        return dict(self.doc.get("execution") or {})


def parse_override(text: str) -> tuple[str, Any]:
    """``"defaults.train.lr=1e-3"`` -> (``"defaults.train.lr"``, 0.001) (value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"expected KEY=VALUE, got {text!r}", key="--config")
    key, value = text.split("=", 1)
    try:
        return key.strip(), yamlsafe.load_text(value) if value.strip() else None
    except ConfigError as err:
        raise err.under(f"--config {key.strip()}") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    """A study file's mapping, read as data (:mod:`lmablate.study.yamlsafe`)."""
    doc = yamlsafe.load_file(path)
    if doc is None:
        raise ConfigError("the study file is empty", file=str(path))
    if not isinstance(doc, dict):
        raise ConfigError(f"expected a mapping at the top level, got {type(doc).__name__}",
                          file=str(path))
    return doc


def _with_includes(doc: dict[str, Any], base_dir: Path, file: str, depth: int = 0) -> dict:
    inc = doc.get("include")
    if not inc:
        return doc
    if depth > 8:
        raise ConfigError("include nesting deeper than 8 (a cycle?)", key="include", file=file)
    inc_path = (base_dir / str(inc)).resolve()
    try:
        base = _with_includes(_read_yaml(inc_path), inc_path.parent, str(inc_path), depth + 1)
    except ConfigError as err:
        raise (err if err.file else err.with_file(str(inc_path))) from None
    merged = deep_merge(base, {k: v for k, v in doc.items() if k != "include"})
    return merged


def read_study(path: str | Path, overrides: Mapping[str, Any] | None = None) -> Study:
    """Read a study YAML file and expand it. Errors are :class:`ConfigError` naming the file."""
    path = Path(path)
    doc = _read_yaml(path)
    return study_from_dict(doc, overrides=overrides, source=str(path), base_dir=path.parent)


def read_workflow_study(configfiles: Sequence[str | Path],
                        config: Mapping[str, Any] | None = None) -> Study:
    """The study the Snakefile runs: ``snakemake --configfile`` files, each read like
    :func:`read_study` and merged in order as Snakemake merges them, then ``--config`` values
    merged over them. The same checks and messages as ``lmablate plan``, whatever Snakemake's own
    reading of the files did; messages name the last file."""
    doc: dict[str, Any] = {}
    for path in configfiles:
        doc = deep_merge(doc, _read_yaml(Path(path)))
    source = str(configfiles[-1])
    try:
        yamlsafe.check_data(dict(config or {}))
    except ConfigError as err:
        raise err.with_file(source) from None
    return study_from_dict(deep_merge(doc, dict(config or {})), source=source)


def study_from_dict(doc: Mapping[str, Any], *, overrides: Mapping[str, Any] | None = None,
                    source: str | None = None, base_dir: Path | None = None) -> Study:
    """Expand an already-parsed study document (e.g. Snakemake's ``config``, which holds the
    study file merged with ``--config`` values). ``doc`` is not modified. Relative paths
    (``include``, corpus files) are relative to ``base_dir``, else to ``source``'s folder."""
    if base_dir is None:
        base_dir = Path(source).resolve().parent if source else Path.cwd()
    try:
        return _study(copy.deepcopy(dict(doc)), overrides or {}, source, base_dir)
    except ConfigError as err:
        raise err.with_file(source) from None


def _reparsed(value: Any) -> Any:
    """Strings from ``snakemake --config 'overrides={k: v}'`` read as the YAML scalars they were.

    Snakemake parses nested ``--config`` values with YAML's BaseLoader, which leaves every scalar
    a string (``"20000"``, ``"true"``); those become numbers/booleans/null again. Strings that read
    as something else (``"[d_model, 2 * d_model]"``, an expression) stay strings.
    """
    if isinstance(value, list):
        return [_reparsed(v) for v in value]
    if isinstance(value, dict):
        return {k: _reparsed(v) for k, v in value.items()}
    if not isinstance(value, str) or not value.strip():
        return value
    try:
        parsed = yamlsafe.load_text(value)
    except ConfigError:
        return value
    return parsed if parsed is None or isinstance(parsed, (bool, int, float)) else value


def _mapping(doc: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = doc.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"expected a mapping, got {value!r}", key=key)
    return dict(value)


def _execution(execution: Any) -> dict[str, Any]:
    """The checked ``execution:`` block: known keys, whole numbers within their bounds
    (:data:`lmablate.study.keys.EXECUTION_KEYS`; strings from ``snakemake --config`` read as
    numbers again)."""
    if not isinstance(execution, Mapping):
        raise ConfigError(f"expected a mapping, got {execution!r}", key="execution")
    out = {}
    for key, value in _reparsed(dict(execution)).items():
        if key not in EXECUTION_KEYS:
            raise unknown_key(str(key), EXECUTION_KEYS, f"execution.{key}")
        least, most = EXECUTION_KEYS[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"expected an integer >= {least}, got {value!r}",
                              key=f"execution.{key}")
        if value > most:
            raise ConfigError(f"expected a value <= {most}, got {value}", key=f"execution.{key}")
        out[key] = value
    return out


def _tokenizer_located(run: Run, base_dir: Path) -> Run:
    """``tokenizer.path`` (kind: file) is relative to the study file, as corpus paths are
    (``package:`` allowed). The run's config holds the absolute location, for the job that copies
    it; its identity and config.yaml keep the path as written."""
    tok = run.config.tokenizer
    if not tok.path:
        return run
    located = dataclasses.replace(tok, path=corpus_spec.local_path(tok.path, base_dir))
    return dataclasses.replace(run, config=dataclasses.replace(run.config, tokenizer=located))


def _study(doc: dict[str, Any], overrides: Mapping[str, Any], source: str | None,
           base_dir: Path) -> Study:
    doc = _with_includes(doc, base_dir, source or "")
    for key, value in overrides.items():  # top-level overrides first: they may pick the scale
        if "." not in key:
            doc[key] = value
    scale = doc.get("scale")
    scales = _mapping(doc, "scales")
    if scale not in (None, "", "full"):
        if scale not in scales:
            raise ConfigError(f"unknown scale {scale!r}{did_you_mean(str(scale), scales)}; "
                              f"defined: {', '.join(scales) or 'none'}", key="scale")
        if not isinstance(scales[scale] or {}, Mapping):
            raise ConfigError("expected a mapping of dotted overrides", key=f"scales.{scale}")
        for key, value in (scales[scale] or {}).items():
            set_override(doc, str(key), copy.deepcopy(value))
    from_doc = {k: _reparsed(v) for k, v in _mapping(doc, "overrides").items()}
    for key, value in {**from_doc, **{k: v for k, v in overrides.items() if "." in k}}.items():
        set_override(doc, str(key), value)

    for key in doc:
        if key not in TOP_KEYS:
            raise ConfigError(f"unknown top-level key{did_you_mean(str(key), TOP_KEYS)}; expected "
                              f"one of: {', '.join(TOP_KEYS)}", key=str(key))
    name = doc.get("study")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ConfigError(f"expected a name of letters, digits, '.', '_' or '-', got {name!r}",
                          key="study")
    sweep = doc.get("sweep") or {}
    if not isinstance(sweep, dict):
        raise ConfigError(f"expected a mapping, got {sweep!r}", key="sweep")
    for key in sweep:
        if key not in SWEEP_KEYS:
            raise unknown_key(str(key), SWEEP_KEYS, f"sweep.{key}")
    for key in ("variants", "grid", "zip"):
        if sweep.get(key) is not None and not isinstance(sweep[key], Mapping):
            raise ConfigError(f"expected a mapping, got {sweep[key]!r}", key=f"sweep.{key}")
    for vname, vspec in (sweep.get("variants") or {}).items():
        if not NAME_RE.fullmatch(str(vname)):
            raise ConfigError("variant names may hold letters, digits, '.', '_' and '-'",
                              key=f"sweep.variants.{vname}")
        if vspec is not None and not isinstance(vspec, Mapping):
            raise ConfigError(f"expected a mapping of settings, got {vspec!r}",
                              key=f"sweep.variants.{vname}")
        for key in (vspec or {}):
            if key in VARIANT_KEYS or "." in key or key in ("model", "train", "data", "tokenizer"):
                continue
            raise ConfigError(f"unknown key{did_you_mean(str(key), VARIANT_KEYS)}; a variant holds "
                              f"dotted settings (model.x, train.y) and {', '.join(VARIANT_KEYS)}",
                              key=f"sweep.variants.{vname}.{key}")

    if doc.get("execution") is not None:
        doc["execution"] = _execution(doc["execution"])
    if doc.get("logging") is not None:
        doc["logging"] = check_logging(doc["logging"])

    corpora = corpus_spec.resolve_corpora(doc.get("corpora") or {}, base_dir)
    runs = [_tokenizer_located(r, base_dir) for r in expand(doc, corpora)]
    used = {r.config.data.corpus for r in runs}
    for corpus in sorted(used):
        if corpus not in corpora:
            presets = ", ".join(corpus_spec.PRESETS)
            raise ConfigError(f"unknown corpus {corpus!r}{did_you_mean(corpus, corpora)}; define "
                              f"it under `corpora:` or use a preset ({presets})", key="data.corpus")
    baseline = doc.get("baseline", "baseline")
    variants = {v for r in runs for v, _ in r.memberships()}  # a shared run's variants too
    if "baseline" in doc and baseline not in variants:
        raise ConfigError(f"baseline {baseline!r} is not a variant"
                          f"{did_you_mean(baseline, variants)}", key="baseline")
    study = Study(name=name, doc=doc, runs=runs, corpora=corpora, source=source)
    if doc.get("ranking") is not None:  # its own checks name the key better than the schema's
        from lmablate.study.phases import ranking_of

        ranking_of(study)
    _check_schema(doc)
    return study


@functools.lru_cache(maxsize=1)
def _schema_validator() -> Any:
    import jsonschema

    from lmablate.study.schema import study_schema

    schema = study_schema()
    return jsonschema.validators.validator_for(schema)(schema)


def _check_schema(doc: Mapping[str, Any]) -> None:
    """The merged study against the study schema (``schemas/config.schema.yaml`` is
    :func:`lmablate.study.schema.study_schema`'s output), after the checks above: what they let
    through
    (``seeds: 3``, ``description: [1, 2]``) is refused here, for ``plan`` and the Snakefile alike,
    in one line."""
    import jsonschema

    error = jsonschema.exceptions.best_match(_schema_validator().iter_errors(doc))
    if error is None:
        return
    key = ".".join(str(p) for p in error.absolute_path) or None
    if error.validator == "type":
        types = error.validator_value if isinstance(error.validator_value, list) \
            else [error.validator_value]
        wanted = " or ".join(SCHEMA_TYPES.get(t, t) for t in types)
        message = f"expected {wanted}, got {error.instance!r}"
    else:
        message = " ".join(error.message.split())
    raise ConfigError(message if len(message) <= 200 else message[:197] + "...", key=key)
