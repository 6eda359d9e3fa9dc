"""K same-shape sweep members trained as one batched model (horizontal fusion).

A small LM leaves an H100 idle: each kernel is too small to fill the chip and the step is bound by
kernel launches. Members of a sweep that differ only in learning rate, schedule, weight decay,
clip or seed have the same shapes, so their parameters can be stacked along a leading member axis
and every matmul of the K members run as one batched matmul (HFTA, Wang et al. MLSys 2021; the
PyTorch model-ensembling tutorial's ``stack_module_state`` + ``vmap`` does the same with vmap):
K x the work per launch, the same number of launches.

Each member computes exactly what it would alone:

- parameters: ``torch.manual_seed(member seed); LM(cfg)``, then stacked, so the init is the one
  :func:`lmablate.engine.train.train` draws;
- data: member k reads batch ``i`` of its own ``Batches(seed_k)``;
- loss: the sum of the members' mean cross-entropies, so each member's gradient is its own;
- clipping: each member's global grad norm, clipped to its own ``grad_clip`` (as
  ``clip_grad_norm_``);
- AdamW: ``torch.optim.AdamW`` itself (fused on CUDA, as train()), one parameter group per
  (member, decay class), each group one contiguous row of the flat buffer below: per-member
  learning rate (every step's :func:`lmablate.engine.schedule.get_lr`) and weight decay, decay on
  matrices
  only.

Storage: all parameters live in one flat ``(K, P)`` fp32 buffer, member-major (member k's P
values contiguous, its matrices first, then its vectors); every stacked parameter ``(K, ...)`` is
a view of it, and so is its gradient (a ``(K, P)`` buffer that backward accumulates into). The
clipping and the optimiser touch 2K long rows instead of hundreds of small tensors, so nothing but
the model's loss is compiled.

``tests/test_fused.py`` trains K members together and each alone with ``train()`` and compares the
loss curves and the final weights. Supported: dense models, RMSNorm or no norm, pre or post norm,
any position embedding / FFN / tying / qk_norm / GQA, no bias, no dropout, grad_accum 1.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmablate.data.tokens import Batches
from lmablate.engine.model import ACTIVATIONS, LM, apply_rope, causal_attention
from lmablate.engine.schedule import Plan, get_lr, make_plan
from lmablate.errors import ConfigError
from lmablate.study.config import RunConfig

__all__ = ["FusedBatches", "FusedLM", "FusedTrainer", "check_fusable", "padded_vocab"]

SHARED_TRAIN_KEYS = ("batch_size", "seq_len", "grad_accum", "precision", "beta1", "beta2", "eps",
                     "compile")


def check_fusable(cfgs: Sequence[RunConfig], train_tokens: int) -> list[Plan]:
    """The members' plans; ConfigError if they cannot be trained as one fused model."""
    if not cfgs:
        raise ConfigError("no runs to fuse", key="runs")
    first = cfgs[0]
    m = first.model
    unsupported = {"num_experts": m.num_experts != 0, "bias": m.bias, "dropout": m.dropout > 0,
                   "norm": m.norm == "layer", "train.grad_accum": first.train.grad_accum != 1,
                   "train.precision": first.train.precision == "fp16"}
    for key, bad in unsupported.items():
        if bad:
            raise ConfigError("fused members support dense models without bias, dropout, "
                              "LayerNorm, grad_accum or fp16", key=key)
    plans = [make_plan(c, train_tokens) for c in cfgs]
    for i, c in enumerate(cfgs):
        if c.model != m:
            raise ConfigError(f"member {i} has another model config than member 0; fused "
                              "members share the model", key="model")
        for key in SHARED_TRAIN_KEYS:
            if getattr(c.train, key) != getattr(first.train, key):
                raise ConfigError(f"member {i} differs from member 0; fused members share it",
                                  key=f"train.{key}")
        if plans[i].total_steps != plans[0].total_steps:
            raise ConfigError(f"member {i} trains {plans[i].total_steps} steps, member 0 "
                              f"{plans[0].total_steps}; fused members share the budget",
                              key="train.tokens")
    return plans


