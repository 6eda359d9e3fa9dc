"""`url` and `hf` corpora against real HTTP servers on 127.0.0.1 (no network, no mocks).

The `url` tests run `requests` against a small server whose answers each test scripts (dropped
connections, 5xx, stalls, 404, Range). The `hf` tests run the installed `huggingface_hub` client
against a fake hub that answers the paths that client calls (read from its source):

    GET  /api/datasets/{repo}/revision/{rev}     HfApi.dataset_info -> {"id", "sha", ...}
    GET  /api/datasets/{repo}/tree/{rev}?recursive=...  HfApi.list_repo_files (pages of entries)
    HEAD /datasets/{repo}/resolve/{rev}/{file}   hf_hub_download metadata: X-Repo-Commit, ETag,
                                                 Content-Length (missing -> 404 + X-Error-Code)
    GET  /datasets/{repo}/resolve/{rev}/{file}   the bytes

with HF_ENDPOINT pointed at it, HF_HUB_OFFLINE unset, and HF_HOME / HF_TOKEN set per test. (The
client also asks for /api/agent-harnesses on its own; the fake hub answers 404 there.)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from conftest import LocalServer, serving

from lmablate.data.corpora import iter_documents, load_manifest, prepare_corpus
from lmablate.data.fetch import Net, download
from lmablate.errors import ConfigError, DataError
from lmablate.study.corpus_spec import resolve_corpora

FAST = Net(timeout=0.5, retries=3, backoff=0.01)
STORIES = "".join(f"Story {i}: the cat sat on mat number {i}.\n\n" for i in range(300)).encode()


# --------------------------------------------------------------------------------------------------
# a scriptable local HTTP server


class Server(LocalServer):
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(_Handler)
        self.routes: dict[str, Callable[[_Handler], None]] = {}
        self.log: list[dict] = []

    def hits(self, path: str) -> list[dict]:
        return [r for r in self.log if r["path"] == path]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def _dispatch(self) -> None:
        path = urlparse(self.path).path
        self.server.log.append({"method": self.command, "path": path, "query": urlparse(
            self.path).query, "headers": {k.lower(): v for k, v in self.headers.items()}})
        route = self.server.routes.get(path) or self.server.routes.get("*")
        if route is None:
            self.reply(404, b"not found")
        else:
            route(self)

    do_GET = do_HEAD = _dispatch

    def reply(self, status: int, body: bytes = b"", headers: dict | None = None,
              send_body: bool = True) -> None:
        self.send_response(status)
        headers = {"Content-Length": str(len(body)), **(headers or {})}
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if send_body and self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass


def serve_bytes(data: bytes, *, honour_range: bool = True) -> Callable[[_Handler], None]:
    def route(h: _Handler) -> None:
        rng = h.headers.get("Range")
        m = re.match(r"bytes=(\d+)-$", rng or "")
        if m and honour_range:
            start = int(m.group(1))
            if start >= len(data):
                h.reply(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                return
            span = f"bytes {start}-{len(data) - 1}/{len(data)}"
            h.reply(206, data[start:], {"Content-Range": span})
        else:
            h.reply(200, data)
    return route


def in_sequence(*routes: Callable[[_Handler], None]) -> Callable[[_Handler], None]:
    """Answer the n-th request with the n-th route (the last one repeats)."""
    calls = iter(routes)
    last = [routes[-1]]

    def route(h: _Handler) -> None:
        last[0] = next(calls, last[0])
        last[0](h)
    return route


def status(code: int) -> Callable[[_Handler], None]:
    return lambda h: h.reply(code, f"status {code}".encode())


def drop_after(data: bytes, n: int) -> Callable[[_Handler], None]:
    """Promise all of ``data`` but send ``n`` bytes and close the connection."""
    def route(h: _Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data[:n])
        h.wfile.flush()
        h.close_connection = True
    return route


def stall(seconds: float) -> Callable[[_Handler], None]:
    def route(h: _Handler) -> None:
        time.sleep(seconds)
        h.reply(200, b"late")
    return route


@pytest.fixture
def server() -> Iterator[Server]:
    with serving(Server(), 0.02) as srv:
        yield srv


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """127.0.0.1 must be reached directly even where a proxy is configured."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def url_spec(url: str, **extra: object) -> dict:
    return resolve_corpora({"web": {"source": "url", "url": url, **extra}}, Path("."))["web"]


