"""Shared fixtures: the repository, a tiny study, and running real snakemake in a temp dir."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

# A study small enough to train on a CPU in seconds: the `debug` model on 400 shipped stories.
TINY_STUDY = {
    "study": "tiny",
    "data": {"corpus": "tiny-stories", "val_fraction": 0.1},
    "corpora": {"tiny-stories": {"source": "file", "path": "package:tinystories_valid_1k.txt",
                                 "separator": "\n\n", "max_documents": 400}},
    "tokenizer": {"kind": "bpe", "vocab_size": 320},
    "defaults": {
        "model": {"preset": "debug"},
        "train": {"tokens": 8192, "batch_size": 8, "seq_len": 32, "lr": 3e-3, "eval_every": 8,
                  "eval_tokens": 2048, "log_every": 4},
    },
    "sweep": {"variants": {"baseline": {}, "post_norm": {"model.norm_position": "post"}},
              "seeds": [0, 1]},
}


@pytest.fixture
def tiny_study() -> dict:
    import copy

    return copy.deepcopy(TINY_STUDY)


def write_yaml(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# Whether the test being set up or run carries the `workflow` mark (set before its fixtures, so
# a module-scoped fixture that runs snakemake is checked against the test that first needs it).
_IN_WORKFLOW_TEST = [False]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    _IN_WORKFLOW_TEST[0] = item.get_closest_marker("workflow") is not None


def snakemake(workdir: Path, *args: str, configfile: str | None = "study.yaml",
              check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the real snakemake CLI on this repo's Snakefile in ``workdir`` (only from a test
    marked ``workflow``, so that ``-m "not workflow"`` leaves out every such run)."""
    assert _IN_WORKFLOW_TEST[0], "a test that runs snakemake needs @pytest.mark.workflow"
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir)]
    if configfile:
        cmd += ["--configfile", str(workdir / configfile)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=workdir)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def planned(workdir: Path, *args: str, **kw) -> tuple[Counter, set[str]]:
    """(jobs per rule, run IDs of planned train_model jobs) of ``snakemake -n``."""
    proc = snakemake(workdir, "-n", *args, **kw)
    out = proc.stdout + proc.stderr
    rules: Counter = Counter()
    run_ids: set[str] = set()
    current = None
    for line in out.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):", line.strip())
        if m:
            current = m.group(1)
            rules[current] += 1
            continue
        m = re.search(r"wildcards: .*run_id=([^,\s]+)", line)
        if m and current == "train_model":
            run_ids.add(m.group(1))
    rules.pop("all", None)
    return rules, run_ids


class LocalServer(ThreadingHTTPServer):
    """An HTTP server on 127.0.0.1 (a free port), for tests that drive the real download
    clients (urllib, huggingface_hub) against it."""

    daemon_threads = True

    def __init__(self, handler: type) -> None:
        super().__init__(("127.0.0.1", 0), handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@contextmanager
def serving(srv: LocalServer, poll_interval: float = 0.5) -> Iterator[LocalServer]:
    """Serve ``srv`` on a background thread for the duration of the block, then close it."""
    thread = threading.Thread(target=srv.serve_forever, args=(poll_interval,), daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)