class FusedLM(nn.Module):
    """K :class:`~lmablate.engine.model.LM` members with stacked parameters, ``(K, B, T) -> (K, B,
    T, V)``.

    Parameter ``p`` of member k is ``self.stacked[name][k]`` under ``LM``'s own name (dots
    replaced by ``/`` in the ParameterDict); a tied head is the embedding. Every parameter and
    its ``.grad`` are views of ``self.flat`` / ``self.flat_grad`` (K, P), so build the model on
    its device (``device=``) and never move it with ``.to()`` (that would copy the views apart).
    The first ``self.n_decay`` columns hold the matrices (weight decay), the rest the vectors.
    """

    def __init__(self, members: Sequence[LM], device: torch.device | str | None = None):
        super().__init__()
        first = members[0]
        self.cfg, self.vocab_size, self.k = first.cfg, first.vocab_size, len(members)
        names = [n for n, _ in first.named_parameters()]  # tied head: listed once
        shapes = {n: tuple(first.get_parameter(n).shape) for n in names}
        self.names = [n for n in names if len(shapes[n]) >= 2] + \
            [n for n in names if len(shapes[n]) < 2]  # matrices (decayed) first
        self.n_decay = sum(math.prod(shapes[n]) for n in names if len(shapes[n]) >= 2)
        self.flat = torch.cat([torch.stack([m.get_parameter(n).detach().reshape(-1)
                                            for m in members]) for n in self.names],
                              dim=1).to(device)  # (K, P)
        self.flat_grad = torch.zeros_like(self.flat)
        params, offset = {}, 0
        for n in self.names:
            size = math.prod(shapes[n])
            params[n.replace(".", "/")] = p = nn.Parameter(
                self.flat[:, offset:offset + size].view(self.k, *shapes[n]))
            p.grad = self.flat_grad[:, offset:offset + size].view(self.k, *shapes[n])
            offset += size
        self.stacked = nn.ParameterDict(params)
        if self.cfg.pos_emb == "rope":
            self.register_buffer("rope_cos", first.rope_cos.clone().to(device), persistent=False)
            self.register_buffer("rope_sin", first.rope_sin.clone().to(device), persistent=False)

    def p(self, name: str) -> torch.Tensor:
        return self.stacked[name.replace(".", "/")]

    def member_state_dict(self, k: int) -> dict[str, torch.Tensor]:
        """Member k's weights as an ``LM`` state dict (``LM.load_state_dict(strict=True)``)."""
        sd = {n: self.p(n)[k].detach().clone() for n in self.names}
        if self.cfg.tie_embeddings:
            sd["head.weight"] = sd["embed.weight"]
        return sd

    # ---- pieces, each on a leading member axis ---------------------------------------------------

    @staticmethod
    def _linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """x (K, ..., in) @ w (K, out, in)^T -> (K, ..., out), one batched matmul."""
        K, shape = x.size(0), x.shape[1:-1]
        y = torch.bmm(x.reshape(K, -1, x.size(-1)), w.transpose(1, 2))
        return y.view(K, *shape, w.size(1))

    def _norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        if self.cfg.norm == "none":
            return x
        w = self.p(name)  # (K, dim)
        y = F.rms_norm(x.float(), (x.size(-1),), eps=self.cfg.norm_eps).to(x.dtype)
        return y * w.to(x.dtype).view(w.size(0), *([1] * (x.dim() - 2)), w.size(1))

    def _attn(self, x: torch.Tensor, i: int, rope) -> torch.Tensor:
        cfg, pre = self.cfg, f"blocks.{i}.attn."
        K, B, T, C = x.shape
        nh, nkv, hs = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        q, k, v = (self._linear(x, self.p(pre + f"w{c}.weight")) for c in "qkv")
        q, k, v = q.view(K, B, T, nh, hs), k.view(K, B, T, nkv, hs), v.view(K, B, T, nkv, hs)
        if cfg.qk_norm:
            q, k = self._norm(q, pre + "q_norm.weight"), self._norm(k, pre + "k_norm.weight")
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        q, k, v = (t.reshape(K * B, T, -1, hs).transpose(1, 2) for t in (q, k, v))  # (KB, h, T, hs)
        y = causal_attention(q, k, v)  # (KB, nh, T, hs)
        y = y.transpose(1, 2).reshape(K, B, T, C)
        return self._linear(y, self.p(pre + "wo.weight"))

    def _ffn(self, x: torch.Tensor, i: int) -> torch.Tensor:
        pre = f"blocks.{i}.ffn."
        h = ACTIVATIONS[self.cfg.ffn](self._linear(x, self.p(pre + "w1.weight")))
        if self.cfg.gated:
            h = h * self._linear(x, self.p(pre + "w3.weight"))
        return self._linear(h, self.p(pre + "w2.weight"))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        K, _, T = idx.shape  # idx (K, B, T)
        V = self.vocab_size
        emb = self.p("embed.weight")  # (K, V, C)
        offsets = torch.arange(K, device=idx.device).view(K, 1, 1) * V
        x = F.embedding(idx + offsets, emb.reshape(K * V, -1))  # (K, B, T, C)
        if self.cfg.pos_emb == "learned":
            x = x + self.p("pos.weight")[:, None, :T]  # (K, 1, T, C)
        rope = (self.rope_cos[:T], self.rope_sin[:T]) if self.cfg.pos_emb == "rope" else None
        for i in range(self.cfg.n_layers):
            b = f"blocks.{i}."
            if self.cfg.norm_position == "pre":
                x = x + self._attn(self._norm(x, b + "norm1.weight"), i, rope)
                x = x + self._ffn(self._norm(x, b + "norm2.weight"), i)
            else:
                x = self._norm(x + self._attn(x, i, rope), b + "norm1.weight")
                x = self._norm(x + self._ffn(x, i), b + "norm2.weight")
        if self.cfg.norm_position == "pre":
            x = self._norm(x, "norm_f.weight")
        head = emb if self.cfg.tie_embeddings else self.p("head.weight")
        return self._linear(x, head)  # (K, B, T, V)

    def losses(self, windows: torch.Tensor) -> torch.Tensor:
        """(K,) mean next-token cross-entropy of each member on windows (K, B, T + 1)."""
        logits = self(windows[..., :-1])
        K, V = logits.size(0), logits.size(-1)
        ce = F.cross_entropy(logits.float().reshape(-1, V), windows[..., 1:].reshape(-1),
                             reduction="none")
        return ce.view(K, -1).mean(dim=1)


