"""Run configuration: the dataclasses every run is resolved into.

One run = ``RunConfig(model, train, data, tokenizer)``. Each field carries its help text, its
default and its range in one place (:func:`F`); the JSON schema in ``schemas/`` is generated from
these classes (``python -m lmablate schema``), so the docs, the schema and the checks cannot drift.

Validation gathers every problem of a block and raises :class:`ConfigError` naming the dotted key,
so a bad study stops before any job with ``<file>: <key>: <what was expected>``.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import re
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from lmablate.errors import ConfigError, did_you_mean

__all__ = [
    "ModelConfig",
    "TrainConfig",
    "DataConfig",
    "TokenizerConfig",
    "RunConfig",
    "PRESETS",
    "from_dict",
    "to_dict",
    "parse_size",
]


# Upper bounds of settings: generous (far beyond a small LM) but finite, so that a typo such as
# `d_model: 1e9` or `seed: 10**23` stops at plan time with one line instead of in a job.
MAX_WIDTH = 65_536  # d_model, vocab_multiple
MAX_FFN = 262_144  # d_ff, expert_d_ff
MAX_COUNT = 1024  # n_layers, n_heads, n_kv_heads, num_experts, top_k, keep_checkpoints
MAX_SEQ = 1_048_576  # seq_len, context_length, batch_size, grad_accum
MAX_VOCAB = 16_777_216  # vocabulary sizes (2**24)
MAX_PARAMS = 10**12  # params_target
MAX_TOKENS = 10**13  # token budgets and counts, training bytes, step intervals
MAX_SEED = 2**32 - 1  # numpy's and most tools' seed range
MAX_EXACT_INT = 2**53  # floats above this are not exact integers


def F(default: Any, help: str, *, ge: float | None = None, gt: float | None = None,
      le: float | None = None, lt: float | None = None, since: str | None = None) -> Any:
    """A dataclass field with its help text and numeric bounds (checked in :func:`from_dict`).

    ``since``: the version that added the field. Such a field enters run IDs only when it is set
    to something other than its default, so adding it keeps every existing run ID (and finished
    run) valid.
    """
    meta = {"help": help, "ge": ge, "gt": gt, "le": le, "lt": lt, "since": since}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------------------------------
# model


@dataclass
class ModelConfig:
    """Decoder-only transformer. Ablations are fields, branched locally in ``model.py``."""

    # shape
    d_model: int = F(128, "Width of the residual stream.", ge=1, le=MAX_WIDTH)
    n_layers: int = F(4, "Number of transformer blocks.", ge=1, le=MAX_COUNT)
    n_heads: int = F(4, "Attention (query) heads; must divide d_model.", ge=1, le=MAX_COUNT)
    n_kv_heads: int | None = F(None, "Key/value heads for grouped-query attention; None = n_heads "
                               "(multi-head). Must divide n_heads.", ge=1, le=MAX_COUNT)
    d_ff: int | None = F(None, "Hidden width of the feed-forward block; None = "
                         "round(8/3 * d_model) for gated FFNs (SwiGLU, GeGLU), 4 * d_model "
                         "otherwise.", ge=1, le=MAX_FFN)
    context_length: int | None = F(None, "Longest sequence the model accepts (learned position "
                                   "table size); None = train.seq_len.", ge=1, le=MAX_SEQ)
    vocab_size: int | None = F(None, "Embedding rows; None = the tokenizer's vocabulary, padded up "
                               "to vocab_multiple.", ge=2, le=MAX_VOCAB)
    vocab_multiple: int = F(64, "Pad the vocabulary to a multiple of this (GPU-friendly shapes; "
                            "the padding rows are never targets).", ge=1, le=MAX_WIDTH)
    # block
    ffn: Literal["swiglu", "geglu", "silu", "gelu", "relu", "relu2"] = F(
        "swiglu", "Feed-forward: gated (swiglu, geglu) or plain with that activation.")
    norm: Literal["rms", "layer", "none"] = F("rms", "Normalisation layer type (none = identity).")
    norm_position: Literal["pre", "post"] = F("pre", "pre: x + f(norm(x)); post: norm(x + f(x)).")
    norm_eps: float = F(1e-5, "Epsilon of RMSNorm/LayerNorm.", gt=0)
    pos_emb: Literal["rope", "learned", "none"] = F(
        "rope", "Position information: rotary, a learned absolute table, or none (NoPE; causal "
        "mask only).")
    rope_theta: float = F(10000.0, "RoPE base frequency.", gt=0)
    tie_embeddings: bool = F(True, "Share the input embedding and the output projection.")
    qk_norm: bool = F(False, "Normalise queries and keys per head before attention (RMSNorm).")
    bias: bool = F(False, "Biases in linear layers and LayerNorm.")
    dropout: float = F(0.0, "Dropout on attention weights, residual branches and embeddings.",
                       ge=0, lt=1)
    init_std: float = F(0.02, "Std of the normal init of linear layers and embeddings.", gt=0)
    init_scaled_residual: bool = F(True, "Scale the init of each residual output projection by "
                                   "1/sqrt(2 * n_layers) (GPT-2).")
    init: Literal["normal", "trunc_normal", "small", "xavier", "mitchell"] = F(
        "normal", "Weight init scheme: normal(init_std) (GPT-2); trunc_normal (normal cut at "
        "±3 std); small = normal(sqrt(2 / (5 d_model))) (Nguyen & Salazar 2019); xavier = "
        "uniform Glorot; mitchell = std 1/sqrt(fan_in), cut at ±3 std, output projections "
        "scaled by 1/sqrt(2 (layer + 1)) (OLMo). init_scaled_residual applies to normal, "
        "trunc_normal and small.", since="0.2")
    # mixture of experts (sparse MoE ablations)
    num_experts: int = F(0, "Experts per MoE FFN; 0 = dense FFN.", ge=0, le=MAX_COUNT)
    top_k: int = F(2, "Experts each token is routed to.", ge=1, le=MAX_COUNT)
    expert_d_ff: int | None = F(None, "Hidden width of each expert; None = d_ff.", ge=1,
                                le=MAX_FFN)
    router_aux_loss: float = F(0.01, "Weight of the Switch-style load-balancing loss.", ge=0)
    moe_init: Literal["dense", "sparse"] = F("dense", "Expert init: dense = normal(init_std) like "
                                             "the dense FFN; sparse = a sparse MoE init, 90% of "
                                             "each expert weight matrix zero.")
    freeze_experts: bool = F(False, "Train only the routers and the rest of the model; the expert "
                             "weights keep their init.")
    # parameter targets (parameter allocation): solved at expansion time into n_layers, d_ff
    # (and d_model)
    params_target: int | None = F(None, "Total parameters to hit (e.g. 10M): the sweep solves "
                                  "n_layers and d_ff, and d_model when embedding_share is set, to "
                                  "within 0.5% (lmablate.study.solve); solved dims replace given "
                                  "ones.",
                                  ge=1, le=MAX_PARAMS)
    embedding_share: float | None = F(None, "With params_target: share of the parameters in the "
                                      "embedding (vocab x d_model, + an untied head); sets "
                                      "d_model. None = keep d_model.", gt=0, lt=1)
    glu_expansion: float | None = F(None, "With params_target: d_ff / d_model to aim for; None = "
                                    "8/3 for gated FFNs, 4 otherwise.", gt=0)

    def __post_init__(self) -> None:
        if self.d_ff is None:
            gated = self.ffn in ("swiglu", "geglu")
            # 8/3 * d_model rounded up to a multiple of 8 keeps gated FFNs at the parameter count
            # of a plain 4 * d_model FFN (Shazeer 2020), so `ffn: silu` vs `swiglu` is a fair
            # ablation.
            self.d_ff = (8 * self.d_model // 3 + 7) // 8 * 8 if gated else 4 * self.d_model

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def gated(self) -> bool:
        return self.ffn in ("swiglu", "geglu")

    def padded_vocab(self, vocab: int) -> int:
        """Embedding rows for a tokenizer of ``vocab`` ids: ``vocab_size`` if set, else ``vocab``
        rounded up to a multiple of ``vocab_multiple``."""
        return self.vocab_size or math.ceil(vocab / self.vocab_multiple) * self.vocab_multiple

    def check(self) -> list[ConfigError]:
        issues = []
        if self.d_model % self.n_heads:
            issues.append(ConfigError(f"n_heads ({self.n_heads}) must divide d_model "
                                      f"({self.d_model})", key="n_heads"))
        elif self.pos_emb == "rope" and self.head_dim % 2:
            issues.append(ConfigError(f"RoPE needs an even head dimension, got d_model/n_heads = "
                                      f"{self.head_dim}", key="n_heads"))
        if self.n_heads % self.kv_heads:
            issues.append(ConfigError(f"n_kv_heads ({self.kv_heads}) must divide n_heads "
                                      f"({self.n_heads})", key="n_kv_heads"))
        if self.num_experts and self.top_k > self.num_experts:
            issues.append(ConfigError(f"top_k ({self.top_k}) must be <= num_experts "
                                      f"({self.num_experts})", key="top_k"))
        if self.freeze_experts and not self.num_experts:
            issues.append(ConfigError("freeze_experts needs num_experts > 0", key="freeze_experts"))
        return issues


# --------------------------------------------------------------------------------------------------
# training


@dataclass
class TrainConfig:
    """Optimisation and budget. Budget is in tokens so runs with other batch/seq compare fairly."""

    tokens: int = F(2_000_000, "Training budget in tokens (steps = tokens / (batch_size * "
                    "grad_accum * seq_len), rounded up); one step must fit in it.", ge=1,
                    le=MAX_TOKENS)
    epochs: float | None = F(None, "Budget in passes over the train split instead of tokens "
                             "(overrides tokens when set).", gt=0, le=1e6)
    batch_size: int = F(32, "Sequences per micro-batch.", ge=1, le=MAX_SEQ)
    grad_accum: int = F(1, "Micro-batches per optimiser step.", ge=1, le=MAX_SEQ)
    seq_len: int = F(128, "Tokens per training sequence.", ge=2, le=MAX_SEQ)
    lr: float = F(3e-3, "Peak learning rate.", gt=0)
    min_lr_ratio: float = F(0.1, "Final LR as a fraction of lr (cosine/linear decay floor).",
                            ge=0, le=1)
    warmup: float = F(0.05, "Warmup length: a fraction of training if < 1, else tokens.", ge=0)
    schedule: Literal["cosine", "linear", "constant"] = F("cosine", "LR decay after warmup.")
    weight_decay: float = F(0.1, "AdamW decoupled weight decay (not applied to norms, biases, "
                            "embeddings' padding).", ge=0)
    beta1: float = F(0.9, "AdamW beta1.", ge=0, lt=1)
    beta2: float = F(0.95, "AdamW beta2.", ge=0, lt=1)
    eps: float = F(1e-8, "AdamW epsilon.", gt=0)
    grad_clip: float = F(1.0, "Clip the global gradient norm to this; 0 = off.", ge=0)
    precision: Literal["auto", "bf16", "fp16", "fp32"] = F(
        "auto", "auto = bf16 autocast on CUDA with bf16 support, fp16 + grad scaler on older "
        "GPUs, fp32 on CPU.")
    compile: Literal["auto", "true", "false"] = F("auto", "torch.compile the model: auto = on CUDA "
                                                  "only.")
    seed: int = F(0, "Seed for initialisation and data order.", ge=0, le=MAX_SEED)
    eval_every: int | None = F(None, "Optimiser steps between evaluations; None = 10 evaluations "
                               "per run.", ge=1, le=MAX_TOKENS)
    eval_tokens: int = F(32768, "Validation tokens per periodic evaluation (fixed windows).", ge=1,
                         le=MAX_TOKENS)
    final_eval_tokens: int | None = F(None, "Validation tokens for the final evaluation; None = "
                                      "the whole split (capped at 2M).", ge=1, le=MAX_TOKENS)
    log_every: int = F(10, "Optimiser steps between train-loss log lines.", ge=1, le=MAX_TOKENS)
    checkpoint_every: int | None = F(None, "Optimiser steps between checkpoints; None = 10 per "
                                     "run.", ge=1, le=MAX_TOKENS)
    keep_checkpoints: int = F(2, "Checkpoints kept on disk (older ones are deleted).", ge=1,
                              le=MAX_COUNT)
    diverge_loss: float | None = F(None, "Train loss above which a run counts as diverged; None = "
                                   "ln(vocab) + 2 after warmup. NaN/inf always count.", gt=0)
    stop_tokens: int | None = F(None, "End the run after this many tokens while the LR schedule "
                                "follows the full budget (`tokens`): a phase-1 ranking run that "
                                "phase 2 continues. None = train the full budget.", ge=1,
                                le=MAX_TOKENS, since="0.2")
    early_stop_delta: float | None = F(None, "Early stopping: end the run (status stopped_early) "
                                       "when its validation metric has been worse than the best "
                                       "of its cohort (other runs of the phase, or its own best) "
                                       "by at least this much for early_stop_tokens. None = off.",
                                       gt=0, since="0.2")
    early_stop_metric: Literal["loss", "ppl"] = F("loss", "Early stopping compares validation "
                                                  "loss (nats) or perplexity.", since="0.2")
    early_stop_tokens: int = F(1_000_000, "Early stopping patience in training tokens.", ge=1,
                               le=MAX_TOKENS, since="0.2")


# --------------------------------------------------------------------------------------------------
# data and tokenizer (study level; every run of a study shares them unless a variant overrides)


@dataclass
class DataConfig:
    corpus: str = F("tinystories-1k", "Name of the corpus: a key of the study's `corpora:` or a "
                    "built-in preset.")
    val_fraction: float = F(0.05, "Share of documents held out for validation (chosen by a hash "
                            "of each document, so the split is stable).", gt=0, lt=1)


@dataclass
class TokenizerConfig:
    kind: Literal["bpe", "byte", "char", "file", "hub"] = F(
        "bpe", "bpe: byte-level BPE trained on the corpus; byte: 256 byte ids; char: characters "
        "seen in the corpus; file: an existing tokenizer.json; hub: the tokenizer.json of a "
        "Hugging Face hub model repo.")
    vocab_size: int = F(4096, "Target vocabulary for bpe (including special tokens).", ge=2,
                        le=MAX_VOCAB)
    min_frequency: int = F(2, "bpe: merges seen fewer times are not learned.", ge=1)
    special_tokens: list = F(["<|endoftext|>"], "Special tokens; the first one separates "
                             "documents in the token stream.")
    train_bytes: int = F(50_000_000, "bpe: train on at most this many bytes of the train split.",
                         ge=1, le=MAX_TOKENS)
    path: str | None = F(None, "kind=file: path of a tokenizer.json.")
    repo: str | None = F(None, "kind=hub: model repository id (owner/name), e.g. "
                         "HuggingFaceTB/SmolLM-135M.", since="0.2")
    revision: str = F("main", "kind=hub: branch, tag or commit (a commit pins it exactly).",
                      since="0.2")
    sha256: str | None = F(None, "kind=hub: expected SHA-256 of the downloaded tokenizer.json "
                           "(checked; pins the content in the run IDs).", since="0.2")


HUB_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def _hub_issues(t: TokenizerConfig) -> list[ConfigError]:
    """``kind: hub`` needs an owner/name repo; a pinned sha256 is 64 hex digits."""
    issues = []
    if t.kind == "hub" and not (isinstance(t.repo, str) and HUB_REPO_RE.match(t.repo)):
        issues.append(ConfigError(f"kind 'hub' needs a model repository id owner/name, got "
                                  f"{t.repo!r}", key="tokenizer.repo"))
    if t.sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", str(t.sha256)):
        issues.append(ConfigError(f"expected 64 hex digits, got {t.sha256!r}",
                                  key="tokenizer.sha256"))
    return issues


# --------------------------------------------------------------------------------------------------
# one run


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)

    def check(self) -> list[ConfigError]:
        issues = [e.under("model") for e in self.model.check()]
        ctx = self.model.context_length
        if ctx is not None and self.train.seq_len > ctx:
            issues.append(ConfigError(f"seq_len ({self.train.seq_len}) exceeds the model's "
                                      f"context_length ({ctx})", key="train.seq_len"))
        t = self.train
        step = t.batch_size * t.grad_accum * t.seq_len
        if t.epochs is None and step > t.tokens:
            issues.append(ConfigError(f"one optimiser step (batch_size x grad_accum x seq_len = "
                                      f"{step} tokens) is larger than the whole budget "
                                      f"(train.tokens = {t.tokens})", key="train.batch_size"))
        if self.tokenizer.kind == "file" and not self.tokenizer.path:
            issues.append(ConfigError("kind 'file' needs a path to a tokenizer.json",
                                      key="tokenizer.path"))
        issues += _hub_issues(self.tokenizer)
        return issues


SECTIONS = {"model": ModelConfig, "train": TrainConfig, "data": DataConfig,
            "tokenizer": TokenizerConfig}

# Named model sizes (torchtitan-style flavours). `debug` trains on a CPU in seconds; tests use it.
PRESETS: dict[str, dict[str, Any]] = {
    "debug": {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64},
    "tiny": {"d_model": 64, "n_layers": 2, "n_heads": 4, "d_ff": 172},
    "tiny5m": {"d_model": 160, "n_layers": 22, "n_heads": 10, "d_ff": 240},
    "cs336": {"d_model": 512, "n_layers": 4, "n_heads": 16, "d_ff": 1344},
    "gpt2s": {"d_model": 768, "n_layers": 12, "n_heads": 12, "d_ff": 2048},
}


# --------------------------------------------------------------------------------------------------
# dict <-> dataclass with checks


_SUFFIX = {"k": 1e3, "K": 1e3, "m": 1e6, "M": 1e6, "b": 1e9, "B": 1e9, "g": 1e9, "G": 1e9}


def parse_size(value: Any) -> Any:
    """``"10M"`` -> 10_000_000, ``"2.5k"`` -> 2500; other values are returned unchanged."""
    if isinstance(value, str) and len(value) > 1 and value[-1] in _SUFFIX:
        try:
            number = float(value[:-1].replace("_", ""))
        except ValueError:
            return value
        result = number * _SUFFIX[value[-1]]
        return int(result) if result == int(result) else result
    return value


@functools.cache
def later_fields() -> dict[str, Any]:
    """Dotted key -> default of every field added after the first release (``F(since=...)``)."""
    return {f"{section}.{f.name}": f.default for section, cls in SECTIONS.items()
            for f in dataclasses.fields(cls) if f.metadata.get("since")}


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string",
            list: "a list", dict: "a mapping"}.get(tp, getattr(tp, "__name__", str(tp)))


def expected_type(section: str, name: str) -> str:
    """What setting ``section.name`` takes, in words (``"an integer"``); null left out."""
    tp = _type_hints(SECTIONS[section])[name]
    args = [a for a in (typing.get_args(tp) if typing.get_origin(tp) in (typing.Union,
            types.UnionType) else (tp,)) if a is not type(None)]
    return " or ".join(_type_name(a) for a in args)


def unknown_key(name: str, fields: Iterable[str], key: str) -> ConfigError:
    """The error for a setting ``name`` that is none of ``fields``, with a did-you-mean."""
    fields = list(fields)
    return ConfigError(f"unknown key{did_you_mean(name, fields)}; expected one of: "
                       f"{', '.join(fields)}", key=key)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (YAML-friendly: ints are floats, 1e-3
    strings)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"expected {_type_name(tp)}, got {value!r}", key=key)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if isinstance(value, bool) and all(isinstance(a, str) for a in allowed):
            value = "true" if value else "false"
        if value not in allowed:
            raise ConfigError(f"expected {_type_name(tp)}, got {value!r}"
                              f"{did_you_mean(str(value), map(str, allowed))}", key=key)
        return value
    value = parse_size(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)  # e.g. from `snakemake --config`, which may pass strings
        elif isinstance(value, str):  # YAML 1.1 reads 1e9 (no dot) as a string
            try:
                value = float(value.replace("_", ""))
            except ValueError:
                pass
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer() and abs(value) <= MAX_EXACT_INT:
            return int(value)  # only exact integers: 1e9 is, 1.5 and 1e23 are not
    elif tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an integer beyond any float
                raise ConfigError(f"expected a finite number, got an integer of "
                                  f"{value.bit_length()} bits", key=key) from None
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is list:
        if isinstance(value, list):
            return list(value)
    else:
        return value
    raise ConfigError(f"expected {_type_name(tp)}, got {value!r}", key=key)


def _check_bounds(value: Any, meta: dict, key: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"expected a finite number, got {value!r}", key=key)
    for name, ok, word in (("ge", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
                           ("le", lambda v, b: v <= b, "<="), ("lt", lambda v, b: v < b, "<")):
        bound = meta.get(name)
        if bound is not None and not ok(value, bound):
            shown = bound if isinstance(bound, int) else f"{bound:g}"
            raise ConfigError(f"expected a value {word} {shown}, got {value!r}", key=key)


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls: type, data: Any, key: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping; unknown keys, wrong types, bounds -> ConfigError."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping, got {data!r}", key=key or None)
    hints = _type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    issues: list[ConfigError] = []
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        sub = f"{key}.{name}" if key else str(name)
        if name not in fields:
            issues.append(unknown_key(str(name), fields, sub))
            continue
        tp = hints[name]
        try:
            if dataclasses.is_dataclass(tp):
                kwargs[name] = from_dict(tp, value, sub)
            else:
                kwargs[name] = _coerce(value, tp, sub)
                _check_bounds(kwargs[name], dict(fields[name].metadata), sub)
        except ConfigError as err:
            issues.append(err)
    if issues:
        raise issues[0]
    obj = cls(**kwargs)
    if hasattr(obj, "check"):
        problems = obj.check()
        if problems:
            first = problems[0]
            raise first.under(key) if key else first
    return obj


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain nested dict of a config dataclass (derived defaults filled in): what
    ``dataclasses.asdict`` gives, in a third of its time (the Snakefile's parse makes one per run
    of a study)."""
    return _plain(obj)


_ATOMS = frozenset((int, float, str, bool, type(None)))


def _plain(value: Any) -> Any:
    """``value`` with dataclasses as dicts and fresh lists and dicts; scalars as they are."""
    kind = type(value)
    if kind in _ATOMS:
        return value
    if kind is list or kind is dict:
        return (list(map(_plain, value)) if kind is list
                else {_plain(k): _plain(v) for k, v in value.items()})
    if kind is tuple:
        return tuple(map(_plain, value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return copy.deepcopy(value)


def field_help(cls: type) -> dict[str, dict[str, Any]]:
    """Name -> {help, default, type, bounds}; used by the schema generator and ``--help`` texts."""
    out = {}
    hints = _type_hints(cls)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        out[f.name] = {"type": hints[f.name], "default": default, **dict(f.metadata)}
    return out
