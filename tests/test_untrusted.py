"""Study files, includes, overrides and ``--config`` values are data: none of them runs code or
writes outside the working directory, under ``lmablate plan`` or under ``snakemake -n``.

Every payload below would create a marker file outside the working directory if anything
evaluated it: Snakemake's YAML templating (YTE) of ``--configfile``, a Python YAML tag, an
expression. Each must be refused with one line naming the file and the key, no traceback, and
leave no marker and no file outside the working directory. Snakemake runs as a user runs it: in a
copy of the workflow (Snakefile, rules, profiles), on a study file given with ``--configfile``.

The guard that makes Snakemake read config files with lmablate's loader
(:mod:`lmablate.workflow.snakemake_guard`, installed by ``profiles/default/config.yaml``) patches
Snakemake
internals; the tests at the end fail if those move.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
from conftest import REPO

TRACEBACK = "Traceback (most recent call last)"
WORKFLOW = ("Snakefile", "config.yaml", "rules", "profiles", "schemas", "workflow_scripts",
            "report", "envs")
BASE = """\
study: tiny
corpora:
  tiny-stories: {source: file, path: "package:tinystories_valid_1k.txt", separator: "\\n\\n",
                 max_documents: 400}
data: {corpus: tiny-stories, val_fraction: 0.1}
tokenizer: {kind: bpe, vocab_size: 320}
defaults:
  model: {preset: debug}
  train: {tokens: 4096, batch_size: 8, seq_len: 32}
"""
YTE = "is a YTE template expression, which lmablate never evaluates: study files are data, not code"
NOT_CODE = "YTE templating is not allowed: study files are data, not code"


def _touch(marker: str) -> str:
    """A Python expression that creates ``marker`` (and is true)."""
    return f"__import__('pathlib').Path('{marker}').touch() or 1"


# name: (study file text, {extra files}, plan args, snakemake args, message after "<file>: ")
# {touch} is filled in with _touch(marker); {base} is base.yaml, a clean study next to it
PAYLOADS = {
    "yte_expression": ("__use_yte__: true\ninclude: base.yaml\ndescription: \"?{touch}\"\n", {},
                       [], [], rf"description: line 3: .* {YTE}"),
    "yte_definitions": ("__use_yte__: true\n__definitions__:\n  - \"x = {touch}\"\n"
                        "include: base.yaml\n", {}, [], [], rf"__use_yte__: line 1: {NOT_CODE}"),
    "yte_if_key": ("__use_yte__: true\ninclude: base.yaml\n\"?if {touch}\":\n  description: x\n",
                   {}, [], [], rf"line 3: .\?if .* {YTE}"),
    "yte_in_include": ("include: evil_base.yaml\n",
                       {"evil_base.yaml": "__use_yte__: true\ninclude: base.yaml\n"
                                          "description: \"?{touch}\"\n"},
                       [], [], rf"description: line 3: .* {YTE}"),
    "python_tag_apply": ("include: base.yaml\ndescription: !!python/object/apply:exec [\"{touch}\"]"
                         "\n", {}, [], [],
                         r"invalid YAML: line 2, column 14: could not determine a constructor for "
                         r"the tag 'tag:yaml\.org,2002:python/object/apply:exec'"),
    "python_tag_new": ("include: base.yaml\ndescription: !!python/object/new:subprocess.Popen "
                       "[[touch, {marker}]]\n", {}, [], [],
                       r"invalid YAML: .*could not determine a constructor for the tag"),
    "override_yte": ("include: base.yaml\noverrides: {{description: \"?{touch}\"}}\n", {}, [], [],
                     rf"overrides\.description: line 2: .* {YTE}"),
    "override_expression": ("include: base.yaml\noverrides: {{sweep.where: \"{touch}\"}}\n", {},
                            [], [], r"sweep\.where: '__import__' is not allowed in expression"),
    "name_outside": ("include: base.yaml\nstudy: ../../outside\n", {}, [], [],
                     r"study: expected a name of letters, digits"),
    "variant_outside": ("include: base.yaml\nsweep: {{variants: {{../../outside: {{}}}}}}\n", {},
                        [], [], r"sweep\.variants\.\.\./\.\./outside: variant names may hold"),
    "config_yte": ("include: base.yaml\n", {}, ["-C", "description=?{touch}"],
                   ["--config", "description=?{touch}"], rf"description: (?:line 1: )?.* {YTE}"),
    "config_expression": ("include: base.yaml\n", {}, ["-C", "sweep.where={touch}"],
                          ["--config", "overrides={{sweep.where: \"{touch}\"}}"],
                          r"sweep\.where: '__import__' is not allowed in expression"),
}


def copy_workflow(dest: Path) -> Path:
    """The workflow as a user has it: Snakefile, rules, profiles/default, ... (no tests)."""
    dest.mkdir(parents=True)
    for name in WORKFLOW:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    return dest


def _run(cmd: list[str], cwd: Path) -> tuple[int, str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=300, check=False)
    return proc.returncode, proc.stdout


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root/workflow (a copy of the workflow, the working directory) and root/outside."""
    root = tmp_path_factory.mktemp("untrusted")
    copy_workflow(root / "workflow")
    (root / "outside").mkdir()
    return root


