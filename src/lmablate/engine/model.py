"""Decoder-only transformer LM whose every ablation is a field of :class:`ModelConfig`.

Design choices (defaults first; each knob is branched locally where it acts, no subclasses):

- Token embedding -> [learned positions] -> dropout -> n_layers x Block -> [final norm] -> head.
- ``norm_position``: pre-norm ``x = x + f(norm(x))`` plus one final norm before the head (GPT-2,
  Llama); post-norm ``x = norm(x + f(x))`` (Vaswani et al. 2017) with *no* final norm: the last
  block already ends in a norm, so a final one would only renormalise a normalised vector.
  (The CS336 post-norm ablation specifies only the block change; we drop the final norm so that
  post-norm is the original architecture and has exactly 2 norms per block.)
- ``norm``: RMSNorm (``F.rms_norm``, fp32 statistics), LayerNorm (bias iff ``bias``), or none
  (identity). ``qk_norm`` is always an RMSNorm over head_dim on q and k, before RoPE (OLMo 2,
  Qwen3).
- ``pos_emb``: RoPE in the Hugging Face / Llama convention (rotate_half: the first and second half
  of head_dim form the pairs, not interleaved even/odd), so Llama weights load unchanged; a learned
  absolute table (GPT-2); or none (NoPE, the causal mask is the only position signal).
- Attention: ``F.scaled_dot_product_attention(is_causal=True)``; grouped-query attention via
  ``enable_gqa`` (``n_kv_heads`` k/v heads shared by ``n_heads / n_kv_heads`` query heads).
- FFN: gated (swiglu, geglu): ``w2(act(w1 x) * w3 x)``; plain (silu, gelu, relu, relu2):
  ``w2(act(w1 x))``. relu2 is squared ReLU (Primer). ``w2`` is always the down projection.
- MoE (``num_experts > 0``, seed 004 "SoME"): every block's FFN becomes a top-k router +
  ``num_experts`` FFNs of the same kind, dispatched by sorting tokens by expert (grouped GEMM on
  CUDA); see :class:`MoE` and :class:`Experts`.
- ``bias``: biases on all linear layers of the blocks (q, k, v, o, FFN) and on LayerNorm; never on
  the router or the output head.
- ``dropout``: embedding dropout, attention-probability dropout (SDPA ``dropout_p``, training only)
  and residual dropout on the output of every attention and FFN branch.
- ``tie_embeddings``: the head shares the token embedding matrix (counted once).
- All initialisation lives in :meth:`LM.init_weights` (the scheme is tabulated there).
"""

from __future__ import annotations

import math
import re

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmablate.study.config import ModelConfig

__all__ = ["FFN", "LM", "SPARSE_EXPERT_DENSITY", "Experts", "MoE", "RMSNorm", "cross_entropy",
           "linear_cross_entropy", "load_hf_llama"]

SPARSE_EXPERT_DENSITY = 0.1  # moe_init="sparse": share of each expert weight matrix left non-zero
Rope = tuple[torch.Tensor, torch.Tensor] | None  # (cos, sin), each (T, head_dim)
_SDPA_GQA = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)


# --------------------------------------------------------------------------------------------------
# small modules


class RMSNorm(nn.Module):
    """``x / rms(x) * weight`` over the last dimension, statistics in fp32 (as Llama)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.rms_norm(x.float(), (x.size(-1),), eps=self.eps).to(x.dtype)
        return y * self.weight.to(x.dtype)


def make_norm(cfg: ModelConfig, dim: int) -> nn.Module:
    if cfg.norm == "rms":
        return RMSNorm(dim, cfg.norm_eps)
    if cfg.norm == "layer":
        return nn.LayerNorm(dim, eps=cfg.norm_eps, bias=cfg.bias)
    assert cfg.norm == "none", cfg.norm
    return nn.Identity()


def rope_cache(head_dim: int, max_seq_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (max_seq_len, head_dim), HF layout: frequencies repeated [f, f]."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    freqs = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)  # (T, hs/2)
    emb = torch.cat([freqs, freqs], dim=-1)  # (T, hs)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (i, i + hs/2) of x (B, T, nh, hs) by the angles in cos/sin (T, hs)."""
    cos, sin = cos[:, None, :].to(x.dtype), sin[:, None, :].to(x.dtype)  # (T, 1, hs)
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)  # rotate_half
    return x * cos + rotated * sin


