"""Load a finished run back as a model and its tokenizer, for evaluation outside training.

A run directory holds ``config.yaml`` (the resolved config plus run metadata such as
``data_id``) and ``model.safetensors`` (tied weights stored once: the head shares the embedding,
so only ``embed.weight`` is on disk). The tokenizer is not copied into the run: it lives where the
workflow built it, ``resources/tokenizers/<corpus>-<data_id>/tokenizer.json`` relative to the
workflow's working directory, so :func:`tokenizer_path` looks there (and beside the run's
``results/`` tree) unless a path is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from lmablate import paths
from lmablate.errors import DataError
from lmablate.study.config import SECTIONS, RunConfig, from_dict

__all__ = ["LoadedRun", "load_run_model", "tokenizer_path", "read_run_config"]


@dataclass
class LoadedRun:
    """A run ready to score text: the model (eval mode, on ``device``), its tokenizer, config."""

    model: Any  # lmablate.engine.model.LM
    tokenizer: Any  # tokenizers.Tokenizer
    cfg: RunConfig
    meta: dict[str, Any]  # config.yaml's run metadata (run_id, variant, seed, data_id, ...)
    vocab_size: int  # tokenizer vocabulary (logits beyond it are padding rows)
    eot_id: int | None  # document separator; the context of an empty prompt
    max_len: int  # longest input the model accepts

    def __iter__(self):  # ``model, tokenizer, cfg = load_run_model(...)``
        return iter((self.model, self.tokenizer, self.cfg))


def read_run_config(run_dir: str | Path) -> tuple[RunConfig, dict[str, Any]]:
    """(RunConfig, metadata) from ``run_dir/config.yaml``."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise DataError(f"{path}: missing (a trained run directory holds its config.yaml)")
    doc = yaml.safe_load(path.read_text())
    if not isinstance(doc, dict):
        raise DataError(f"{path}: expected a mapping, got {type(doc).__name__}")
    cfg = from_dict(RunConfig, {k: doc[k] for k in SECTIONS if k in doc})
    return cfg, {k: v for k, v in doc.items() if k not in SECTIONS}


def tokenizer_path(run_dir: str | Path, meta: dict[str, Any], cfg: RunConfig,
                   workdir: str | Path | None = None) -> Path:
    """Where the workflow put this run's tokenizer: ``resources/tokenizers/<corpus>-<data_id>/``
    under ``workdir`` (default: the current directory, then the folder holding ``results/``)."""
    data_id = meta.get("data_id")
    if not data_id:
        raise DataError(f"{Path(run_dir) / 'config.yaml'}: no data_id (a run trained outside the "
                        "workflow); pass the tokenizer.json path explicitly")
    rel = Path(paths.tokenizer(cfg.data.corpus, data_id))
    run_dir = Path(run_dir).resolve()
    roots = [Path(workdir)] if workdir is not None else [Path.cwd()]
    if workdir is None and len(run_dir.parents) > 3:  # results/<study>/runs/<run_id>
        roots.append(run_dir.parents[3])
    for root in roots:
        if (root / rel).is_file():
            return root / rel
    raise DataError(f"{rel}: tokenizer of run {meta.get('run_id', run_dir.name)!r} not found "
                    f"(looked under {', '.join(str(r) for r in roots)}); pass its path explicitly")


def load_run_model(run_dir: str | Path, device: str | torch.device = "cpu", *,
                   tokenizer: str | Path | None = None) -> LoadedRun:
    """Model, tokenizer and config of a trained run; unpacks as ``(model, tokenizer, cfg)``."""
    from safetensors.torch import load_file

    from lmablate.data.tokenizer import eot_id, load_tokenizer
    from lmablate.engine.model import LM

    run_dir = Path(run_dir)
    cfg, meta = read_run_config(run_dir)
    weights = run_dir / "model.safetensors"
    if not weights.is_file():
        raise DataError(f"{weights}: missing (written when training completes)")
    state = load_file(str(weights))
    if "embed.weight" not in state:
        raise DataError(f"{weights}: no embed.weight; not an lmablate model")
    if cfg.model.tie_embeddings:
        state.setdefault("head.weight", state["embed.weight"])
    padded = state["embed.weight"].shape[0]
    max_len = cfg.model.context_length or cfg.train.seq_len
    model = LM(cfg.model, padded, max_seq_len=max_len)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise DataError(f"{weights}: does not match config.yaml's model (missing "
                        f"{missing[:3]}, unexpected {unexpected[:3]})")
    model.to(device).eval()
    tok_file = Path(tokenizer) if tokenizer else tokenizer_path(run_dir, meta, cfg)
    tok = load_tokenizer(tok_file)
    vocab = tok.get_vocab_size()
    if vocab > padded:
        raise DataError(f"{tok_file}: {vocab} tokens, but the model of {run_dir} has only "
                        f"{padded} embedding rows; wrong tokenizer?")
    return LoadedRun(model, tok, cfg, meta, vocab, eot_id(tok, cfg.tokenizer), max_len)