def _payload(name: str, folder: str, root: Path) -> tuple[Path, list[str], list[str], str, Path]:
    """Write payload ``name``'s files into root/workflow/studies/<folder>; (study file, plan args,
    snakemake args, message regex, marker)."""
    text, extra, plan_args, sm_args, message = PAYLOADS[name]
    marker = root / "outside" / f"pwned-{folder}"
    fill = {"touch": _touch(str(marker)), "marker": str(marker)}
    studies = root / "workflow" / "studies" / folder
    studies.mkdir(parents=True)
    (studies / "base.yaml").write_text(BASE)
    for fname, ftext in {**extra, "study.yaml": text}.items():
        (studies / fname).write_text(ftext.format(**fill))
    return (studies / "study.yaml", [a.format(**fill) for a in plan_args],
            [a.format(**fill) for a in sm_args], message, marker)


def _outside(root: Path) -> set[str]:
    """Every path under root except the working directory's."""
    return {p for p in _files(root) if p.split(os.sep)[0] != "workflow"}


@pytest.mark.workflow
@pytest.mark.parametrize("command", ["plan", "snakemake"])
@pytest.mark.parametrize("name", list(PAYLOADS))
def test_payload_is_refused_in_one_line_and_never_runs(name: str, command: str,
                                                       sandbox: Path) -> None:
    work = sandbox / "workflow"
    study, plan_args, sm_args, message, marker = _payload(name, f"{name}-{command}", sandbox)
    outside = _outside(sandbox)
    if command == "plan":
        status, out = _run([sys.executable, "-m", "lmablate", "plan", str(study), *plan_args],
                           work)
        prefix, expected_status = "lmablate: error: ", 2
    else:  # as a user: in the workflow's folder, profiles/default picked up by Snakemake
        status, out = _run([sys.executable, "-m", "snakemake", "-n", "-c1", "--configfile",
                            str(study), *sm_args], work)
        prefix, expected_status = "lmablate: ", 1
    assert not marker.exists(), f"{name}: the payload ran\n{out}"
    assert status == expected_status, out[-3000:]
    # one line naming the file (the study, the include holding the payload; plan's -C: --config)
    # and the key
    rx = re.compile("^" + re.escape(prefix) + r"(?:\S+\.yaml: |--config )" + message)
    lines = [ln for ln in out.splitlines() if rx.search(ln)]
    assert len(lines) == 1, f"expected one line matching {rx.pattern!r}\n{out[-3000:]}"
    assert TRACEBACK not in out, out[-3000:]
    assert _outside(sandbox) == outside, sorted(_outside(sandbox) - outside)


@pytest.mark.workflow
def test_without_the_workflow_profile_snakemake_templates_and_the_snakefile_still_refuses(
        sandbox: Path) -> None:
    """Why profiles/default installs the guard: with ``--workflow-profile none`` Snakemake runs a
    study's template itself while reading --configfile (the marker appears). The Snakefile, which
    reads the study with lmablate's loader, still refuses it with the same line as plan."""
    study, _, _, message, marker = _payload("yte_expression", "no-profile", sandbox)
    status, out = _run([sys.executable, "-m", "snakemake", "-n", "-c1", "--workflow-profile",
                        "none", "--configfile", str(study)], sandbox / "workflow")
    assert marker.exists(), out[-3000:]
    assert status == 1
    assert len(re.findall(rf"(?m)^lmablate: \S+\.yaml: {message}", out)) == 1, out[-3000:]


