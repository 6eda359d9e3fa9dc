"""Parameter and FLOP accounting: closed forms from a :class:`ModelConfig`, and counts of a module.

Keys of both :func:`param_counts` and :func:`count_module`:

===================  ==============================================================================
``total``            every parameter once (a tied embedding/head counts once)
``trainable``        total minus frozen parameters (``freeze_experts``)
``embedding``        token embedding + learned position table + untied output head
``non_embedding``    total - embedding
``embedding_share``  embedding / total (a float)
``active``           parameters a token uses: total - all expert parameters + top_k experts'
                     (= total for dense models)
===================  ==============================================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmablate.study.config import ModelConfig

if TYPE_CHECKING:  # torch is imported lazily: `lmablate plan` and the Snakefile need no torch
    from torch import nn

__all__ = ["count_module", "flops_per_token", "param_counts"]


def _norm(cfg: ModelConfig, dim: int) -> int:
    return {"rms": dim, "layer": dim * (2 if cfg.bias else 1), "none": 0}[cfg.norm]


def _ffn(cfg: ModelConfig, d_ff: int) -> int:
    mats = 3 if cfg.gated else 2
    bias = (2 * d_ff if cfg.gated else d_ff) + cfg.d_model if cfg.bias else 0
    return mats * cfg.d_model * d_ff + bias


def _counts(total: int, trainable: int, embedding: int, expert: int, active_expert: int) -> dict:
    return {"total": total, "trainable": trainable, "embedding": embedding,
            "non_embedding": total - embedding, "embedding_share": embedding / total,
            "active": total - expert + active_expert}


def param_counts(cfg: ModelConfig, vocab_size: int, max_seq_len: int = 2048) -> dict:
    """Closed-form parameter counts of ``LM(cfg, vocab_size, max_seq_len)`` (see module doc)."""
    d, hs, kv = cfg.d_model, cfg.head_dim, cfg.kv_heads
    seq = cfg.context_length or max_seq_len
    attn = 2 * d * d + 2 * d * kv * hs + ((2 * d + 2 * kv * hs) if cfg.bias else 0)
    attn += 2 * hs if cfg.qk_norm else 0
    if cfg.num_experts:
        one_expert = _ffn(cfg, cfg.expert_d_ff or cfg.d_ff)
        expert = cfg.n_layers * cfg.num_experts * one_expert
        active_expert = cfg.n_layers * cfg.top_k * one_expert
        ffn = d * cfg.num_experts + cfg.num_experts * one_expert  # router + experts
    else:
        expert = active_expert = 0
        ffn = _ffn(cfg, cfg.d_ff)
    blocks = cfg.n_layers * (attn + ffn + 2 * _norm(cfg, d))
    final_norm = _norm(cfg, d) if cfg.norm_position == "pre" else 0
    embedding = vocab_size * d + (seq * d if cfg.pos_emb == "learned" else 0)
    embedding += 0 if cfg.tie_embeddings else vocab_size * d
    total = embedding + blocks + final_norm
    trainable = total - (expert if cfg.freeze_experts else 0)
    return _counts(total, trainable, embedding, expert, active_expert)


def count_module(model: nn.Module) -> dict:
    """The same keys counted from an :class:`~lmablate.engine.model.LM` instance (shared tensors
    once)."""
    total = trainable = embedding = expert = 0
    for name, p in model.named_parameters():  # named_parameters() skips shared (tied) tensors
        n = p.numel()
        total += n
        trainable += n if p.requires_grad else 0
        embedding += n if name in ("embed.weight", "pos.weight", "head.weight") else 0
        expert += n if ".experts." in name else 0
    cfg = getattr(model, "cfg", None)
    moe = cfg is not None and cfg.num_experts
    active_expert = expert * cfg.top_k // cfg.num_experts if moe else 0
    return _counts(total, trainable, embedding, expert, active_expert)


def flops_per_token(cfg: ModelConfig, vocab_size: int, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward), Kaplan et al. 2020 / Chinchilla convention.

    ``6 * N + 6 * d_model * vocab_size + 12 * n_layers * d_model * seq_len`` where

    - N = active non-embedding parameters (MoE: router + top_k experts per layer, not all experts;
      norms and biases included, their FLOPs are negligible anyway);
    - ``6 * d_model * vocab_size`` is the output-head matmul, counted whether or not it is tied
      (the head's parameters are in "embedding", so they are not in N);
    - ``12 * n_layers * d_model * seq_len`` is attention over the context (QK^T and AV,
      2 * 2 * T * d per token per layer forward, x3 for backward) over the full T x T score
      matrix: the causal mask's halving is *not* applied (as in Kaplan; flash kernels do skip the
      masked half, so this overstates attention by up to 2x). Embedding lookups and softmax are
      not counted.
    """
    counts = param_counts(cfg, vocab_size, seq_len)  # the position table is not in N anyway
    n_active = counts["active"] - counts["embedding"]
    return float(6 * n_active + 6 * cfg.d_model * vocab_size
                 + 12 * cfg.n_layers * cfg.d_model * seq_len)


