"""Tokenizers, all saved as a Hugging Face ``tokenizer.json`` (loadable by ``tokenizers`` and
``transformers``):

| kind | what                                                                               |
|------|------------------------------------------------------------------------------------|
| bpe  | byte-level BPE trained with ``tokenizers`` on (a sample of) the train split       |
| byte | the 256 byte-level symbols, no merges                                              |
| char | one id per character seen in the train split, plus ``<unk>``                       |
| file | an existing tokenizer.json (e.g. a hub model's), copied                            |
| hub  | the tokenizer.json of a Hugging Face hub model repo (``repo``, ``revision``), fetched |

``bpe`` and ``char`` read at most ``train_bytes`` of the train split (its first documents), so
training time and memory stay bounded whatever the size of the corpus.

The first special token (default ``<|endoftext|>``) separates documents in the token stream.
A tokenizer's identity is the SHA-256 of its tokenizer.json (``tokenizer_sha256``).

``hub`` downloads with ``huggingface_hub`` (``HF_ENDPOINT``, ``HF_TOKEN`` and ``HF_HUB_OFFLINE`` as
the client reads them) into a cache under ``resources/hub`` (:data:`HUB_CACHE`), so a second
build, or an offline one, reuses the file. Its repo, revision, resolved commit and SHA-256 are
written to tokenizer_meta.json; repo and revision (and ``sha256`` when pinned, checked after the
download) are settings of the ``tokenizer`` section, so they enter the run IDs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from lmablate.errors import DataError
from lmablate.io import atomic_write_text, sha256_file
from lmablate.paths import HUB_CACHE
from lmablate.study.config import TokenizerConfig

__all__ = ["build_tokenizer", "load_tokenizer", "tokenizer_sha256", "eot_id", "hub_tokenizer"]

HUB_FILE = "tokenizer.json"


class _Sample:
    """The first ``max_bytes`` of the training documents, streamed; counts what it yielded so an
    empty corpus is reported as such (and not as a vocabulary the corpus cannot fill)."""

    def __init__(self, docs: Iterable[str], max_bytes: int):
        self.docs, self.max_bytes = docs, max_bytes
        self.documents = self.bytes = 0

    def __iter__(self) -> Iterator[str]:
        docs = iter(self.docs)
        while self.bytes < self.max_bytes:  # checked before reading the next document
            doc = next(docs, None)
            if doc is None:
                return
            self.documents += 1
            self.bytes += len(doc.encode())
            yield doc

    def check(self) -> None:
        if self.documents == 0:
            raise DataError("the corpus has no training text: 0 documents on the train side of "
                            "the split")


def _bpe(docs: Iterable[str], cfg: TokenizerConfig) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if cfg.vocab_size < len(alphabet) + len(cfg.special_tokens):
        raise DataError(f"tokenizer.vocab_size {cfg.vocab_size} is below the byte-level minimum "
                        f"{len(alphabet) + len(cfg.special_tokens)} (256 bytes + special tokens)")
    trainer = trainers.BpeTrainer(vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency,
                                  special_tokens=list(cfg.special_tokens),
                                  initial_alphabet=alphabet, show_progress=False)
    sample = _Sample(docs, cfg.train_bytes)
    tok.train_from_iterator(sample, trainer=trainer)
    sample.check()
    return tok


def _byte(cfg: TokenizerConfig) -> Tokenizer:
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {s: i for i, s in enumerate(cfg.special_tokens)}
    for ch in alphabet:
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(cfg.special_tokens))
    return tok


def _char(docs: Iterable[str], cfg: TokenizerConfig) -> Tokenizer:
    chars: set[str] = set()
    sample = _Sample(docs, cfg.train_bytes)
    for doc in sample:
        chars.update(doc)
    sample.check()
    specials = [*cfg.special_tokens, "<unk>"]
    vocab = {s: i for i, s in enumerate(specials)}
    for ch in sorted(chars):
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(specials)
    return tok


def hub_tokenizer(cfg: TokenizerConfig, cache_dir: str | Path = HUB_CACHE
                  ) -> tuple[Path, dict[str, str]]:
    """Download (or find in ``cache_dir``) the tokenizer.json of hub model ``cfg.repo`` at
    ``cfg.revision``; returns its path and where it came from (endpoint, repo, revision, commit).
    Every failure is one line: a missing repo, revision or file, offline without a cached copy."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    from lmablate.data.fetch import hub_error

    repo, revision = cfg.repo or "", cfg.revision
    endpoint = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    where = f"tokenizer: hf model {repo!r} at {endpoint}"
    try:
        path = Path(hf_hub_download(repo, HUB_FILE, revision=revision,
                                    cache_dir=str(cache_dir), endpoint=endpoint))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        if not constants.HF_HUB_OFFLINE:
            raise DataError(f"{where}: {HUB_FILE} at revision {revision!r} could not be reached "
                            "and is not in the cache under " f"{cache_dir}") from None
        raise DataError(f"{where}: HF_HUB_OFFLINE is set and {HUB_FILE} at revision "
                        f"{revision!r} is not in the cache under {cache_dir}; download it once "
                        "online") from None
    except Exception as err:  # noqa: BLE001 - whatever the hub client raises becomes one line
        raise hub_error(where, err, revision, HUB_FILE) from None
    commit = path.parent.name  # the cache's snapshots/<commit>/tokenizer.json
    if cfg.sha256 and sha256_file(path) != cfg.sha256.lower():
        raise DataError(f"{where}: {HUB_FILE} at revision {revision!r} (commit {commit}) has "
                        f"sha256 {sha256_file(path)}, not the pinned tokenizer.sha256 "
                        f"{cfg.sha256}")
    return path, {"endpoint": endpoint, "repo": repo, "revision": revision, "commit": commit}