def _sparsify_(w: torch.Tensor, density: float) -> None:
    """Zero all but round(density * numel) randomly chosen entries of ``w`` (in place)."""
    keep = torch.zeros(w.numel(), dtype=torch.bool, device=w.device)
    keep[torch.randperm(w.numel(), device=w.device)[:round(density * w.numel())]] = True
    w.mul_(keep.view_as(w))


# Two CUDA-only layout knobs (performance only: same parameters, names and math), both off: on
# one H100 (bench/README.md, "Tried and not kept") each made the compiled training step slower,
# although the second one wins in isolation (bench/attn_backends.py).
# FUSE_PROJECTIONS: q/k/v (and gate/up) as one matmul against the weights concatenated in the
# forward. tiny5m -8%, cs336 -4%, gpt2s -7% (with SDPA_CONTIGUOUS).
FUSE_PROJECTIONS = False
# SDPA_CONTIGUOUS: contiguous (B, nh, T, hs) q/k/v for SDPA instead of transposed (B, T, nh, hs)
# views. cuDNN's flash attention forward + backward alone is 30% faster so at head_dim 16, but
# the whole tiny5m step is 3% slower (cs336 -2%).
SDPA_CONTIGUOUS = False


def _fused_linear(x: torch.Tensor, layers: tuple[nn.Linear, ...]) -> torch.Tensor:
    """``cat([l(x) for l in layers], -1)`` as one matmul."""
    w = torch.cat([layer.weight for layer in layers])
    b = None if layers[0].bias is None else torch.cat([layer.bias for layer in layers])
    return F.linear(x, w, b)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        assert self.n_heads * self.head_dim == cfg.d_model and self.n_heads % self.n_kv_heads == 0
        kv_dim = self.n_kv_heads * self.head_dim
        self.wq = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.wk = nn.Linear(cfg.d_model, kv_dim, bias=cfg.bias)
        self.wv = nn.Linear(cfg.d_model, kv_dim, bias=cfg.bias)
        self.wo = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.q_norm = RMSNorm(self.head_dim, cfg.norm_eps) if cfg.qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim, cfg.norm_eps) if cfg.qk_norm else nn.Identity()
        self.attn_dropout = cfg.dropout
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, rope: Rope) -> torch.Tensor:
        B, T, C = x.shape
        if FUSE_PROJECTIONS and x.is_cuda:  # one matmul against [wq; wk; wv]
            kv = self.n_kv_heads * self.head_dim
            q, k, v = _fused_linear(x, (self.wq, self.wk, self.wv)).split([C, kv, kv], dim=-1)
        else:
            q, k, v = self.wq(x), self.wk(x), self.wv(x)
        q = q.view(B, T, self.n_heads, self.head_dim)  # (B, T, nh, hs)
        k = k.view(B, T, self.n_kv_heads, self.head_dim)  # (B, T, nkv, hs)
        v = v.view(B, T, self.n_kv_heads, self.head_dim)  # (B, T, nkv, hs)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, nh|nkv, T, hs)
        if SDPA_CONTIGUOUS and q.is_cuda:
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        gqa = self.n_kv_heads != self.n_heads
        if gqa and not _SDPA_GQA:
            rep = self.n_heads // self.n_kv_heads
            k = k.repeat_interleave(rep, dim=1)  # (B, nh, T, hs)
            v = v.repeat_interleave(rep, dim=1)
        extra = {"enable_gqa": True} if gqa and _SDPA_GQA else {}
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.attn_dropout if self.training else 0.0, **extra)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, nh * hs)
        return self.resid_drop(self.wo(y))


_ACT = {"swiglu": F.silu, "geglu": F.gelu, "silu": F.silu, "gelu": F.gelu, "relu": F.relu,
        "relu2": lambda h: F.relu(h).square()}


class FFN(nn.Module):
    """Gated ``w2(act(w1 x) * w3 x)`` or plain ``w2(act(w1 x))``, then residual dropout."""

    def __init__(self, cfg: ModelConfig, d_ff: int, dropout: float):
        super().__init__()
        self.act = _ACT[cfg.ffn]
        self.w1 = nn.Linear(cfg.d_model, d_ff, bias=cfg.bias)  # gate (gated) / up (plain)
        self.w3 = nn.Linear(cfg.d_model, d_ff, bias=cfg.bias) if cfg.gated else None  # up
        self.w2 = nn.Linear(d_ff, cfg.d_model, bias=cfg.bias)  # down
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if FUSE_PROJECTIONS and self.w3 is not None and x.is_cuda:  # one matmul: [w1; w3]
            gate, up = _fused_linear(x, (self.w1, self.w3)).chunk(2, dim=-1)
            return self.resid_drop(self.w2(self.act(gate) * up))
        h = self.act(self.w1(x))  # (..., d_ff)
        if self.w3 is not None:
            h = h * self.w3(x)
        return self.resid_drop(self.w2(h))