# --------------------------------------------------------------------------------------------------
# url


def test_url_download_verifies_checksum_and_is_cached(server: Server, tmp_path: Path) -> None:
    server.routes["/data/stories.txt"] = serve_bytes(STORIES)
    spec = url_spec(server.url + "/data/stories.txt", sha256=hashlib.sha256(STORIES).hexdigest())
    manifest = load_manifest(prepare_corpus(spec, tmp_path, net=FAST))
    assert manifest["files"][0]["sha256"] == hashlib.sha256(STORIES).hexdigest()
    docs = list(iter_documents(manifest))
    assert len(docs) == 300 and docs[7] == "Story 7: the cat sat on mat number 7."
    prepare_corpus(spec, tmp_path, net=FAST)  # complete and verified: no second download
    assert len(server.hits("/data/stories.txt")) == 1
    assert not list(tmp_path.glob("*.part"))


def test_url_changed_in_the_spec_is_downloaded_again(server: Server, tmp_path: Path) -> None:
    server.routes["/v1/input.txt"] = serve_bytes(b"old text")
    server.routes["/v2/input.txt"] = serve_bytes(b"new text")
    for version in ("v1", "v2"):
        manifest = load_manifest(prepare_corpus(url_spec(f"{server.url}/{version}/input.txt"),
                                                tmp_path, net=FAST))
    assert list(iter_documents(manifest)) == ["new text"]


def test_url_resumes_a_partial_download_with_range(server: Server, tmp_path: Path) -> None:
    server.routes["/big.txt"] = serve_bytes(STORIES)
    dest = tmp_path / "big.txt"
    (tmp_path / "big.txt.part").write_bytes(STORIES[:1000])  # left by an interrupted run
    download(server.url + "/big.txt", dest, sha256=hashlib.sha256(STORIES).hexdigest(), net=FAST)
    assert dest.read_bytes() == STORIES
    [hit] = server.hits("/big.txt")
    assert hit["headers"]["range"] == "bytes=1000-"


def test_url_dropped_connection_is_resumed(server: Server, tmp_path: Path) -> None:
    server.routes["/s.txt"] = in_sequence(drop_after(STORIES, 4000), serve_bytes(STORIES))
    dest = download(server.url + "/s.txt", tmp_path / "s.txt", net=FAST)
    assert dest.read_bytes() == STORIES
    first, second = server.hits("/s.txt")
    assert "range" not in first["headers"] and second["headers"]["range"] == "bytes=4000-"


def test_url_server_ignoring_range_restarts_cleanly(server: Server, tmp_path: Path) -> None:
    server.routes["/s.txt"] = serve_bytes(STORIES, honour_range=False)
    (tmp_path / "s.txt.part").write_bytes(b"garbage from another file")
    dest = download(server.url + "/s.txt", tmp_path / "s.txt", net=FAST)
    assert dest.read_bytes() == STORIES


def test_url_retries_5xx_then_succeeds(server: Server, tmp_path: Path) -> None:
    server.routes["/s.txt"] = in_sequence(status(503), status(502), serve_bytes(STORIES))
    dest = download(server.url + "/s.txt", tmp_path / "s.txt", net=FAST)
    assert dest.read_bytes() == STORIES and len(server.hits("/s.txt")) == 3


def test_url_500_gives_up_after_bounded_retries(server: Server, tmp_path: Path) -> None:
    server.routes["/s.txt"] = status(500)
    with pytest.raises(DataError) as err:
        download(server.url + "/s.txt", tmp_path / "s.txt", net=FAST)
    assert str(err.value) == (f"{server.url}/s.txt: download failed after 3 tries "
                              "(HTTP 500 Internal Server Error)")
    assert len(server.hits("/s.txt")) == 3
    assert not (tmp_path / "s.txt").exists()