def build_tokenizer(cfg: TokenizerConfig, docs: Iterable[str], out_path: str | Path, *,
                    cache_dir: str | Path = HUB_CACHE) -> dict:
    """Build the tokenizer ``cfg`` describes, save it atomically; returns its metadata
    (``cache_dir``: where ``kind: hub`` keeps its downloads)."""
    out_path = Path(out_path)
    origin: dict[str, str] = {}
    if cfg.kind == "bpe":
        tok = _bpe(docs, cfg)
        if tok.get_vocab_size() < cfg.vocab_size:
            got = tok.get_vocab_size()
            raise DataError(f"tokenizer.vocab_size {cfg.vocab_size} is larger than this corpus "
                            f"supports: BPE stopped at {got} tokens (no pair left with "
                            f"min_frequency {cfg.min_frequency}); use vocab_size <= {got} or more "
                            "text")
    elif cfg.kind == "byte":
        tok = _byte(cfg)
    elif cfg.kind == "char":
        tok = _char(docs, cfg)
    elif cfg.kind == "file":
        tok = load_tokenizer(cfg.path or "")
    elif cfg.kind == "hub":
        path, origin = hub_tokenizer(cfg, cache_dir)
        tok = load_tokenizer(path)
    else:  # pragma: no cover - rejected by config validation
        raise DataError(f"unknown tokenizer kind {cfg.kind!r}")
    atomic_write_text(out_path, tok.to_str(pretty=True))
    meta = {"kind": cfg.kind, "vocab_size": tok.get_vocab_size(), "eot_id": eot_id(tok, cfg),
            "sha256": sha256_file(out_path), **({"hub": origin} if origin else {})}
    atomic_write_text(out_path.with_name("tokenizer_meta.json"), json.dumps(meta, indent=2) + "\n")
    return meta


def load_tokenizer(path: str | Path) -> Tokenizer:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: tokenizer file not found")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a plain Exception on bad JSON
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"{path}: not a valid tokenizer.json ({first})") from None


def eot_id(tok: Tokenizer, cfg: TokenizerConfig | None = None) -> int | None:
    """Id of the document separator: the first configured special token, if the vocab has it."""
    candidates = list(cfg.special_tokens) if cfg else []
    candidates += ["<|endoftext|>", "</s>", "<eos>", "[SEP]"]
    for s in candidates:
        i = tok.token_to_id(s)
        if i is not None:
            return i
    return None


def tokenizer_sha256(path: str | Path) -> str:
    return sha256_file(path)