_grouped_mm = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


class Experts(nn.Module):
    """``num_experts`` FFNs of ``cfg.ffn`` kind, weights stacked as (E, out, in) like nn.Linear.

    Input: the (token, expert) slots sorted by expert, so expert e owns one contiguous slice of
    ``counts[e]`` rows. On CUDA in bf16 (autocast or bf16 weights) each of w1/w3/w2 is one grouped
    GEMM (``F.grouped_mm``, sm80+, no host sync); elsewhere (CPU, fp32, widths not multiples of
    8) a loop over experts of plain matmuls, split by ``counts.tolist()`` (one host sync per
    layer). Same math either way (``test_moe_grouped_mm_matches_loop``); on an H100 the grouped
    path makes an 8-expert top-2 step ~2.4x faster than the loop under torch.compile.
    """

    use_grouped_mm: bool | None = None  # None = auto; False forces the loop (tests)

    def __init__(self, cfg: ModelConfig, num_experts: int, d_ff: int):
        super().__init__()
        E, d = num_experts, cfg.d_model
        self.act = _ACT[cfg.ffn]
        self.w1 = nn.Parameter(torch.empty(E, d_ff, d))  # gate (gated) / up (plain)
        self.w3 = nn.Parameter(torch.empty(E, d_ff, d)) if cfg.gated else None  # up
        self.w2 = nn.Parameter(torch.empty(E, d, d_ff))  # down
        self.b1 = nn.Parameter(torch.zeros(E, d_ff)) if cfg.bias else None
        self.b3 = nn.Parameter(torch.zeros(E, d_ff)) if cfg.bias and cfg.gated else None
        self.b2 = nn.Parameter(torch.zeros(E, d)) if cfg.bias else None

    def _grouped(self, x: torch.Tensor) -> torch.dtype | None:
        """The bf16 dtype to run grouped GEMMs in, or None to loop over experts."""
        if (self.use_grouped_mm is False or _grouped_mm is None or not x.is_cuda
                or torch.cuda.get_device_capability(x.device) < (8, 0)):
            return None
        dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else x.dtype
        aligned = all(n % 8 == 0 for n in self.w2.shape[1:])  # 16-byte strides in bf16
        return dtype if dtype == torch.bfloat16 and aligned else None

    def forward(self, x: torch.Tensor, expert: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        # x (M, C) sorted by expert; expert (M,) the expert of each row; counts (E,)
        dtype = self._grouped(x)
        if dtype is not None:
            offs = counts.cumsum(0, dtype=torch.int32)  # (E,) end of each expert's slice

            def linear(h, w, b):  # (M, in) -> (M, out) with w[expert[row]]
                y = _grouped_mm(h.to(dtype), w.to(dtype).transpose(-2, -1), offs=offs)
                return y if b is None else y + b.to(dtype)[expert]
        else:
            sizes = counts.tolist()

            def linear(h, w, b):
                y = torch.cat([F.linear(h_e, w_e) for h_e, w_e in zip(h.split(sizes), w)])
                return y if b is None else y + b[expert].to(y.dtype)

        h = self.act(linear(x, self.w1, self.b1))  # (M, d_ff)
        if self.w3 is not None:
            h = h * linear(x, self.w3, self.b3)
        return linear(h, self.w2, self.b2)  # (M, C)


class MoE(nn.Module):
    """Token-choice top-k mixture of FFN experts (seed 004, "SoME").

    - router: ``Linear(d_model, num_experts, bias=False)``, softmax in fp32, top-k experts per
      token, their probabilities renormalised to sum to 1 (the gate weights).
    - no capacity limit, no token dropping: each token is processed by exactly top_k experts.
    - dispatch: the N*k (token, expert) slots are sorted by expert so each expert's rows are one
      contiguous slice (:class:`Experts`); outputs are weighted by the gates and summed back per
      token with ``index_add_``.
    - load-balancing loss (Switch Transformer): ``num_experts * sum_i f_i * P_i`` with f_i the
      fraction of slots routed to expert i (tokens whose top-k holds i, divided by N*k) and P_i
      the mean router probability of i. It is 1 for perfectly uniform routing. Stored in
      ``self.aux_loss`` after every forward; unweighted (the trainer multiplies by
      ``cfg.router_aux_loss``).
    - ``self.load``: (num_experts,) int64 slot counts summed over forwards since the last
      :meth:`LM.pop_expert_load` (no grad, stays on device).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_experts, self.top_k = cfg.num_experts, cfg.top_k
        assert 1 <= self.top_k <= self.num_experts
        self.router = nn.Linear(cfg.d_model, cfg.num_experts, bias=False)
        self.experts = Experts(cfg, cfg.num_experts, cfg.expert_d_ff or cfg.d_ff)
        self.resid_drop = nn.Dropout(cfg.dropout)
        self.aux_loss: torch.Tensor | None = None
        self.load: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        E, k = self.num_experts, self.top_k
        x = x.reshape(B * T, C)  # (N, C)
        probs = self.router(x).float().softmax(dim=-1)  # (N, E)
        gate, expert = probs.topk(k, dim=-1)  # (N, k), (N, k)
        gate = gate / gate.sum(dim=-1, keepdim=True)

        flat_expert = expert.view(-1)  # (N*k,) slot j is token j // k
        order = flat_expert.argsort(stable=True)  # (N*k,) slots sorted by expert
        token = order // k  # (N*k,) token of each sorted slot
        counts = torch.bincount(flat_expert, minlength=E)  # (E,)
        out = self.experts(x[token], flat_expert[order], counts)  # (N*k, C)
        out = out * gate.view(-1)[order, None].to(out.dtype)
        y = out.new_zeros(B * T, C).index_add_(0, token, out)  # (N, C)

        f = counts.to(probs.dtype) / (B * T * k)  # (E,) fraction of slots
        self.aux_loss = E * (f * probs.mean(dim=0)).sum()
        counts = counts.detach()
        self.load = counts if self.load is None else self.load + counts
        return self.resid_drop(y.view(B, T, C))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.pre_norm = cfg.norm_position == "pre"
        self.norm1 = make_norm(cfg, cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.norm2 = make_norm(cfg, cfg.d_model)
        self.ffn = MoE(cfg) if cfg.num_experts else FFN(cfg, cfg.d_ff, cfg.dropout)

    def forward(self, x: torch.Tensor, rope: Rope) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.attn(self.norm1(x), rope)
            x = x + self.ffn(self.norm2(x))
        else:
            x = self.norm1(x + self.attn(x, rope))
            x = self.norm2(x + self.ffn(x))
        return x


# --------------------------------------------------------------------------------------------------
# the model


class LM(nn.Module):
    """``LM(cfg, vocab_size)(idx (B, T)) -> logits (B, T, vocab_size)``.

    ``vocab_size`` is the number of embedding rows (already padded). ``max_seq_len`` sizes the
    learned position table and the RoPE cache when ``cfg.context_length`` is None.
    """

    def __init__(self, cfg: ModelConfig, vocab_size: int, max_seq_len: int = 2048):
        super().__init__()
        problems = cfg.check()
        if problems:
            raise problems[0].under("model")
        self.cfg, self.vocab_size = cfg, vocab_size
        self.max_seq_len = cfg.context_length or max_seq_len
        self.embed = nn.Embedding(vocab_size, cfg.d_model)
        self.pos = nn.Embedding(self.max_seq_len, cfg.d_model) if cfg.pos_emb == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm_f = make_norm(cfg, cfg.d_model) if cfg.norm_position == "pre" else nn.Identity()
        self.head = nn.Linear(cfg.d_model, vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        if cfg.pos_emb == "rope":
            cos, sin = rope_cache(cfg.head_dim, self.max_seq_len, cfg.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)  # (max_seq_len, hs)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.init_weights()
        if cfg.freeze_experts:
            for p in self.expert_parameters():
                p.requires_grad_(False)

    def expert_parameters(self):
        """The expert weights of every MoE layer (frozen by ``freeze_experts``)."""
        for block in self.blocks:
            if isinstance(block.ffn, MoE):
                yield from block.ffn.experts.parameters()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialise every parameter (uses the global torch RNG).

        ======================================  =================================================
        parameter                               init
        ======================================  =================================================
        token embedding (= head when tied)      normal(0, init_std)
        learned position table                  normal(0, init_std)
        linear weights (q, k, v, w1, w3,        normal(0, init_std)
        router, untied head)
        residual output projections (attn wo,   normal(0, init_std / sqrt(2 * n_layers)) if
        FFN / expert w2)                        init_scaled_residual, else normal(0, init_std)
        linear biases                           zeros
        norm weights (RMSNorm, LayerNorm,       ones (LayerNorm bias zeros)
        qk_norm)
        experts, moe_init="dense"               as the dense FFN (rows above)
        experts, moe_init="sparse"              as "dense", then all but a random
                                                SPARSE_EXPERT_DENSITY (10%) of the entries of
                                                every expert weight matrix set to zero (exact
                                                count per matrix); biases zero
        ======================================  =================================================

        That table is ``init: normal``. The other schemes change the matrices (embeddings, linear
        and expert weights); norms and biases are as above:

        - ``trunc_normal``: the same stds, cut at +-3 std.
        - ``small``: std sqrt(2 / (5 d_model)) instead of init_std (Nguyen & Salazar 2019).
        - ``xavier``: linear and expert weights uniform Glorot (+-sqrt(6 / (fan_in + fan_out))),
          embeddings normal(0, init_std); no residual scaling.
        - ``mitchell`` (OLMo): std 1/sqrt(fan_in) cut at +-3 std, residual output projections of
          block l std 1/sqrt(2 fan_in (l + 1)), embeddings std 1/sqrt(d_model).
        """
        cfg = self.cfg
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                is_out = name.endswith(("attn.wo", ".w2"))
                self._init_matrix(module.weight, is_out, name)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                self._init_matrix(module.weight, False, name, embedding=True)
            elif isinstance(module, (RMSNorm, nn.LayerNorm)):
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, Experts):
                for pname, p in module.named_parameters():
                    if pname.startswith("b"):  # b1, b3, b2
                        nn.init.zeros_(p)
                        continue
                    self._init_matrix(p, pname == "w2", name)  # (E, out, in)
                    if cfg.moe_init == "sparse":
                        for w in p:  # each expert's (out, in) matrix
                            _sparsify_(w, SPARSE_EXPERT_DENSITY)

    def _init_matrix(self, w: torch.Tensor, is_out: bool, name: str, *,
                     embedding: bool = False) -> None:
        """One weight matrix (out, in), or a stack of them (E, out, in), by ``cfg.init`` (see
        :meth:`init_weights`)."""
        cfg, scheme = self.cfg, self.cfg.init
        fan_in = w.shape[-1]
        if scheme == "xavier":
            if embedding:
                nn.init.normal_(w, mean=0.0, std=cfg.init_std)
            else:
                for m in (w if w.dim() == 3 else [w]):
                    nn.init.xavier_uniform_(m)
            return
        if scheme == "mitchell":
            if embedding:
                std = 1 / math.sqrt(cfg.d_model)
            elif is_out:
                match = re.search(r"blocks\.(\d+)\.", name)
                layer = int(match.group(1)) if match else 0
                std = 1 / math.sqrt(2 * fan_in * (layer + 1))
            else:
                std = 1 / math.sqrt(fan_in)
            nn.init.trunc_normal_(w, mean=0.0, std=std, a=-3 * std, b=3 * std)
            return
        std = math.sqrt(2 / (5 * cfg.d_model)) if scheme == "small" else cfg.init_std
        if is_out and cfg.init_scaled_residual:
            std /= math.sqrt(2 * cfg.n_layers)
        if scheme == "trunc_normal":
            nn.init.trunc_normal_(w, mean=0.0, std=std, a=-3 * std, b=3 * std)
        else:
            nn.init.normal_(w, mean=0.0, std=std)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(idx))  # (B, T, V)

    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        """The final hidden states (B, T, C) the head turns into logits."""
        T = idx.size(1)  # idx (B, T)
        assert T <= self.max_seq_len, f"sequence length {T} > max_seq_len {self.max_seq_len}"
        x = self.embed(idx)  # (B, T, C)
        if self.pos is not None:
            x = x + self.pos(torch.arange(T, device=idx.device))  # (T, C) broadcast
        x = self.drop(x)
        rope = (self.rope_cos[:T], self.rope_sin[:T]) if self.cfg.pos_emb == "rope" else None
        for block in self.blocks:
            x = block(x, rope)
        return self.norm_f(x)

    # ---- MoE bookkeeping -------------------------------------------------------------------------

    def _moes(self) -> list[MoE]:
        return [b.ffn for b in self.blocks if isinstance(b.ffn, MoE)]

    def aux_loss(self) -> torch.Tensor:
        """Sum over layers of the router load-balancing losses of the last forward (unweighted;
        a 0-d zero tensor for dense models or before the first forward)."""
        losses = [m.aux_loss for m in self._moes() if m.aux_loss is not None]
        if not losses:
            return torch.zeros((), device=self.embed.weight.device)
        return torch.stack(losses).sum()

    def pop_expert_load(self) -> np.ndarray | None:
        """(n_layers, num_experts) float64 token-slot counts since the last pop, then reset.

        Each row sums to tokens * top_k. None for dense models.
        """
        moes = self._moes()
        if not moes:
            return None
        rows = [m.load if m.load is not None else torch.zeros(m.num_experts, dtype=torch.long)
                for m in moes]
        for m in moes:
            m.load = None
        return torch.stack([r.cpu() for r in rows]).to(torch.float64).numpy()


