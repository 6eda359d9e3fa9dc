"""Downloads for network corpora (``source: url`` and ``source: hf``) into the corpus directory.

``url``: a plain HTTP(S) GET with resume. Bytes go to ``<file>.part``; a rerun (or a retry after a
dropped connection) asks for the rest with a ``Range`` header, and the file gets its final name only
once it is complete and, if the spec gives ``sha256``, verified. A complete file is never fetched
again. 5xx answers, 408/429 and timeouts are retried with exponential backoff, a bounded number of
times; any other 4xx (404, 403, ...) fails at once. A checksum mismatch deletes the downloaded file
and nothing else.

``hf``: Hugging Face hub dataset files through ``huggingface_hub``. The revision is first resolved
to a commit, so every file comes from the same commit and the manifest records it. ``HF_ENDPOINT``
(a mirror or a local test server), ``HF_TOKEN`` and ``HF_HOME`` (its ``token`` file and cache) are
honoured as by the hub client itself. The token is never logged, and it is scrubbed from any error
text that reaches the user.

Timeouts and retries are machine settings, not corpus identity, so they come from the environment:
``LMABLATE_HTTP_TIMEOUT`` (seconds, default 30), ``LMABLATE_HTTP_RETRIES`` (tries, default 3),
``LMABLATE_HTTP_BACKOFF`` (first wait in seconds, doubled per retry, default 1).
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from lmablate.errors import DataError
from lmablate.io import sha256_file

__all__ = ["Net", "fetch", "download", "hf_files", "hub_error"]

log = logging.getLogger("lmablate.data.fetch")

RETRY_STATUS = {408, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class Net:
    """How patient downloads are: per-request timeout (s), tries, first backoff wait (s)."""

    timeout: float = 30.0
    retries: int = 3
    backoff: float = 1.0

    @classmethod
    def from_env(cls) -> Net:
        def get(name: str, default: float, kind: type, minimum: float) -> Any:
            raw = os.environ.get(name, "")
            if raw == "":
                return default
            try:
                value = kind(raw)
            except ValueError:
                value = None
            if value is None or value < minimum:
                what = "an integer" if kind is int else "a number"
                raise DataError(f"environment variable {name}: expected {what} >= {minimum}, "
                                f"got {raw!r}")
            return value

        return cls(timeout=get("LMABLATE_HTTP_TIMEOUT", cls.timeout, float, 0.001),
                   retries=get("LMABLATE_HTTP_RETRIES", cls.retries, int, 1),
                   backoff=get("LMABLATE_HTTP_BACKOFF", cls.backoff, float, 0))


def fetch(spec: Mapping[str, Any], out_dir: Path, *, net: Net | None = None
          ) -> tuple[list[tuple[Path, str]], dict[str, Any]]:
    """Download a ``url`` or ``hf`` corpus into ``out_dir``.

    Returns ``([(file, split), ...], origin)``: the files in reading order with ``train`` or
    ``val`` or ``test``, and where they came from (for the manifest)."""
    net = net or Net.from_env()
    if spec["source"] == "url":
        files = [(download(spec["url"], out_dir / f"train-{_url_name(spec['url'])}",
                           sha256=spec.get("sha256"), net=net), "train")]
        for side in ("val", "test"):
            if spec.get(side):
                files.append((download(spec[side], out_dir / f"{side}-{_url_name(spec[side])}",
                                       sha256=spec.get(f"{side}_sha256"), net=net), side))
        return files, {}
    if spec["source"] == "hf":
        return hf_files(spec, out_dir)
    raise DataError(f"corpus {spec['name']!r}: source {spec['source']!r} is not downloaded")


# --------------------------------------------------------------------------------------------------
# url


def _url_name(url: str) -> str:
    """File name for a URL: a short hash of the whole URL (so a changed URL is never served from,
    or resumed into, another URL's file) and the URL's own last path segment."""
    name = unquote(urlparse(url).path.rstrip("/").rsplit("/", 1)[-1])
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in name) or "download"
    return f"{hashlib.sha256(url.encode()).hexdigest()[:8]}-{name}"


def _shown(url: str) -> str:
    """The URL as printed: no user:password and no query string (signed URLs carry secrets)."""
    p = urlparse(url)
    host = p.hostname or ""
    if p.port:
        host += f":{p.port}"
    return f"{p.scheme}://{host}{p.path}"


class _Transient(Exception):
    """A failure worth retrying (5xx, timeout, dropped connection)."""


def download(url: str, dest: Path, *, sha256: str | None = None, net: Net = Net()) -> Path:
    """Fetch ``url`` to ``dest`` (resuming ``dest.part``), verify ``sha256``; return ``dest``."""
    import requests

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file():
        if sha256 is None or sha256_file(dest) == sha256.lower():
            log.info("cached: %s", dest)
            return dest
        log.info("%s does not match the expected sha256; downloading it again", dest)
        dest.unlink()
    part = dest.with_name(dest.name + ".part")
    shown = _shown(url)
    attempt = 0
    while True:
        attempt += 1
        try:
            _get_into(requests, url, part, net.timeout)
            break
        except DataError:
            raise
        except (_Transient, requests.RequestException) as err:
            reason = _reason(err)
            if attempt >= net.retries:
                raise DataError(f"{shown}: download failed after {attempt} tries ({reason})") \
                    from None
            wait = net.backoff * 2 ** (attempt - 1)
            log.warning("%s: %s; retry %d/%d in %.1f s", shown, reason, attempt,
                        net.retries - 1, wait)
            time.sleep(wait)
    if sha256 is not None:
        got = sha256_file(part)
        if got != sha256.lower():
            part.unlink()
            raise DataError(f"{shown}: sha256 mismatch: expected {sha256.lower()}, got {got}; "
                            "the downloaded file was removed")
    os.replace(part, dest)
    log.info("downloaded %s -> %s (%d bytes)", shown, dest, dest.stat().st_size)
    return dest


def _reason(err: BaseException) -> str:
    import requests

    if isinstance(err, requests.Timeout):
        return "timed out"
    if isinstance(err, requests.exceptions.ChunkedEncodingError):
        return "connection dropped"
    if isinstance(err, requests.ConnectionError):  # a read timeout mid-body arrives as this
        return "timed out" if "timed out" in str(err).lower() else "connection failed"
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def _get_into(requests: Any, url: str, part: Path, timeout: float) -> None:
    """One GET, appending to ``part`` when the server honours the Range for its bytes."""
    have = part.stat().st_size if part.is_file() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with requests.get(url, headers=headers, stream=True, timeout=(timeout, timeout)) as r:
        if r.status_code == 416 and have:  # nothing after `have`: the .part is stale; start over
            part.unlink()
            raise _Transient("HTTP 416 on resume; restarting")
        if r.status_code in RETRY_STATUS:
            raise _Transient(f"HTTP {r.status_code} {r.reason}")
        if r.status_code >= 400:
            raise DataError(f"{_shown(url)}: HTTP {r.status_code} {r.reason}")
        resumed = have > 0 and r.status_code == 206
        total = _total_size(r, have if resumed else 0)
        # keep the bytes of a body cut short (urllib3 would drop the last read with them); the
        # size check below sees the shortfall and the retry resumes after them
        r.raw.enforce_content_length = False
        with open(part, "ab" if resumed else "wb") as fh:
            fh.writelines(r.iter_content(chunk_size=1 << 20))
    size = part.stat().st_size
    if total is not None and size != total:
        raise _Transient(f"connection closed after {size} of {total} bytes")


def _total_size(r: Any, offset: int) -> int | None:
    if r.headers.get("Content-Encoding", "identity") not in ("identity", ""):
        return None
    content_range = r.headers.get("Content-Range", "")
    if "/" in content_range and content_range.rsplit("/", 1)[1].isdigit():
        return int(content_range.rsplit("/", 1)[1])
    length = r.headers.get("Content-Length")
    return offset + int(length) if length and length.isdigit() else None


# --------------------------------------------------------------------------------------------------
# hf


def _patterns(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


def _match(available: list[str], patterns: list[str], what: str, spec: Mapping[str, Any]
           ) -> list[str]:
    picked: list[str] = []
    for pattern in patterns:
        hits = sorted(f for f in available if fnmatch.fnmatchcase(f, pattern))
        if not hits:
            sample = ", ".join(sorted(available)[:8]) + (", ..." if len(available) > 8 else "")
            raise DataError(f"corpus {spec['name']!r}: no file of hf dataset {spec['repo']!r} "
                            f"matches {what} pattern {pattern!r} (files: {sample or 'none'})")
        picked += [h for h in hits if h not in picked]
    return picked


def hf_files(spec: Mapping[str, Any], out_dir: Path) -> tuple[list[tuple[Path, str]], dict]:
    """Download the spec's ``files`` (and ``val``) patterns of a hub dataset at one commit."""
    from huggingface_hub import HfApi, hf_hub_download

    endpoint = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    repo, revision = spec["repo"], spec.get("revision") or "main"
    api = HfApi(endpoint=endpoint)
    with _hub_errors(spec, endpoint, revision):
        commit = api.dataset_info(repo, revision=revision).sha or revision
        available = api.list_repo_files(repo, revision=commit, repo_type="dataset")
    wanted = [(f, "train") for f in _match(available, _patterns(spec["files"]), "files", spec)]
    for side in ("val", "test"):
        wanted += [(f, side) for f in _match(available, _patterns(spec.get(side)), side, spec)]
    local_dir = out_dir / "hf"
    files = []
    for name, split in wanted:
        log.info("hf %s@%s: %s", repo, commit[:12], name)
        with _hub_errors(spec, endpoint, revision, name):
            path = hf_hub_download(repo, name, repo_type="dataset", revision=commit,
                                   local_dir=local_dir, endpoint=endpoint)
        files.append((Path(path), split))
    return files, {"endpoint": endpoint, "repo": repo, "revision": revision, "commit": commit}


@contextmanager
def _hub_errors(spec: Mapping[str, Any], endpoint: str, revision: str,
                filename: str | None = None) -> Iterator[None]:
    """Turn hub client exceptions into one-line DataErrors that never contain the token."""
    try:
        yield
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - whatever the hub client raises becomes one line
        where = f"corpus {spec['name']!r}: hf dataset {spec['repo']!r} at {endpoint}"
        raise hub_error(where, err, revision, filename) from None


def hub_error(where: str, err: Exception, revision: str, filename: str | None = None
              ) -> DataError:
    """One line for a hub client exception (``where``: what was being fetched, e.g. ``corpus
    'x': hf dataset 'r' at https://...``), with the token scrubbed out; corpora and eval tasks
    both use it."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(err, GatedRepoError):
        msg = "is gated: accept its terms on the hub and set HF_TOKEN"
    elif isinstance(err, RepositoryNotFoundError):
        msg = "not found (HTTP 404/401); check the name, and set HF_TOKEN if it is private"
    elif isinstance(err, RevisionNotFoundError):
        msg = f"has no revision {revision!r}"
    elif isinstance(err, EntryNotFoundError):
        msg = f"has no file {filename!r} at revision {revision!r}"
    elif isinstance(err, HfHubHTTPError) and err.response is not None:
        msg = f"answered HTTP {err.response.status_code}" + (
            f" for {filename!r}" if filename else "")
    else:
        first = (str(err).strip().splitlines() or [""])[0]
        msg = f"could not be downloaded ({type(err).__name__}: {first})"
    return DataError(_scrub(f"{where} {msg}"))


def _scrub(text: str) -> str:
    from huggingface_hub import get_token

    token = get_token()
    return text.replace(token, "<HF_TOKEN>") if token else text
