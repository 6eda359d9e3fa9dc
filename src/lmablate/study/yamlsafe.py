"""Read YAML as data: lmablate's one loader for study files, includes and overrides.

Study files are data, never code. :class:`StudyLoader` is PyYAML's ``SafeLoader`` (no Python
tags) that also refuses, with one line naming the file, the key and the line:

- duplicate keys (plain YAML keeps the last one silently: a whole ``defaults:`` block or variant
  would vanish);
- YTE templating (``__use_yte__``, ``__definitions__``, ``__variables__``, ``?expression`` keys and
  values): Snakemake evaluates these as Python when it reads ``--configfile``;
  :mod:`lmablate.workflow.snakemake_guard` makes it read config files with this loader instead;
- nesting deeper than :data:`MAX_DEPTH` and more than :data:`MAX_NODES` values once aliases are
  expanded (an alias bomb fits in a few hundred bytes and expands to billions of values);
- integers of more than :data:`MAX_INT_DIGITS` digits (Python refuses to read or print integers
  over 4,300 digits, with a traceback);
- files over :data:`MAX_BYTES`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from lmablate.errors import ConfigError

__all__ = ["MAX_BYTES", "MAX_DEPTH", "MAX_INT_DIGITS", "MAX_NODES", "StudyLoader", "check_data",
           "load_file", "load_text"]

MAX_DEPTH = 64  # levels of nesting (a study uses about 6)
MAX_NODES = 200_000  # values, aliases expanded (a large study holds a few thousand)
MAX_BYTES = 8 << 20
MAX_INT_DIGITS = 100  # decimal digits of an integer (the largest bound of any setting has 20)
YTE_KEYS = ("__use_yte__", "__definitions__", "__variables__")
MERGE_TAG = "tag:yaml.org,2002:merge"
STR_TAG = "tag:yaml.org,2002:str"
INT_TAG = "tag:yaml.org,2002:int"
NOT_CODE = "study files are data, not code (README: Trusted inputs)"


class _Refused(yaml.YAMLError):
    """A well-formed document lmablate will not read; carries the key path and the line."""

    def __init__(self, message: str, key: str, mark: yaml.Mark | None) -> None:
        super().__init__(message)
        self.message, self.key, self.mark = message, key, mark

    def config_error(self, file: str | None) -> ConfigError:
        line = f"line {self.mark.line + 1}: " if self.mark else ""
        return ConfigError(f"{line}{self.message}", key=self.key or None, file=file)


def _dotted(parts: list[str]) -> str:
    """``["", "sweep", "seeds", "[2]"]`` -> ``sweep.seeds[2]`` (deep paths cut after 4 parts)."""
    parts = [p for p in parts if p]
    cut = "..." if len(parts) > 6 else ""
    return (".".join(parts[:4] if cut else parts) + cut).replace(".[", "[")


def _short(text: str, n: int = 40) -> str:
    return repr(text if len(text) <= n else text[:n] + "...")


class StudyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, YTE templating, deep nesting and alias bombs.

    The checks run while the document is composed (before any Python object is built): each
    node's size (values below it, aliases expanded) and height are known when it is finished,
    and an alias reuses its anchor's numbers, so a bomb is refused as soon as the line that makes
    it too large is read (in about a millisecond), without expanding anything.
    """

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._path: list[str] = []  # keys from the root to the node being composed
        self._measure: dict[int, tuple[int, int]] = {}  # id(node) -> (size, height)
        self._keys: dict[int, dict[tuple[str, str], int]] = {}  # id(mapping) -> {key: line}

    def _where(self, *more: str) -> str:
        return _dotted([*self._path, *more])

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        if isinstance(parent, MappingNode) and isinstance(index, Node):
            self._check_key(parent, index)
        self._path.append(self._name(parent, index))
        try:
            event = self.peek_event()
            if len(self._path) > MAX_DEPTH:
                raise _Refused(f"nested deeper than {MAX_DEPTH} levels", self._where(),
                               event.start_mark)
            anchored = self.anchors.get(event.anchor) if isinstance(event, AliasEvent) else None
            if anchored is not None and id(anchored) not in self._measure:  # not finished yet
                raise _Refused("an alias refers to the mapping or list that holds it",
                               self._where(), event.start_mark)
            node = super().compose_node(parent, index)
            self._measured(node)
            return node
        finally:
            self._path.pop()

    @staticmethod
    def _name(parent: Node | None, index: Any) -> str:
        if isinstance(parent, SequenceNode):
            return f"[{index}]"
        if isinstance(index, ScalarNode):
            return str(index.value)
        return ""  # the document, or a key being composed

    def _check_key(self, mapping: MappingNode, key: Node) -> None:
        """Refuse a key seen before in this mapping (merge keys ``<<`` excepted)."""
        if not isinstance(key, ScalarNode) or key.tag == MERGE_TAG:
            return
        seen = self._keys.setdefault(id(mapping), {})
        if (key.tag, key.value) in seen:
            first = seen[key.tag, key.value]
            raise _Refused(f"duplicate key {key.value!r} (first at line {first}); YAML would keep "
                           "only the last one", self._where(str(key.value)), key.start_mark)
        seen[key.tag, key.value] = key.start_mark.line + 1

    def _measured(self, node: Node) -> None:
        """Record ``node``'s size and height (its children are finished, so measured); refuse YTE
        text, bombs and deep alias chains."""
        if id(node) in self._measure:  # an alias: its anchor again
            size, height = self._measure[id(node)]
        elif isinstance(node, ScalarNode):
            self._refuse_yte(node)
            self._refuse_long_int(node)
            size, height = 1, 1
            self._measure[id(node)] = (size, height)
        else:
            children = [c for kv in node.value for c in kv] if isinstance(node, MappingNode) \
                else list(node.value)
            if isinstance(node, MappingNode):
                for key, _ in node.value:
                    if isinstance(key, ScalarNode) and key.value in YTE_KEYS:
                        raise _Refused(f"YTE templating is not allowed: {NOT_CODE}",
                                       self._where(key.value), key.start_mark)
            size = 1 + sum(self._measure[id(c)][0] for c in children)
            height = 1 + max((self._measure[id(c)][1] for c in children), default=0)
            self._measure[id(node)] = (size, height)
        if height > MAX_DEPTH:
            raise _Refused(f"nested deeper than {MAX_DEPTH} levels (through aliases)",
                           self._where(), node.start_mark)
        if size > MAX_NODES:
            raise _Refused(f"holds more than {MAX_NODES:,} values once aliases are expanded "
                           "(an alias bomb?)", self._where(), node.start_mark)

    def _refuse_yte(self, node: ScalarNode) -> None:
        if node.tag == STR_TAG and isinstance(node.value, str) and node.value.startswith("?"):
            raise _Refused(f"{_short(node.value)} is a YTE template expression, which lmablate "
                           f"never evaluates: {NOT_CODE}", self._where(), node.start_mark)

    def _refuse_long_int(self, node: ScalarNode) -> None:
        """An integer of more than MAX_INT_DIGITS digits, whatever its notation (decimal, hex,
        octal, binary, sexagesimal), refused before Python reads it as a number."""
        if node.tag != INT_TAG:
            return
        digits = sum(c.isalnum() for c in node.value)
        if digits <= MAX_INT_DIGITS + 2:  # a short text: read it (hex 0x... is the densest)
            value = self.construct_yaml_int(node)
            if abs(value) < 10**MAX_INT_DIGITS:
                return
        raise _Refused(f"an integer of more than {MAX_INT_DIGITS} digits", self._where(),
                       node.start_mark)

    def compose_document(self) -> Node:
        node = super().compose_document()
        self._measure.clear()
        self._keys.clear()
        return node