def test_url_404_fails_at_once(server: Server, tmp_path: Path) -> None:
    spec = url_spec(server.url + "/missing.txt?sig=secret")
    with pytest.raises(DataError) as err:
        prepare_corpus(spec, tmp_path, net=FAST)
    assert str(err.value) == f"{server.url}/missing.txt: HTTP 404 Not Found"  # no query string
    assert len(server.hits("/missing.txt")) == 1
    assert not (tmp_path / "manifest.json").exists()


def test_url_timeout_is_retried_then_reported(server: Server, tmp_path: Path) -> None:
    server.routes["/slow.txt"] = stall(1.0)
    t0 = time.perf_counter()
    with pytest.raises(DataError) as err:
        download(server.url + "/slow.txt", tmp_path / "slow.txt",
                 net=Net(timeout=0.2, retries=2, backoff=0.01))
    assert str(err.value) == f"{server.url}/slow.txt: download failed after 2 tries (timed out)"
    assert len(server.hits("/slow.txt")) == 2 and time.perf_counter() - t0 < 1.5


def test_url_checksum_mismatch_removes_only_the_bad_file(server: Server, tmp_path: Path) -> None:
    server.routes["/s.txt"] = serve_bytes(STORIES)
    keep = tmp_path / "notes.txt"
    keep.write_text("mine")
    wrong = "0" * 64
    spec = url_spec(server.url + "/s.txt", sha256=wrong)
    with pytest.raises(DataError) as err:
        prepare_corpus(spec, tmp_path, net=FAST)
    got = hashlib.sha256(STORIES).hexdigest()
    assert str(err.value) == (f"{server.url}/s.txt: sha256 mismatch: expected {wrong}, got {got}; "
                              "the downloaded file was removed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert keep.read_text() == "mine"


def test_url_explicit_validation_file(server: Server, tmp_path: Path) -> None:
    server.routes["/train.txt"] = serve_bytes(STORIES)
    server.routes["/valid.txt"] = serve_bytes(b"Held out one.\n\nHeld out two.\n")
    spec = url_spec(server.url + "/train.txt", val=server.url + "/valid.txt")
    manifest = load_manifest(prepare_corpus(spec, tmp_path, net=FAST))
    assert [f["split"] for f in manifest["files"]] == ["train", "val"]
    assert list(iter_documents(manifest, split="val")) == ["Held out one.", "Held out two."]


@pytest.mark.parametrize("url", ["ftp://example.org/a.txt", "file:///etc/passwd", "example.org/x",
                                 "https://"])
def test_url_scheme_must_be_http(url: str) -> None:
    with pytest.raises(ConfigError) as err:
        url_spec(url)
    assert str(err.value) == f"corpora.web.url: expected an http(s) URL, got {url!r}"


def test_net_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMABLATE_HTTP_TIMEOUT", "2.5")
    monkeypatch.setenv("LMABLATE_HTTP_RETRIES", "5")
    assert Net.from_env() == Net(timeout=2.5, retries=5, backoff=1.0)
    monkeypatch.setenv("LMABLATE_HTTP_RETRIES", "zero")
    with pytest.raises(DataError, match=r"^environment variable LMABLATE_HTTP_RETRIES: "
                                        r"expected an integer >= 1, got 'zero'$"):
        Net.from_env()


# --------------------------------------------------------------------------------------------------
# hf: a fake hub


COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "lmablate-test/tiny-stories"
TOKEN = "hf_SECRETtokenVALUE1234567890"
HUB_FILES = {
    "README.md": b"# tiny\n",
    "data/train-00000.txt": STORIES[: STORIES.index(b"Story 150:")],
    "data/train-00001.txt": STORIES[STORIES.index(b"Story 150:"):],
    "data/valid.txt": b"A held out story.\n\nAnother held out story.\n",
}


MODEL_REPO = "lmablate-test/tiny-model"  # a model repo: its tokenizer.json (tests fill it in)
MODEL_FILES: dict[str, bytes] = {"README.md": b"# tiny model\n"}
NO_TOKENIZER_REPO = "lmablate-test/no-tokenizer"


def fake_hub(h: _Handler) -> None:
    path = unquote(urlparse(h.path).path)
    repos = {REPO: HUB_FILES, MODEL_REPO: MODEL_FILES, NO_TOKENIZER_REPO: {"README.md": b"#\n"}}

    def error(code: str, msg: str) -> None:
        h.reply(404, json.dumps({"error": msg}).encode(),
                {"X-Error-Code": code, "X-Error-Message": msg, "Content-Type": "application/json"})

    repo = r"(?P<repo>[^/]+/[^/]+)"
    m = (re.match(rf"^/api/datasets/{repo}/(?P<kind>revision|tree)/(?P<rev>[^/]+)", path)
         or re.match(rf"^/datasets/{repo}/(?P<kind>resolve)/(?P<rev>[^/]+)/(?P<file>.+)$", path)
         or re.match(rf"^/{repo}/(?P<kind>resolve)/(?P<rev>[^/]+)/(?P<file>.+)$", path))  # models
    if not m:
        h.reply(404, b"no such route")
        return
    files = repos.get(m["repo"])
    if files is None:
        error("RepoNotFound", "Repository not found")
        return
    if m["rev"] not in ("main", COMMIT):
        error("RevisionNotFound", "Invalid rev id")
        return
    if m["kind"] == "revision":
        body = {"id": m["repo"], "sha": COMMIT, "private": False,
                "siblings": [{"rfilename": f} for f in files]}
        h.reply(200, json.dumps(body).encode(), {"Content-Type": "application/json"})
    elif m["kind"] == "tree":
        entries = [{"type": "directory", "oid": "d" * 40, "size": 0, "path": "data"}]
        entries += [{"type": "file", "oid": hashlib.sha1(data).hexdigest(), "size": len(data),
                     "path": name} for name, data in files.items()]
        h.reply(200, json.dumps(entries).encode(), {"Content-Type": "application/json"})
    else:
        data = files.get(m["file"])
        if data is None:
            error("EntryNotFound", "Entry not found")
            return
        h.reply(200, data, {"X-Repo-Commit": COMMIT,
                            "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                            "Accept-Ranges": "bytes", "Content-Type": "text/plain"})


@pytest.fixture
def hub(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Server:
    server.routes["*"] = fake_hub
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_TOKEN_PATH", raising=False)
    return server


PREPARE = """
import json, logging, sys
from pathlib import Path
from huggingface_hub.utils import logging as hf_logging
from lmablate.data.corpora import prepare_corpus, iter_documents, load_manifest
from lmablate.study.corpus_spec import resolve_corpora
from lmablate.workflow.steps import setup_logging
setup_logging(logging.DEBUG)
hf_logging.set_verbosity_debug()
spec = resolve_corpora({"hub": json.loads(sys.argv[1])}, Path("."))["hub"]
manifest = load_manifest(prepare_corpus(spec, sys.argv[2]))
print(json.dumps({"train": list(iter_documents(manifest, split="train")),
                  "val": list(iter_documents(manifest, split="val"))}))
"""


def dataset_requests(hub: Server) -> list[dict]:
    """Requests for the dataset (the client also asks for /api/agent-harnesses, unauthenticated;
    the fake hub answers 404 and the client carries on)."""
    return [r for r in hub.log if f"/{REPO}/" in r["path"]]


def run_prepare(spec: dict, out: Path) -> tuple[dict, str]:
    """prepare_corpus in a fresh interpreter, as a workflow job runs it (the hub client reads
    HF_ENDPOINT and HF_HOME when it is imported)."""
    proc = subprocess.run([sys.executable, "-c", PREPARE, json.dumps(spec), str(out)],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ),
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def test_hf_download_with_token_from_environment(hub: Server, tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    spec = {"source": "hf", "repo": REPO, "files": ["data/train-*.txt"], "val": "data/valid.txt"}
    docs, log = run_prepare(spec, out)
    assert len(docs["train"]) == 300 and docs["val"] == ["A held out story.",
                                                         "Another held out story."]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["origin"] == {"endpoint": hub.url, "repo": REPO, "revision": "main",
                                  "commit": COMMIT}
    assert [(f["path"], f["split"]) for f in manifest["files"]] == [
        ("hf/data/train-00000.txt", "train"), ("hf/data/train-00001.txt", "train"),
        ("hf/data/valid.txt", "val")]
    assert (out / "hf/data/valid.txt").read_bytes() == HUB_FILES["data/valid.txt"]
    # every request was authenticated with the token, and all files came from the one commit
    assert {r["headers"].get("authorization") for r in dataset_requests(hub)} == {f"Bearer {TOKEN}"}
    resolved = [r["path"] for r in hub.log if "/resolve/" in r["path"]]
    assert resolved and all(f"/resolve/{COMMIT}/" in p for p in resolved)
    # ...yet it appears in no output: manifest, logs (at DEBUG), nor any file written
    assert "lmablate.data.fetch" in log and TOKEN not in log
    for f in out.rglob("*"):
        if f.is_file():
            assert TOKEN.encode() not in f.read_bytes(), f


def test_hf_token_file_under_hf_home(hub: Server, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_TOKEN")
    home = Path(os.environ["HF_HOME"])
    home.mkdir(parents=True)
    (home / "token").write_text("hf_fromTheHomeFolder\n")
    spec = {"source": "hf", "repo": REPO, "revision": COMMIT, "files": "data/valid.txt"}
    docs, _ = run_prepare(spec, tmp_path / "corpus")
    assert docs["train"] == ["A held out story.", "Another held out story."]
    assert {r["headers"].get("authorization") for r in dataset_requests(hub)} == {
        "Bearer hf_fromTheHomeFolder"}


def hf_spec(**extra: object) -> dict:
    raw = {"source": "hf", "repo": REPO, "files": ["data/train-*.txt"], **extra}
    return resolve_corpora({"hub": raw}, Path("."))["hub"]


@pytest.mark.parametrize(("extra", "message"), [
    pytest.param({"repo": "lmablate-test/nope"},
                 "hf dataset 'lmablate-test/nope' at {url} not found (HTTP 404/401); check the "
                 "name, and set HF_TOKEN if it is private", id="404-repo"),
    pytest.param({"revision": "v9"}, "hf dataset '" + REPO + "' at {url} has no revision 'v9'",
                 id="404-revision"),
    pytest.param({"files": ["data/*.parquet"]},
                 "no file of hf dataset '" + REPO + "' matches files pattern 'data/*.parquet' "
                 "(files: README.md, data/train-00000.txt, data/train-00001.txt, data/valid.txt)",
                 id="no-match"),
])
def test_hf_errors_are_one_line_without_token(hub: Server, tmp_path: Path, extra: dict,
                                              message: str) -> None:
    with pytest.raises(DataError) as err:
        prepare_corpus(hf_spec(**extra), tmp_path, net=FAST)
    assert str(err.value) == "corpus 'hub': " + message.format(url=hub.url)
    assert TOKEN not in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "manifest.json").exists()


def test_hf_endpoint_unreachable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with pytest.raises(DataError) as err:
        prepare_corpus(hf_spec(), tmp_path, net=FAST)
    where = f"hf dataset '{REPO}' at http://127.0.0.1:{port}"
    assert str(err.value).startswith(f"corpus 'hub': {where} could not be downloaded (")
    assert "\n" not in str(err.value) and TOKEN not in str(err.value)


def test_hf_file_404_at_resolve(hub: Server, tmp_path: Path) -> None:
    """A file listed in the tree but gone when downloaded (the hub answers 404 EntryNotFound)."""
    HUB_FILES["data/train-00002.txt"] = b"listed only"
    plain = fake_hub

    def hide_new_file(h: _Handler) -> None:
        if h.path.endswith("/train-00002.txt"):
            h.reply(404, b"{}", {"X-Error-Code": "EntryNotFound", "X-Error-Message": "gone"})
        else:
            plain(h)
    hub.routes["*"] = hide_new_file
    try:
        with pytest.raises(DataError) as err:
            prepare_corpus(hf_spec(), tmp_path, net=FAST)
    finally:
        del HUB_FILES["data/train-00002.txt"]
    assert str(err.value) == (f"corpus 'hub': hf dataset '{REPO}' at {hub.url} has no file "
                              "'data/train-00002.txt' at revision 'main'")


def test_hf_test_patterns_become_the_test_split(hub: Server, tmp_path: Path) -> None:
    HUB_FILES["data/test.txt"] = b"A test story.\n\nAnother test story.\n"
    try:
        spec = hf_spec(val="data/valid.txt", test=["data/test.txt"])
        manifest = load_manifest(prepare_corpus(spec, tmp_path, net=FAST))
    finally:
        del HUB_FILES["data/test.txt"]
    assert [(f["path"], f["split"]) for f in manifest["files"]][-2:] == [
        ("hf/data/valid.txt", "val"), ("hf/data/test.txt", "test")]
    assert list(iter_documents(manifest, split="test")) == ["A test story.", "Another test story."]
    assert len(list(iter_documents(manifest))) == 302  # train and val: the test files only by name


def test_presets_resolve_and_validate() -> None:
    specs = resolve_corpora({"mine": {"preset": "fineweb-edu-sample", "max_bytes": 1000}},
                            Path("."))
    for name in ("tinystories", "wikitext-2-raw", "wikitext-103-raw", "tinyshakespeare",
                 "fineweb-edu-sample", "smollm-corpus"):
        assert specs[name]["source"] in ("hf", "url")
    assert specs["tinystories"]["separator"] == "<|endoftext|>"
    assert specs["tinyshakespeare"]["url"].startswith("https://raw.githubusercontent.com/karpathy/")
    assert specs["mine"]["repo"] == "HuggingFaceFW/fineweb-edu"
    assert specs["mine"]["max_bytes"] == 1000


# --------------------------------------------------------------------------------------------------
# tokenizer: {kind: hub} against the fake hub

BUILD_TOKENIZER = """
import json, sys
from lmablate.errors import LmablateError
from lmablate.workflow.steps import train_tokenizer_step
try:
    meta = train_tokenizer_step(None, json.loads(sys.argv[1]), 0.1, sys.argv[2])
except LmablateError as err:
    print(json.dumps({"error": str(err)}))
else:
    print(json.dumps(meta))
"""


@pytest.fixture
def model_hub(hub: Server, tmp_path: Path) -> Iterator[bytes]:
    """The fake hub also serving MODEL_REPO's tokenizer.json (a byte-level one); its bytes."""
    from lmablate.data.tokenizer import build_tokenizer
    from lmablate.study.config import TokenizerConfig

    build_tokenizer(TokenizerConfig(kind="byte"), [], tmp_path / "served" / "tokenizer.json")
    MODEL_FILES["tokenizer.json"] = (tmp_path / "served" / "tokenizer.json").read_bytes()
    try:
        yield MODEL_FILES["tokenizer.json"]
    finally:
        del MODEL_FILES["tokenizer.json"]


def build_hub_tokenizer(workdir: Path, out: str, **tokenizer: object) -> dict:
    """The train_tokenizer job's step in a fresh interpreter in ``workdir`` (the hub client reads
    HF_ENDPOINT and HF_HUB_OFFLINE when it is imported)."""
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = {"kind": "hub", "repo": MODEL_REPO, **tokenizer}
    proc = subprocess.run([sys.executable, "-c", BUILD_TOKENIZER, json.dumps(cfg), out],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ),
                          cwd=workdir, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_hub_tokenizer_is_downloaded_cached_and_used_offline(
        hub: Server, model_hub: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    meta = build_hub_tokenizer(work, "resources/tokenizers/d/tokenizer.json")
    sha = hashlib.sha256(model_hub).hexdigest()
    assert meta == {"kind": "hub", "vocab_size": 257, "eot_id": 0, "sha256": sha,
                    "hub": {"endpoint": hub.url, "repo": MODEL_REPO, "revision": "main",
                            "commit": COMMIT}}
    out = work / "resources/tokenizers/d/tokenizer.json"
    assert out.read_bytes() == model_hub  # used as is, like kind: file
    assert json.loads((out.parent / "tokenizer_meta.json").read_text()) == meta
    cached = list((work / "resources/hub").rglob("tokenizer.json"))
    assert [p.parent.name for p in cached] == [COMMIT]
    fetched = [r for r in hub.log if r["path"] == f"/{MODEL_REPO}/resolve/main/tokenizer.json"]
    assert fetched and {r["headers"].get("authorization") for r in fetched} == {f"Bearer {TOKEN}"}
    # offline: the cached copy under resources/hub serves, and the hub is not asked
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    asked = len(hub.log)
    again = build_hub_tokenizer(work, "resources/tokenizers/e/tokenizer.json")
    assert again == meta and len(hub.log) == asked
    # offline without a cached copy: one line that says so
    err = build_hub_tokenizer(tmp_path / "fresh", "tok/tokenizer.json")["error"]
    assert err == (f"tokenizer: hf model '{MODEL_REPO}' at {hub.url}: HF_HUB_OFFLINE is set and "
                   "tokenizer.json at revision 'main' is not in the cache under resources/hub; "
                   "download it once online")
    assert len(hub.log) == asked


@pytest.mark.parametrize(("tokenizer", "message"), [
    pytest.param({"repo": "lmablate-test/nope"}, "hf model 'lmablate-test/nope' at {url} not "
                 "found (HTTP 404/401); check the name, and set HF_TOKEN if it is private",
                 id="404-repo"),
    pytest.param({"repo": NO_TOKENIZER_REPO}, f"hf model '{NO_TOKENIZER_REPO}' at {{url}} has no "
                 "file 'tokenizer.json' at revision 'main'", id="404-file"),
    pytest.param({"revision": "v9"}, f"hf model '{MODEL_REPO}' at {{url}} has no revision 'v9'",
                 id="404-revision"),
    pytest.param({"sha256": "0" * 64}, f"hf model '{MODEL_REPO}' at {{url}}: tokenizer.json at "
                 "revision 'main' (commit " + COMMIT + ") has sha256 {sha}, not the pinned "
                 "tokenizer.sha256 " + "0" * 64, id="sha256-pin"),
])
def test_hub_tokenizer_errors_are_one_line(hub: Server, model_hub: bytes, tmp_path: Path,
                                           tokenizer: dict, message: str) -> None:
    err = build_hub_tokenizer(tmp_path / "work", "tok/tokenizer.json", **tokenizer)["error"]
    sha = hashlib.sha256(model_hub).hexdigest()
    assert err == "tokenizer: " + message.format(url=hub.url, sha=sha)
    assert TOKEN not in err and "\n" not in err
    assert not (tmp_path / "work" / "tok" / "tokenizer.json").exists()


def test_hub_tokenizer_settings_enter_the_run_ids(tmp_path: Path) -> None:
    from lmablate import read_study
    from lmablate.study.config import RunConfig, from_dict

    def run_ids(tokenizer: dict) -> set[str]:
        doc = {"study": "t", "data": {"corpus": "tinystories-1k"}, "tokenizer": tokenizer,
               "defaults": {"model": {"preset": "debug"}, "train": {"tokens": 8192}}}
        path = tmp_path / "study.yaml"
        path.write_text(json.dumps(doc))
        return {r.run_id for r in read_study(path).runs}

    hub_cfg = {"kind": "hub", "repo": MODEL_REPO, "vocab_size": 257}
    base = run_ids(hub_cfg)
    assert run_ids({**hub_cfg, "revision": "main"}) == base  # the default, written out
    assert run_ids({**hub_cfg, "revision": COMMIT}).isdisjoint(base)
    assert run_ids({**hub_cfg, "repo": "lmablate-test/other"}).isdisjoint(base)
    assert run_ids({**hub_cfg, "sha256": "a" * 64}).isdisjoint(base)
    with pytest.raises(Exception, match="tokenizer.repo: kind 'hub' needs a model repository id "
                       "owner/name, got None"):
        from_dict(RunConfig, {"tokenizer": {"kind": "hub"}})
