"""Make Snakemake read study files (``--configfile``, ``configfile:``) as data.

Snakemake 9 reads config files with YTE (``yte.process_yaml(require_use_yte=True)``, PyYAML's
FullLoader): a file that says ``__use_yte__: true`` has its ``?expressions`` and
``__definitions__`` run as Python, before the Snakefile (and so lmablate) sees it. Its workflow
profile is read earlier still, and is trusted code: ``profiles/default/config.yaml`` calls
:func:`install`, which makes Snakemake's config-file loader lmablate's
(:func:`lmablate.study.yamlsafe.load_file`: no templating, no duplicate keys, no alias bombs).
Profiles
and schemas are still read by Snakemake's own loader.

It patches ``snakemake.common.configfile._load_configfile``, which ``load_configfile`` (used by
``--configfile`` and the ``configfile:`` directive) calls. If Snakemake's internals have moved, it
raises :class:`GuardError` rather than let a study file be templated: Snakemake then refuses to
start (fail closed) until this module is updated. This module only touches Snakemake modules
already loaded (the library never imports Snakemake).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from lmablate.errors import ConfigError, LmablateError
from lmablate.study import yamlsafe

__all__ = ["GuardError", "install", "installed"]

MODULE = "snakemake.common.configfile"
MARK = "__lmablate_guard__"


class GuardError(LmablateError):
    """Snakemake's config-file loader is not where this module expects it."""


def _fail(why: str) -> GuardError:
    return GuardError(f"lmablate.workflow.snakemake_guard: {why}; refusing to let Snakemake read "
                      "study files with its YAML templating (update "
                      "src/lmablate/workflow/snakemake_guard.py for this Snakemake version)")


def _guarded(original: Any) -> Any:
    """``_load_configfile`` that reads config files with lmablate's loader and prints a refusal
    as one line (``lmablate: <file>: <key>: <message>``) and exit status 1."""

    def _load_configfile(configpath_or_obj: Any, filetype: str = "Config") -> Any:
        if filetype != "Config":  # schemas: part of the workflow, read as Snakemake does
            return original(configpath_or_obj, filetype)
        try:
            if isinstance(configpath_or_obj, (str, Path)):
                return yamlsafe.load_file(configpath_or_obj)
            with configpath_or_obj as fh:
                return yamlsafe.load_text(fh.read(), file=getattr(fh, "name", None))
        except ConfigError as err:
            raise SystemExit(f"lmablate: {err}") from None

    setattr(_load_configfile, MARK, original)
    return _load_configfile


def installed() -> bool:
    """Whether Snakemake (in this process) reads config files through lmablate's loader."""
    module = sys.modules.get(MODULE)
    return module is not None and hasattr(getattr(module, "_load_configfile", None), MARK)


def install() -> None:
    """Patch Snakemake's config-file loader (idempotent); :class:`GuardError` if it can't."""
    module = sys.modules.get(MODULE)
    if module is None:
        raise _fail(f"{MODULE} is not loaded")
    original = getattr(module, "_load_configfile", None)
    public = getattr(module, "load_configfile", None)
    if not callable(original) or not callable(public):
        raise _fail(f"{MODULE} has no _load_configfile/load_configfile")
    if hasattr(original, MARK):
        return
    code = getattr(public, "__code__", None)
    if code is None or "_load_configfile" not in code.co_names:
        raise _fail(f"{MODULE}.load_configfile no longer calls _load_configfile")
    snakemake = [m for n, m in list(sys.modules.items()) if n.split(".")[0] == "snakemake"]
    for mod in snakemake:  # a module that imported the name binds the function itself
        other = getattr(mod, "load_configfile", public)
        if other is not public and callable(other):
            raise _fail(f"{mod.__name__}.load_configfile is not {MODULE}'s")
    guarded = _guarded(original)
    for mod in snakemake:
        if getattr(mod, "_load_configfile", None) is original:
            mod._load_configfile = guarded
    if not installed():
        raise _fail("the patch did not take")