class FusedBatches:
    """Batch i of every member, (K, B, T + 1) int64 on the device; member k's from its seed.

    On CUDA the train split lives on the GPU and only the (K, B) window starts travel.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, seeds: Sequence[int],
                 device: torch.device):
        self.members = [Batches(tokens, seq_len, batch_size, s) for s in seeds]
        self.device = device
        self.on_device = device.type == "cuda"
        if self.on_device:
            self.tokens = torch.from_numpy(np.asarray(tokens, dtype=np.int32)).to(device)
            self.offsets = torch.arange(seq_len + 1, device=device)

    def get(self, index: int) -> torch.Tensor:
        if not self.on_device:
            return torch.from_numpy(np.stack([b.get(index) for b in self.members]))
        starts = torch.from_numpy(np.stack([b.starts(index) for b in self.members])).pin_memory()
        starts = starts.to(self.device, non_blocking=True)  # (K, B)
        return self.tokens[starts[..., None] + self.offsets].long()  # (K, B, T + 1)


class FusedTrainer:
    """Train K fusable runs (:func:`check_fusable`) as one model, step by step.

    ``step(windows)`` does one optimiser step of every member and returns their (K,) losses as a
    device tensor (no host sync). On CUDA with compile the loss is compiled with
    ``mode="reduce-overhead"`` (CUDA graphs of forward and backward); clipping and AdamW run
    eager on the flat rows (a handful of kernels, nothing to compile).
    """

    def __init__(self, cfgs: Sequence[RunConfig], vocab_size: int, train_tokens: int,
                 device: torch.device | str, compile: bool | None = None):
        self.plans = check_fusable(cfgs, train_tokens)
        self.cfgs, self.device = list(cfgs), torch.device(device)
        t = cfgs[0].train
        max_len = cfgs[0].model.context_length or t.seq_len
        members = []
        for c in cfgs:
            torch.manual_seed(c.train.seed)  # the init train() draws for this run
            members.append(LM(c.model, vocab_size, max_seq_len=max_len))
        self.model = FusedLM(members, device=self.device)
        del members
        cuda = self.device.type == "cuda"
        self.autocast = torch.bfloat16 if (t.precision == "bf16" or (
            t.precision == "auto" and cuda)) else None
        self.betas, self.eps, self.fused_adamw = (t.beta1, t.beta2), t.eps, cuda
        self._set_members(cfgs, self.plans)
        compile = (t.compile == "true" or (t.compile == "auto" and cuda)) if compile is None \
            else compile
        self.graphs = compile and cuda
        self._loss = torch.compile(self._losses, mode="reduce-overhead" if cuda else None) \
            if compile else self._losses

    def _set_members(self, cfgs: Sequence[RunConfig], plans: list[Plan]) -> None:
        """Per-member learning rates, clip and a fresh AdamW (one group per member and decay)."""
        flat, grad, nd = self.model.flat, self.model.flat_grad, self.model.n_decay
        self.lr_table = [[get_lr(s, c, p) for c, p in zip(cfgs, plans)]
                         for s in range(plans[0].total_steps)]
        groups, self.group_member = [], []
        for k, c in enumerate(cfgs):
            for cols, wd in ((slice(0, nd), c.train.weight_decay), (slice(nd, None), 0.0)):
                row = flat[k, cols]  # a view: the optimiser updates the model's parameters
                if row.numel():
                    row.grad = grad[k, cols]
                    groups.append({"params": [row], "weight_decay": wd})
                    self.group_member.append(k)
        self.opt = torch.optim.AdamW(groups, lr=0.0, betas=self.betas, eps=self.eps,
                                     **({"fused": True} if self.fused_adamw else {}))
        self.clip = torch.tensor([c.train.grad_clip for c in cfgs], device=self.device)
        self.steps_done = 0

    @property
    def total_steps(self) -> int:
        return self.plans[0].total_steps

    def _losses(self, windows: torch.Tensor) -> torch.Tensor:
        ctx = torch.autocast(self.device.type, dtype=self.autocast) if self.autocast else \
            torch.autocast(self.device.type, enabled=False)
        with ctx:
            return self.model.losses(windows)

    def step(self, windows: torch.Tensor) -> torch.Tensor:
        """One step of every member on windows (K, B, T + 1); returns the (K,) losses."""
        if self.graphs:
            torch.compiler.cudagraph_mark_step_begin()
        losses = self._loss(windows)
        with warnings.catch_warnings():  # strided grads of strided views: by design
            warnings.filterwarnings("ignore", message="grad and param do not obey")
            losses.sum().backward()  # accumulates into the views of model.flat_grad
        losses = losses.detach().clone()  # a graph output is overwritten by the next replay
        self.clip_and_update()
        return losses

    @torch.no_grad()
    def clip_and_update(self) -> torch.Tensor:
        """Clip each member's gradient, one AdamW step, zero the gradients; the (K,) norms.

        As ``clip_grad_norm_``: grads times ``min(1, clip / (norm + 1e-6))``; clip 0: none.
        """
        g = self.model.flat_grad  # (K, P)
        norms = g.pow(2).sum(dim=1).sqrt()  # (K,)
        coef = torch.where(self.clip > 0, (self.clip / (norms + 1e-6)).clamp(max=1.0),
                           torch.ones_like(self.clip))
        g.mul_(coef[:, None])
        lrs = self.lr_table[self.steps_done]
        for group, k in zip(self.opt.param_groups, self.group_member):
            group["lr"] = lrs[k]
        self.opt.step()
        g.zero_()
        self.steps_done += 1
        return norms

    def member_state_dict(self, k: int) -> dict[str, torch.Tensor]:
        return {n: v.cpu() for n, v in self.model.member_state_dict(k).items()}

    def reset(self, cfgs: Sequence[RunConfig], train_tokens: int) -> None:
        """Start K new members (same model and budget) in place: the compiled step is reused.

        Their init, learning rates, weight decay and clip are those of ``cfgs``; optimiser state
        starts over. A sweep of more than K runs trains group after group in one trainer.
        """
        plans = check_fusable(cfgs, train_tokens)
        if len(cfgs) != len(self.cfgs) or cfgs[0].model != self.cfgs[0].model or \
                plans[0].total_steps != self.total_steps:
            raise ConfigError("reset needs as many members with the same model and budget",
                              key="runs")
        vocab = self.model.vocab_size
        max_len = cfgs[0].model.context_length or cfgs[0].train.seq_len
        with torch.no_grad():
            for k, c in enumerate(cfgs):
                torch.manual_seed(c.train.seed)
                lm = LM(c.model, vocab, max_seq_len=max_len)
                for n in self.model.names:
                    self.model.p(n)[k].copy_(lm.get_parameter(n))
            self.model.flat_grad.zero_()
        self._set_members(cfgs, plans)
        self.cfgs, self.plans = list(cfgs), plans


def padded_vocab(cfg: RunConfig, vocab: int) -> int:
    """The embedding rows train() uses for a tokenizer of ``vocab`` ids."""
    return cfg.model.padded_vocab(vocab)