# --------------------------------------------------------------------------------------------------
# the training loss


# FUSED_CROSS_ENTROPY (CUDA with Triton only; performance only, same math): the forward of the
# cross-entropy as one Triton kernel that reads each row of bf16 logits once and takes one exp per
# element (blockwise online logsumexp), instead of inductor's online-softmax reduction, which takes
# two per element and ran at ~1.4 TB/s on an H100 (ours ~3 TB/s: gpt2s step +1.7%, measured with
# bench/train_throughput.py --profile). The backward is plain torch (softmax - one-hot), one
# pointwise kernel under torch.compile. Only for rows of a multiple of 128 bytes (vocab 50304,
# 8192): otherwise inductor pads the logits' row stride and copies them back for the op (cs336,
# vocab 10000: the kernel's gain eaten, +600 MB), and F.cross_entropy is used.
FUSED_CROSS_ENTROPY = True


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of (N, V) logits against (N,) class ids in [0, V), statistics in fp32:
    ``F.cross_entropy(logits.float(), targets)`` (no ignore_index: every target is a token)."""
    if (FUSED_CROSS_ENTROPY and logits.is_cuda
            and (_ce_rows is not None or (not _ce_built and not torch.compiler.is_compiling()
                                          and fused_cross_entropy_op() is not None))
            and logits.size(-1) * logits.element_size() % 128 == 0):
        loss_rows, _ = _ce_rows(logits.contiguous(), targets.contiguous())
        return loss_rows.mean()
    if not logits.is_cuda:
        return _CrossEntropyCPU.apply(logits, targets)
    return F.cross_entropy(logits.float(), targets)


class _CrossEntropyCPU(torch.autograd.Function):
    """``F.cross_entropy`` on the CPU with a shorter backward: softmax - one_hot from the saved
    log-probabilities, instead of nll_loss's zero-filled scatter + log_softmax_backward (the
    default study's CPU step is ~15% faster; same loss, gradient within 1e-11)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(logits.float(), dim=-1)
        ctx.save_for_backward(logp, targets)
        ctx.dtype = logits.dtype
        return F.nll_loss(logp, targets)  # F.cross_entropy's own forward, bit for bit

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        if getattr(ctx, "spent", False):
            raise RuntimeError("lmablate's CPU cross-entropy turns its saved log-probabilities "
                               "into the gradient in place: its backward runs once")
        ctx.spent = True
        logp, targets = ctx.saved_tensors
        n = logp.size(0)
        g = logp.exp_()  # softmax, in place: a fresh (N, V) buffer costs ~5% of the CPU step
        g[torch.arange(n), targets] -= 1.0
        return g.mul_(grad / n).to(ctx.dtype), None


