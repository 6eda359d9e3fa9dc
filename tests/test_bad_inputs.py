"""Bad inputs are refused clearly, and nothing finished is lost (tests/bad_inputs/cases.yaml).

One tiny study is run to completion first; then every case of the table is tried in the same
directory, as a user would meet it: ``snakemake`` with the case as its study, or the ``lmablate``
command. Each case must exit with the expected status and print exactly one line that names the
file, the key and what was expected, with no Python traceback on the terminal (a failing job's
traceback belongs in its log, whose path Snakemake prints); and every file of the finished study's
results/ must be byte for byte what it was.

The same directory then answers the security checks: nothing is written outside results/,
resources/, checkpoints/ (and Snakemake's logs/, benchmarks/, .snakemake/); HF_TOKEN, set for
every command, appears in no file and no terminal output; the source never calls eval/exec or an
unsafe YAML loader.
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from conftest import REPO, LocalServer, planned, serving

CASES_DIR = Path(__file__).parent / "bad_inputs"
CASES: dict[str, dict] = yaml.safe_load((CASES_DIR / "cases.yaml").read_text())
HF_TOKEN = "hf_secret123"
TRACEBACK = "Traceback (most recent call last)"
STORIES = b"".join(b"Story %d: the cat sat on mat number %d.\n\n" % (i, i) for i in range(50))
# where a workflow may write; everything else in the working directory is an input we put there
WRITABLE = ("results/", "resources/", "checkpoints/", "logs/", "benchmarks/", ".snakemake/")


# --------------------------------------------------------------------------------------------------
# a local server: the checksum case's download and a hub that hides a private dataset


class Server(LocalServer):
    def __init__(self) -> None:
        super().__init__(_Handler)
        self.auth: list[str | None] = []  # Authorization header of every hub request


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def do_GET(self) -> None:
        path = urlparse(self.path).path
        if path == "/stories.txt":
            self._reply(200, STORIES)
            return
        if path.startswith("/api/datasets/"):  # the hub: this dataset does not exist for you
            self.server.auth.append(self.headers.get("Authorization"))
            self._reply(404, b'{"error": "Repository not found"}',
                        {"X-Error-Code": "RepoNotFound", "Content-Type": "application/json"})
            return
        self._reply(404, b"not found")

    do_HEAD = do_GET

    def _reply(self, status: int, body: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        for k, v in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with serving(Server(), 0.05) as srv:
        yield srv


# --------------------------------------------------------------------------------------------------
# running commands as a user does


@dataclass
class Outcome:
    """What one case did: exit status, the terminal (stdout and stderr as interleaved), the log of
    the failed job if any, and the finished study's files it changed."""

    status: int
    terminal: str
    log: str | None = None
    log_path: str | None = None
    changed: list[str] = field(default_factory=list)


@dataclass
class Workdir:
    path: Path
    env: dict[str, str]
    cases: Path  # tests/bad_inputs copied here, ${SERVER} and ${HERE} filled in
    run_id: str
    tokens: str
    terminals: list[str] = field(default_factory=list)  # every terminal, for the HF_TOKEN check

    def run(self, cmd: list[str], cwd: Path | None = None) -> tuple[int, str]:
        proc = subprocess.run(cmd, cwd=cwd or self.path, env=self.env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=600, check=False)
        self.terminals.append(proc.stdout)
        return proc.returncode, proc.stdout

    def snakemake(self, study: Path, *args: str, workdir: Path | None = None) -> tuple[int, str]:
        workdir = workdir or self.path
        return self.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d",
                         str(workdir), "--configfile", str(study), *args], cwd=workdir)


def _env(tmp: Path, server: Server) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update(PYTHONWARNINGS="ignore", HF_TOKEN=HF_TOKEN, HF_ENDPOINT=server.url,
               HF_HOME=str(tmp.parent / f"{tmp.name}-hf-home"), NO_PROXY="127.0.0.1,localhost",
               LMABLATE_HTTP_RETRIES="1")
    env.pop("HF_HUB_OFFLINE", None)
    return env


def _copy_cases(dest: Path, server: Server) -> None:
    shutil.copytree(CASES_DIR, dest)
    for f in dest.glob("*.yaml"):
        text = f.read_text(errors="surrogateescape")
        if "${" in text:
            f.write_text(text.replace("${SERVER}", server.url).replace("${HERE}", str(dest)))


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under root/results."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((root / "results").rglob("*")) if p.is_file()}


def changed_files(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, server: Server) -> Workdir:
    """A directory holding one finished tiny study (tests/bad_inputs/base.yaml)."""
    from lmablate import read_study

    path = tmp_path_factory.mktemp("bad-inputs")
    _copy_cases(path / "bad_inputs", server)
    run = read_study(path / "bad_inputs" / "base.yaml").runs[0]
    w = Workdir(path, _env(path, server), path / "bad_inputs", run.run_id,
                f"resources/tokens/{run.config.data.corpus}-{run.data_id}.h5")
    status, out = w.snakemake(w.cases / "base.yaml", "-c2")
    assert status == 0, out[-5000:]
    return w


