"""The shape of the code: packages that show the data flow, arrows that point one way.

The import graph of src/lmablate is built from the source with ast (imports inside functions
count: they run too) and checked for cycles between modules and for arrows against the package
order; the Snakefile and rules/*.smk may use only the study and workflow packages; no module
grows past 600 lines; the project speaks of itself, not of its history."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import REPO

SRC = REPO / "src"
# The package order, data flow first: a module imports only from its own layer or earlier ones.
# Base modules hold what every layer needs (errors, file I/O, units, devices, dict helpers, the
# file layout); `lmablate` itself (__init__: the public API) and __main__ (the CLI) come last.
LAYERS = [
    ("errors", "io", "units", "gpu", "dicts", "paths"),
    ("study",),
    ("data",),
    ("engine",),
    ("evaluation",),
    ("results",),
    ("figures",),
    ("interop",),
    ("workflow",),
    ("", "__main__"),
]
MAX_LINES = 600


def modules() -> dict[str, Path]:
    """Dotted module name -> file, every module of src/lmablate (a package is its __init__)."""
    found = {}
    for path in sorted((SRC / "lmablate").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imported_names(path: Path, module: str) -> set[str]:
    """Every name an import statement of the file names, at any depth (functions included):
    ``from A import B`` as A.B (a submodule of A, or a name A defines), relative imports
    resolved against the module's package."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = parts[: len(parts) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the lmablate modules it imports: for each imported name the most specific
    module it names (``lmablate.errors.ConfigError`` is lmablate.errors; ``lmablate.to_dict``
    is the package's __init__, the public API)."""
    mods = modules()
    graph = {}
    for name, path in mods.items():
        targets = set()
        for imported in imported_names(path, name):
            parts = imported.split(".")
            if parts[0] != "lmablate":
                continue
            target = next(c for c in (".".join(parts[:n]) for n in range(len(parts), 0, -1))
                          if c in mods)
            if target != name:
                targets.add(target)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def layer(module: str) -> int:
    """The position of a module's package in LAYERS."""
    top = module.split(".")[1] if "." in module else ""
    return next(i for i, names in enumerate(LAYERS) if top in names)


def test_the_module_finder_and_graph_see_function_level_and_relative_imports(
        tmp_path: Path) -> None:
    """The graph's parser on a file of its own: a function-level import counts, a relative one
    is resolved against the module's package."""
    path = tmp_path / "mod.py"
    path.write_text("import os\n\ndef f():\n    from lmablate.study import sweep\n"
                    "    from ..errors import ConfigError\n    return sweep, ConfigError\n")
    names = imported_names(path, "lmablate.data.mod")
    assert {"os", "lmablate.study.sweep", "lmablate.errors.ConfigError"} <= names
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_every_module_belongs_to_a_layer() -> None:
    unplaced = []
    for name in modules():
        try:
            layer(name)
        except StopIteration:
            unplaced.append(name)
    assert not unplaced, f"modules in no package of LAYERS: {unplaced}"


def test_the_import_graph_of_lmablate_has_no_cycles() -> None:
    graph = import_graph()
    assert "lmablate.study.sweep" in graph["lmablate.study.load"]  # the graph sees imports
    found = cycles(graph)
    assert not found, "import cycles between modules:\n" + "\n".join(
        " <-> ".join(c) for c in found)


def test_package_arrows_point_one_way() -> None:
    """errors/io/units/gpu/dicts/paths < study < data < engine < evaluation < results < figures
    < interop < workflow < lmablate/__main__: a module imports from its own package or an
    earlier one, never a later one."""
    backwards = sorted(
        f"{src} -> {dst}"
        for src, targets in import_graph().items()
        for dst in targets
        if layer(dst) > layer(src)
    )
    assert not backwards, "imports against the package order:\n" + "\n".join(backwards)


def test_no_module_is_over_600_lines() -> None:
    long = {name: n for name, path in modules().items()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_project_speaks_of_itself_not_of_its_history() -> None:
    files = [*sorted((SRC / "lmablate").rglob("*.py")), REPO / "README.md",
             REPO / "bench" / "README.md"]
    hits = [f"{path.relative_to(REPO)}:{i}: {line.strip()}"
            for path in files
            for i, line in enumerate(path.read_text().splitlines(), 1)
            if re.search(r"session", line, re.IGNORECASE)]
    assert not hits, "'session' in:\n" + "\n".join(hits)


def test_the_snakefile_uses_only_the_study_and_workflow_packages() -> None:
    """The Snakefile and rules/*.smk import (and name) only lmablate, lmablate.study.*,
    lmablate.workflow.* and the base modules below them (lmablate.paths: the file layout): what
    the rules need at parse time from data, engine, evaluation and results has one door,
    lmablate.workflow.dag."""
    allowed = re.compile(rf"lmablate(\.(study|workflow|{'|'.join(LAYERS[0])})(\.\w+)*)?$")
    used = re.compile(r"(?:^\s*(?:import|from)\s+(lmablate[\w.]*))|\b(lmablate(?:\.[a-z_]\w*)+)")
    wrong = []
    for path in [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]:
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if line.lstrip().startswith("#"):
                continue
            for m in used.finditer(line):
                name = m.group(1) or m.group(2)
                top = ".".join(name.split(".")[:2])
                if not (allowed.match(name) or allowed.match(top) or _top_level_name(top)):
                    wrong.append(f"{path.relative_to(REPO)}:{i}: {name}")
    assert not wrong, "the Snakefile uses other packages:\n" + "\n".join(wrong)


def _top_level_name(dotted: str) -> bool:
    """``lmablate.X`` where X is a name of the public API (lmablate/__init__), not a package."""
    name = dotted.partition(".")[2]
    return bool(name) and not (SRC / "lmablate" / name).is_dir() and not (
        SRC / "lmablate" / f"{name}.py").is_file()