@pytest.mark.workflow
def test_snakemake_run_on_the_repository_snakefile_is_guarded_too(tmp_path: Path) -> None:
    """``snakemake -s <repo>/Snakefile -d <dir>`` (how the tests run it) finds the workflow profile
    next to the Snakefile, so the guard is on there as well."""
    marker = tmp_path / "pwned"
    study = tmp_path / "study.yaml"
    study.write_text(f"__use_yte__: true\nstudy: \"?{_touch(str(marker))} and 'x'\"\n")
    status, out = _run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d",
                        str(tmp_path), "-n", "--configfile", str(study)], tmp_path)
    assert not marker.exists()
    assert status == 1
    assert re.search(rf"(?m)^lmablate: {re.escape(str(study))}: study: line 2: .* {YTE}", out), out


# --------------------------------------------------------------------------------------------------
# the loader (lmablate.study.yamlsafe) on its own

CHAIN = "".join(f"a{i}: &a{i} " + "[" * 30 + (f"*a{i - 1}" if i else "1") + "]" * 30 + "\n"
                for i in range(4))


@pytest.mark.parametrize("text, message", [
    pytest.param("a: &a [1, *a]\n", r"a\[1\]: line 1: an alias refers to the mapping or list that "
                 "holds it", id="recursive-alias"),
    pytest.param(CHAIN, r"a2\[0\]\[0\]\[0\]\.\.\.: line 3: nested deeper than 64 levels \(through "
                 "aliases\)", id="alias-chain-depth"),
    pytest.param("x: {a: 1, b: 2, a: 3}\n", r"x\.a: line 1: duplicate key 'a' \(first at line 1\)",
                 id="duplicate-in-flow-mapping"),
    pytest.param("- {a: 1}\n- {b: '?x'}\n", r"\[1\]\.b: line 2: '\?x' is a YTE template",
                 id="yte-in-a-list"),
    pytest.param("a: 1\n---\nb: 2\n", r"invalid YAML: line 2, column 1: but found another document",
                 id="two-documents"),
    pytest.param("x:\n  seed: " + "9" * 5000 + "\n", r"x\.seed: line 2: an integer of more than "
                 "100 digits", id="integer-over-4300-digits"),
    pytest.param("x: [0x" + "f" * 90 + "]\n", r"x\[0\]: line 1: an integer of more than 100 digits",
                 id="hex-integer"),
])
def test_loader_refuses_in_one_line(text: str, message: str) -> None:
    from lmablate.errors import ConfigError
    from lmablate.study.yamlsafe import load_text

    with pytest.raises(ConfigError) as err:
        load_text(text, file="f.yaml")
    assert re.fullmatch(r"f\.yaml: " + message + ".*", str(err.value)), str(err.value)
    assert "\n" not in str(err.value)


def test_loader_reads_what_studies_use() -> None:
    """Anchors, merge keys, JSON, a `?` inside a text: all fine."""
    from lmablate.study.yamlsafe import load_text

    text = "base: &b {x: 1, y: 2}\nv: {<<: *b, y: 3}\nw: [*b, *b]\ndescription: 'why? because'\n"
    assert load_text(text) == {"base": {"x": 1, "y": 2}, "v": {"x": 1, "y": 3},
                               "w": [{"x": 1, "y": 2}] * 2, "description": "why? because"}
    assert load_text('{"study": "x", "seeds": [0, 1]}') == {"study": "x", "seeds": [0, 1]}


def test_config_values_are_checked_as_file_text_is() -> None:
    from lmablate.errors import ConfigError
    from lmablate.study.yamlsafe import check_data

    check_data({"overrides": {"defaults.train.lr": "1e-3"}, "scale": "smoke"})
    for value, key in (({"description": "?x"}, "description"),
                       ({"overrides": {"__use_yte__": True}}, "overrides.__use_yte__")):
        with pytest.raises(ConfigError, match="study files are data, not code") as err:
            check_data(value)
        assert err.value.key == key
    deep: list = []
    for _ in range(100):
        deep = [deep]
    with pytest.raises(ConfigError, match="nested deeper than 64 levels"):
        check_data({"description": deep})
    with pytest.raises(ConfigError, match="an integer of more than 100 digits") as err:
        check_data({"defaults": {"train": {"seed": 10**5000}}})
    assert err.value.key == "defaults.train.seed"