def _fill(text: str, w: Workdir, file: str) -> str:
    for key, value in (("{file}", file), ("{here}", str(w.cases)), ("{work}", str(w.path)),
                       ("{run_id}", w.run_id), ("{tokens}", w.tokens)):
        text = text.replace(key, value)
    return text


def _command(case: dict, w: Workdir, file: str) -> list[str]:
    args = [_fill(a, w, file) for a in case.get("args", [])]
    if case["command"] == "snakemake":
        return [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d",
                str(w.path), "--configfile", file, "-c1", *args]
    head = {"plan": ["plan", file], "train": ["train", file], "import-hf": ["import-hf", file],
            "solve": ["solve"]}[case["command"]]
    return [sys.executable, "-m", "lmablate", *head, *args]


LOG_PATH = re.compile(r"log: (\S+) \(check log file")


def _run_case(name: str, w: Workdir) -> Outcome:
    case = CASES[name]
    file = str(w.cases / case["file"])
    root = w.path
    if case.get("isolated"):
        root = w.path.parent / f"{w.path.name}-{name}"
        shutil.copytree(w.path, root, symlinks=True)
    before = snapshot(root)
    cmd = _command(case, w, file)
    if case["command"] == "snakemake":
        cmd[cmd.index("-d") + 1] = str(root)
    status, out = w.run(cmd, cwd=root)
    outcome = Outcome(status, out, changed=changed_files(before, snapshot(root)))
    if case.get("stage") == "job":
        m = LOG_PATH.search(out)
        if m:
            outcome.log_path = m.group(1)
            log = root / m.group(1)
            outcome.log = log.read_text(errors="replace") if log.is_file() else None
    if case.get("isolated"):  # the finished study must still be complete in its copy
        _, dry_run = w.snakemake(w.cases / "base.yaml", "-n", workdir=root)
        if "Nothing to be done" not in dry_run:
            outcome.changed.append("the finished study re-plans jobs:\n" + dry_run[-2000:])
    return outcome


def _writes(case: dict) -> bool:
    """Cases that could touch the finished study: a job runs, or `lmablate train` on its run."""
    return case.get("stage") == "job" or case["command"] == "train"


@pytest.fixture(scope="module")
def outcomes(work: Workdir) -> dict[str, Outcome]:
    """Every case, run once. Cases refused at parse time run two at a time (they cannot write);
    the others one at a time, each checked against a snapshot of results/ taken just before."""
    quiet = [n for n, c in CASES.items() if not _writes(c)]
    before = snapshot(work.path)
    with ThreadPoolExecutor(2) as pool:
        results = dict(zip(quiet, pool.map(lambda n: _run_case(n, work), quiet)))
    changed = changed_files(before, snapshot(work.path))
    for name in quiet:
        results[name].changed = changed
    for name in [n for n, c in CASES.items() if _writes(c)]:
        results[name] = _run_case(name, work)
    return results


# --------------------------------------------------------------------------------------------------
# the table


def test_case_table_names_real_files_and_covers_every_input():
    assert len(CASES) >= 30
    used = {c["file"] for c in CASES.values()}
    for name, case in CASES.items():
        assert case["command"] in ("snakemake", "plan", "train", "import-hf", "solve"), name
        assert case.get("stage", "parse") in ("parse", "job"), name
        re.compile(case["message"].replace("{file}", "x").replace("{run_id}", "x"))
        exists = (CASES_DIR / case["file"]).exists()
        assert exists != case["file"].startswith("no_such_"), (name, case["file"])
    data = {"base.yaml", "cases.yaml", "empty_corpus.txt", "stories.txt.gz",
            "tokenizer_config.json"}
    for f in CASES_DIR.iterdir():
        assert f.name in used | data, f"{f.name} is not used by any case"


def _params() -> list:
    out = []
    for name, case in CASES.items():
        marks = [pytest.mark.xfail(strict=True, raises=AssertionError, reason=case["xfail"])
                 ] if "xfail" in case else []
        out.append(pytest.param(name, marks=marks, id=name))
    return out


def _matching(text: str, case: dict, w: Workdir) -> list[str]:
    """Lines of ``text`` matching the case's message (placeholders filled in literally)."""
    pattern = case["message"]
    for key, value in (("{file}", str(w.cases / case["file"])), ("{run_id}", w.run_id)):
        pattern = pattern.replace(key, re.escape(value))
    if not case.get("raw"):
        pattern = r"^lmablate: (?:error: )?" + pattern
    rx = re.compile(pattern)
    return [line for line in text.splitlines() if rx.search(line)]


@pytest.mark.workflow
@pytest.mark.slow
@pytest.mark.parametrize("name", _params())
def test_bad_input_is_refused_clearly_and_nothing_finished_changes(name: str, work: Workdir,
                                                                   outcomes: dict) -> None:
    case, got = CASES[name], outcomes[name]
    where = f"{name}: status {got.status}\n{got.terminal[-3000:]}"
    assert got.status == case.get("status", 1 if case["command"] == "snakemake" else 2), where
    lines = _matching(got.terminal, case, work)
    assert len(lines) == 1, f"expected one line matching {case['message']!r}\n{where}"
    if case.get("stage") == "job":
        # the failed job's log holds the full traceback and the same line; the terminal names it
        assert got.log is not None, where
        assert got.log_path in got.terminal
        assert TRACEBACK in got.log, got.log
        assert len(_matching(got.log, case, work)) == 1, got.log
    else:
        assert TRACEBACK not in got.terminal, where
    assert not got.changed, f"{name} changed the finished study: {got.changed}"
    assert not any(p.name == "pwned" for p in work.path.rglob("pwned")), "injected code ran"


