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
- MoE (``num_experts > 0``, "SoME"): every block's FFN becomes a top-k router +
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

__all__ = ["ACTIVATIONS", "FFN", "LM", "SPARSE_EXPERT_DENSITY", "Experts", "MoE", "RMSNorm",
           "apply_rope", "causal_attention"]

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


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     dropout_p: float = 0.0) -> torch.Tensor:
    """Causal SDPA of q (B, nh, T, hs) over k, v (B, nkv, T, hs); with nkv < nh each k/v head
    serves nh / nkv query heads (grouped-query attention: SDPA's ``enable_gqa`` from torch 2.5,
    k/v repeated before)."""
    gqa = k.size(1) != q.size(1)
    if gqa and not _SDPA_GQA:
        rep = q.size(1) // k.size(1)
        k = k.repeat_interleave(rep, dim=1)  # (B, nh, T, hs)
        v = v.repeat_interleave(rep, dim=1)
    extra = {"enable_gqa": True} if gqa and _SDPA_GQA else {}
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p, **extra)


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
        q, k, v = self.wq(x), self.wk(x), self.wv(x)
        q = q.view(B, T, self.n_heads, self.head_dim)  # (B, T, nh, hs)
        k = k.view(B, T, self.n_kv_heads, self.head_dim)  # (B, T, nkv, hs)
        v = v.view(B, T, self.n_kv_heads, self.head_dim)  # (B, T, nkv, hs)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, nh|nkv, T, hs)
        y = causal_attention(q, k, v, self.attn_dropout if self.training else 0.0)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, nh * hs)
        return self.resid_drop(self.wo(y))


# the FFN's activation per ``cfg.ffn`` (the gated kinds' gate activation)
ACTIVATIONS = {"swiglu": F.silu, "geglu": F.gelu, "silu": F.silu, "gelu": F.gelu,
               "relu": F.relu, "relu2": lambda h: F.relu(h).square()}


class FFN(nn.Module):
    """Gated ``w2(act(w1 x) * w3 x)`` or plain ``w2(act(w1 x))``, then residual dropout."""

    def __init__(self, cfg: ModelConfig, d_ff: int, dropout: float):
        super().__init__()
        self.act = ACTIVATIONS[cfg.ffn]
        self.w1 = nn.Linear(cfg.d_model, d_ff, bias=cfg.bias)  # gate (gated) / up (plain)
        self.w3 = nn.Linear(cfg.d_model, d_ff, bias=cfg.bias) if cfg.gated else None  # up
        self.w2 = nn.Linear(d_ff, cfg.d_model, bias=cfg.bias)  # down
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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
        self.act = ACTIVATIONS[cfg.ffn]
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
    """Token-choice top-k mixture of FFN experts ("SoME").

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