def load_text(text: str, *, file: str | None = None) -> Any:
    """Parse YAML (or JSON) text as data. Errors are one-line :class:`ConfigError`s."""
    loader = StudyLoader(text)
    try:
        return loader.get_single_data()
    except _Refused as err:
        raise err.config_error(file) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"invalid YAML: {where}{problem}", file=file) from None
    finally:
        loader.dispose()


def load_file(path: str | Path) -> Any:
    """:func:`load_text` of a file (UTF-8, at most :data:`MAX_BYTES`); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("study file not found", file=str(path))
    if path.stat().st_size > MAX_BYTES:
        raise ConfigError(f"larger than {MAX_BYTES >> 20} MiB; a study file is a few KiB",
                          file=str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError("not a UTF-8 text file", file=str(path)) from None
    return load_text(text, file=str(path))


def check_data(value: Any, key: str = "") -> None:
    """Apply the loader's checks to a value that did not come from YAML text (``snakemake
    --config``): no YTE keys or ``?expression`` strings, bounded depth, size and integers."""
    budget = [MAX_NODES]

    def walk(v: Any, path: list[str]) -> None:
        budget[0] -= 1
        where = _dotted(path)
        if budget[0] < 0:
            raise ConfigError(f"holds more than {MAX_NODES:,} values", key=key or None)
        if len(path) > MAX_DEPTH:
            raise ConfigError(f"nested deeper than {MAX_DEPTH} levels", key=where or None)
        if isinstance(v, str) and v.startswith("?"):
            raise ConfigError(f"{_short(v)} is a YTE template expression, which lmablate never "
                              f"evaluates: {NOT_CODE}", key=where or None)
        if isinstance(v, int) and abs(v) >= 10**MAX_INT_DIGITS:
            raise ConfigError(f"an integer of more than {MAX_INT_DIGITS} digits", key=where or None)
        items = v.items() if isinstance(v, Mapping) else enumerate(v) \
            if isinstance(v, (list, tuple)) else ()
        for k, child in items:
            if k in YTE_KEYS:
                raise ConfigError(f"YTE templating is not allowed: {NOT_CODE}",
                                  key=_dotted([*path, str(k)]))
            walk(child, [*path, str(k) if isinstance(v, Mapping) else f"[{k}]"])

    walk(value, [key])