JOB_CASES = [n for n, c in CASES.items() if c.get("stage") == "job" and "xfail" not in c]


@pytest.mark.workflow
@pytest.mark.slow
def test_failed_jobs_show_no_traceback_on_the_terminal(outcomes: dict) -> None:
    shown = [n for n in JOB_CASES if TRACEBACK in outcomes[n].terminal]
    assert not shown, f"a traceback reached the terminal for {shown}"


@pytest.mark.workflow
@pytest.mark.slow
def test_finished_study_is_still_complete_after_every_case(work: Workdir, outcomes: dict) -> None:
    rules, _ = planned(work.path, configfile=str(work.cases / "base.yaml"))
    assert not rules, rules


# --------------------------------------------------------------------------------------------------
# security


@pytest.mark.workflow
@pytest.mark.slow
def test_nothing_is_written_outside_results_resources_checkpoints(work: Workdir,
                                                                    outcomes: dict) -> None:
    stray = [str(p.relative_to(work.path)) for p in work.path.rglob("*")
             if p.is_file() and not str(p.relative_to(work.path)).startswith(WRITABLE)
             and not str(p.relative_to(work.path)).startswith("bad_inputs/")]  # our inputs
    assert not stray, stray


@pytest.mark.workflow
@pytest.mark.slow
def test_hf_token_is_never_written_to_logs_configs_or_reports(work: Workdir, server: Server,
                                                              outcomes: dict) -> None:
    assert f"Bearer {HF_TOKEN}" in server.auth  # the hub case really sent it
    for text in work.terminals:
        assert HF_TOKEN not in text
    for root in [work.path, *work.path.parent.glob(f"{work.path.name}-*")]:  # + copies, HF_HOME
        for p in root.rglob("*"):
            if p.is_file():
                assert HF_TOKEN.encode() not in p.read_bytes(), p


SAFE_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"}


def _call_name(func: ast.expr) -> str:
    """``eval`` for eval(...), ``yaml.load`` for yaml.load(...), else an empty string."""
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        return f"{func.value.id}.{func.attr}"
    return ""


def _unsafe_calls(tree: ast.Module) -> Iterator[str]:
    """eval/exec calls and YAML loads without a safe Loader. ``yaml.load(t, Loader=x)`` is safe
    when every loader named in x (or in the module's assignments to x) is a safe one."""
    assigned: dict[str, list[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    assigned.setdefault(target.id, []).append(ast.unparse(node.value))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _call_name(node.func)
        if name in ("eval", "exec", "yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all",
                    "yaml.full_load_all"):
            yield f"line {node.lineno}: {ast.unparse(node)}"
        elif name in ("yaml.load", "yaml.load_all"):
            loader = next((k.value for k in node.keywords if k.arg == "Loader"),
                          node.args[1] if len(node.args) > 1 else None)
            text = "" if loader is None else ast.unparse(loader)
            if isinstance(loader, ast.Name):
                text += " ".join(assigned.get(loader.id, []))
            named = set(re.findall(r"\b(\w*Loader)\b", text))
            if not named or not named <= SAFE_LOADERS:
                yield f"line {node.lineno}: {ast.unparse(node)}"


UNSAFE_TEXT = re.compile(r"\b(?:eval|exec)\(|\byaml\.(?:load|unsafe_load|full_load)(?:_all)?\(")


def test_config_text_is_only_read_with_safe_yaml_and_never_evaluated() -> None:
    py = [*sorted((REPO / "src" / "lmablate").rglob("*.py")),
          *sorted((REPO / "workflow_scripts").glob("*.py"))]
    assert len(py) > 10
    for path in py:
        found = list(_unsafe_calls(ast.parse(path.read_text())))
        assert not found, f"{path}: {found}"
    for path in [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]:
        hits = [ln for ln in path.read_text().splitlines() if UNSAFE_TEXT.search(ln)]
        assert not hits, f"{path}: {hits}"
    # the check itself sees what it must refuse
    bad = ("import yaml\nyaml.load(t, Loader=yaml.Loader)\neval(s)\nL = yaml.FullLoader\n"
           "yaml.load(t, L)\n")
    assert len(list(_unsafe_calls(ast.parse(bad)))) == 3


@pytest.mark.workflow
@pytest.mark.slow
def test_a_study_that_includes_its_name_runs_under_snakemake(work: Workdir) -> None:
    study = work.cases / "included_name.yaml"
    study.write_text("include: base.yaml\nsweep: {seeds: [0]}\n")
    status, out = work.snakemake(study, "-n")
    assert status == 0 and "Nothing to be done" in out, out[-3000:]