# --------------------------------------------------------------------------------------------------
# the guard against Snakemake's internals

GUARD_CHECK = """
import sys, yte
from pathlib import Path
import snakemake.cli  # the modules the CLI has loaded when it reads the workflow profile
from lmablate.workflow import snakemake_guard
snakemake_guard.install()
snakemake_guard.install()  # idempotent
assert snakemake_guard.installed()
from snakemake.common import configfile
from snakemake.settings.types import ConfigSettings
from snakemake.workflow import Workflow
# `configfile:` in a Snakefile reads through configfile.load_configfile, looked up when called
assert "load_configfile" in Workflow.configfile.__code__.co_names
def templated(*args, **kwargs):
    raise AssertionError("a config file reached YTE")
process_yaml, yte.process_yaml = yte.process_yaml, templated
clean, evil, schema = map(Path, sys.argv[1:4])
assert configfile.load_configfile(clean) == {"study": "x", "n": [1, 2]}
assert ConfigSettings(configfiles=[clean]).overwrite_config == {"study": "x", "n": [1, 2]}
for load in (configfile.load_configfile, lambda f: ConfigSettings(configfiles=[f])):
    try:
        load(evil)
    except SystemExit as err:
        print(err)
    else:
        raise AssertionError("not refused")
# schemas are still Snakemake's to read
yte.process_yaml = process_yaml
from snakemake.utils import validate
validate({"n": 1}, str(schema))
print("ok")
"""


def test_guard_makes_snakemakes_config_loader_lmablates(tmp_path: Path) -> None:
    """The guard patches the installed Snakemake where the CLI reads --configfile; if Snakemake
    moves its config-file loading, this fails (and so would the workflow profile: fail closed)."""
    (tmp_path / "clean.yaml").write_text("study: x\nn: [1, 2]\n")
    (tmp_path / "evil.yaml").write_text("__use_yte__: true\nstudy: \"?__import__('os')\"\n")
    (tmp_path / "schema.yaml").write_text("$schema: https://json-schema.org/draft/2020-12/schema\n"
                                         "type: object\nproperties: {n: {type: integer}}\n")
    status, out = _run([sys.executable, "-c", GUARD_CHECK, *(str(tmp_path / f) for f in
                        ("clean.yaml", "evil.yaml", "schema.yaml"))], tmp_path)
    assert status == 0, out
    refusals = [ln for ln in out.splitlines() if ln.startswith("lmablate: ")]
    assert len(refusals) == 2 and all("evil.yaml: study: line 2: " in r for r in refusals), out
    assert out.rstrip().endswith("ok")


def test_guard_fails_closed_when_snakemakes_loader_moved(monkeypatch: pytest.MonkeyPatch) -> None:
    """install() raises instead of leaving study files to Snakemake's templating."""
    from lmablate.workflow import snakemake_guard
    from lmablate.workflow.snakemake_guard import GuardError

    monkeypatch.delitem(sys.modules, snakemake_guard.MODULE, raising=False)
    with pytest.raises(GuardError, match="is not loaded"):
        snakemake_guard.install()
    moved = types.ModuleType(snakemake_guard.MODULE)
    moved.load_configfile = lambda path: {}  # reads files some other way
    moved._load_configfile = lambda path, filetype="Config": {}
    monkeypatch.setitem(sys.modules, snakemake_guard.MODULE, moved)
    with pytest.raises(GuardError, match="no longer calls _load_configfile"):
        snakemake_guard.install()
    assert not snakemake_guard.installed()
    del moved._load_configfile
    with pytest.raises(GuardError, match="has no _load_configfile"):
        snakemake_guard.install()


def test_workflow_profile_installs_the_guard_first() -> None:
    """profiles/default/config.yaml installs the guard in its YTE definitions (the profile is read
    before --configfile)."""
    import yaml

    profile = yaml.safe_load((REPO / "profiles" / "default" / "config.yaml").read_text())
    assert profile["__use_yte__"] is True
    assert profile["__definitions__"] == ["import lmablate.workflow.snakemake_guard",
                                          "lmablate.workflow.snakemake_guard.install()"]