LINEAR_CE_CHUNK = 128  # rows of logits per chunk in linear_cross_entropy (128 x 2048 fp32: 1 MB)


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor,
                         targets: torch.Tensor) -> torch.Tensor:
    """``cross_entropy(h @ weight.T, targets)`` for fp32 (N, C) hidden states and a (V, C) head,
    without the (N, V) logits: CPU training's loss (:func:`lmablate.engine.train.loss_function`).

    The rows go through in chunks of :data:`LINEAR_CE_CHUNK`: each chunk's logits are made,
    turned into the loss and, in the same pass while they are in cache, into the gradient
    (softmax - one_hot, one exp per logit) and multiplied out into the gradients of ``h`` and
    ``weight``, which the backward only scales by the incoming gradient (Liger-Kernel's and Cut
    Cross-Entropy's scheme). Forward and backward together: the same matmuls as
    ``F.cross_entropy(F.linear(h, weight), targets)``, one exp per logit instead of two (the
    log-softmax's and its backward's), and no (N, V) tensor. Loss and gradients equal torch's
    within fp32 rounding."""
    return _LinearCrossEntropy.apply(h, weight, targets)


_LOG2E = 1.0 / math.log(2.0)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        n, chunk = h.size(0), LINEAR_CE_CHUNK
        need_h, need_w = ctx.needs_input_grad[:2]
        grad_h = torch.empty_like(h) if need_h else None
        grad_wt = torch.zeros_like(weight.t()) if need_w else None  # (C, V): h.T @ g is faster
        # logits in base 2 (the head scaled by log2(e)), the same softmax: torch's exp2 is ~1.7x
        # faster than its exp on the CPU here (1.40 vs 2.44 ms for 2M floats, AVX2, one thread)
        w2 = weight * _LOG2E
        total = torch.zeros((), dtype=torch.float64)
        rows = torch.arange(chunk)
        for s in range(0, n, chunk):
            hc, tc = h[s:s + chunk], targets[s:s + chunk]
            z = hc @ w2.t()  # (c, V) logits * log2(e)
            r = rows[:z.size(0)]
            m = z.amax(dim=1, keepdim=True)
            z_t = z[r, tc]
            z.sub_(m).exp2_()
            sums = z.sum(dim=1, keepdim=True)  # row's sum of exp(logit - max)
            total += ((m.squeeze(1) + sums.squeeze(1).log2() - z_t).sum(dtype=torch.float64)
                      / _LOG2E)
            if need_h or need_w:
                z.div_(sums)  # softmax
                z[r, tc] -= 1.0  # d(sum of the chunk's losses) / d logits
                if need_h:
                    torch.mm(z, weight, out=grad_h[s:s + chunk])
                if need_w:
                    grad_wt.addmm_(hc.t(), z)
        ctx.save_for_backward(grad_h, None if grad_wt is None else grad_wt.t().contiguous())
        ctx.n = n
        return (total / n).to(h.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        grad_h, grad_w = ctx.saved_tensors
        scale = grad / ctx.n
        return (None if grad_h is None else grad_h * scale,
                None if grad_w is None else grad_w * scale, None)


def _make_ce_op():
    """torch.ops.lmablate.ce_rows(logits (N, V), targets (N,)) -> (loss (N,), lse (N,)) fp32, with
    its autograd formula; None without Triton or torch.library.triton_op."""
    try:
        import triton
        import triton.language as tl
        from torch.library import triton_op, wrap_triton
    except ImportError:
        return None

    @triton.jit
    def _ce_rows_kernel(x_ptr, t_ptr, loss_ptr, lse_ptr, stride, V, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        base = x_ptr + row * stride
        cols = tl.arange(0, BLOCK)
        m = float("-inf")
        d = 0.0
        for start in range(0, V, BLOCK):
            idx = start + cols
            x = tl.load(base + idx, mask=idx < V, other=float("-inf")).to(tl.float32)
            m_new = tl.maximum(m, tl.max(x, axis=0))
            d = d * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
            m = m_new
        lse = m + tl.log(d)
        target = tl.load(t_ptr + row)
        x_t = tl.load(base + target).to(tl.float32)
        tl.store(lse_ptr + row, lse)
        tl.store(loss_ptr + row, lse - x_t)

    @triton_op("lmablate::ce_rows", mutates_args=())
    def ce_rows(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, v = logits.shape
        loss = torch.empty(n, device=logits.device, dtype=torch.float32)
        lse = torch.empty(n, device=logits.device, dtype=torch.float32)
        block = 2048 if v <= 16384 else 4096
        wrap_triton(_ce_rows_kernel)[(n,)](logits, targets, loss, lse, logits.stride(0), v,
                                           BLOCK=block, num_warps=8)
        return loss, lse

    def setup_context(ctx, inputs, output):
        logits, targets = inputs
        ctx.save_for_backward(logits, targets, output[1])

    def backward(ctx, grad_loss, grad_lse):
        logits, targets, lse = ctx.saved_tensors
        cols = torch.arange(logits.size(-1), device=logits.device)
        p = torch.exp(logits.float() - lse[:, None])  # softmax
        grad = (p - (cols == targets[:, None]).float()) * grad_loss[:, None]
        return grad.to(logits.dtype), None

    ce_rows.register_autograd(backward, setup_context=setup_context)
    return ce_rows


_ce_rows = None  # torch.ops.lmablate.ce_rows once fused_cross_entropy_op() built it
_ce_built = False


def fused_cross_entropy_op():
    """The Triton cross-entropy op, built on first use (CUDA runs; train.loss_function builds it
    before compiling): importing Triton and ``torch.library.triton_op`` pulls in inductor, ~2.5 s
    that every CPU training job would otherwise pay at import. None without Triton."""
    global _ce_rows, _ce_built
    if not _ce_built:
        _ce_built = True
        try:
            _ce_rows = _make_ce_op()
        except RuntimeError:  # registered already (module reloaded): F.cross_entropy then
            _ce_rows = None
    return _ce_rows


# --------------------------------------------------------------------------------------------------
# Hugging Face Llama -> LM (the equivalence test; also a way to start from Llama-style weights)


def load_hf_llama(model: LM, hf_model) -> LM:
    """Copy the weights of a transformers ``LlamaForCausalLM`` into ``model`` (in place).

    ``model`` must be built with the matching knobs: norm=rms, norm_position=pre, pos_emb=rope,
    ffn=swiglu, bias=False, qk_norm=False, num_experts=0, and the same shape / eps / theta / tying.
    Both use the rotate_half RoPE layout, so no permutation of q/k rows is needed.
    """
    cfg, hc = model.cfg, hf_model.config
    rope_params = getattr(hc, "rope_parameters", None) or {}
    theta = rope_params.get("rope_theta", getattr(hc, "rope_theta", None))
    want = {
        "d_model": (cfg.d_model, hc.hidden_size), "n_layers": (cfg.n_layers, hc.num_hidden_layers),
        "n_heads": (cfg.n_heads, hc.num_attention_heads),
        "n_kv_heads": (cfg.kv_heads, hc.num_key_value_heads or hc.num_attention_heads),
        "d_ff": (cfg.d_ff, hc.intermediate_size), "vocab_size": (model.vocab_size, hc.vocab_size),
        "norm_eps": (cfg.norm_eps, hc.rms_norm_eps), "rope_theta": (cfg.rope_theta, theta),
        "tie_embeddings": (cfg.tie_embeddings, bool(hc.tie_word_embeddings)),
        "norm": (cfg.norm, "rms"), "norm_position": (cfg.norm_position, "pre"),
        "pos_emb": (cfg.pos_emb, "rope"), "ffn": (cfg.ffn, "swiglu"),
        "bias": (cfg.bias, bool(getattr(hc, "attention_bias", False) or
                                getattr(hc, "mlp_bias", False))),
        "qk_norm": (cfg.qk_norm, False), "num_experts": (cfg.num_experts, 0),
        "head_dim": (cfg.head_dim, getattr(hc, "head_dim", None) or cfg.head_dim),
    }
    bad = [f"{k}: LM has {a!r}, Llama has {b!r}" for k, (a, b) in want.items() if a != b]
    if bad:
        raise ValueError("load_hf_llama: mismatched knobs: " + "; ".join(bad))

    src = hf_model.state_dict()
    sd = {"embed.weight": src["model.embed_tokens.weight"],
          "norm_f.weight": src["model.norm.weight"]}
    sd["head.weight"] = sd["embed.weight"] if cfg.tie_embeddings else src["lm_head.weight"]
    names = {"attn.wq": "self_attn.q_proj", "attn.wk": "self_attn.k_proj",
             "attn.wv": "self_attn.v_proj", "attn.wo": "self_attn.o_proj",
             "ffn.w1": "mlp.gate_proj", "ffn.w3": "mlp.up_proj", "ffn.w2": "mlp.down_proj",
             "norm1": "input_layernorm", "norm2": "post_attention_layernorm"}
    for i in range(cfg.n_layers):
        for ours, theirs in names.items():
            sd[f"blocks.{i}.{ours}.weight"] = src[f"model.layers.{i}.{theirs}.weight"]
    model.load_state_dict(sd, strict=True)
    return model
