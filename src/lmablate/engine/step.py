"""The pieces of one training step, as :func:`lmablate.engine.train.train` builds them: the device,
the precision, the model with its AdamW, the windows gathered on the device and the loss compiled
with the model. The LR finder and the benchmarks build theirs with the same functions
(:func:`build_step`), so what they measure is what a run trains.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lmablate.data.tokens import Batches
from lmablate.engine.losses import cross_entropy, fused_cross_entropy_op, linear_cross_entropy
from lmablate.engine.model import LM
from lmablate.study.config import RunConfig

__all__ = ["CUDA_COMPILE_MODE", "CUDA_COMPILE_OPTIONS", "DeviceBatches", "StepParts",
           "autocast_context", "build_step", "keep_cpu_buffers", "loss_function",
           "make_optimizer", "optimizer_step", "resolve_precision", "select_device"]

# torch.compile mode of the training loss on CUDA. "reduce-overhead" replays the forward and the
# backward as CUDA graphs: small models are bound by kernel launches, not FLOPs (bench/README.md).
# It needs static shapes and no state kept across steps, so it is used only for dense models
# without grad_accum (see :func:`loss_function`); others get the default mode.
CUDA_COMPILE_MODE: str | None = "reduce-overhead"
# the compile modes that use CUDA graphs, each with its fallback without them
_GRAPH_MODES = {"reduce-overhead": None, "max-autotune": "max-autotune-no-cudagraphs"}
# extra torch._inductor.config options for that compile on CUDA, on top of the mode's own. The
# two-pass logsumexp (online_softmax off) makes the cross-entropy's forward reduction 1.6x faster
# where losses.cross_entropy falls back to F.cross_entropy (cs336 step +2.6% on an H100,
# bench/train_throughput.py's lm-noonline); it changes no other kernel of these models.
CUDA_COMPILE_OPTIONS: dict[str, Any] = {"online_softmax": False}
DEVICE_DATA_MAX_BYTES = 2 << 30  # keep the train split on the GPU (int32) when it is this small


# --------------------------------------------------------------------------------------------------
# device and precision


def select_device(requested: str = "auto") -> torch.device:
    """``auto``: CUDA when there is a GPU, else the CPU; otherwise the device named."""
    if requested != "auto":
        try:
            return torch.device(requested)
        except RuntimeError:
            from lmablate.errors import ConfigError

            raise ConfigError(f"expected auto, cpu, cuda or cuda:N, got {requested!r}",
                              key="--device") from None
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def keep_cpu_buffers() -> bool:
    """Make glibc keep freed large blocks in the heap for reuse (``mallopt``), instead of
    returning every buffer above its mmap threshold to the kernel and faulting fresh zeroed
    pages in at the next step: the default study's (1024 x 2048) fp32 logits and their gradient
    are 8 MB each, and the CPU step runs ~10-20% faster (bench/cpu_study.py).
    Costs up to the trim threshold of unreturned memory. False where there is no glibc."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 256 << 20)
                    and libc.mallopt(m_trim_threshold, 512 << 20))
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False


def resolve_precision(cfg: RunConfig, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, use a GradScaler) of ``train.precision`` on ``device``."""
    p = cfg.train.precision
    if device.type != "cuda":
        if p in ("fp16",):
            raise ValueError("precision fp16 needs a CUDA device")
        return (torch.bfloat16, False) if p == "bf16" else (None, False)
    if p == "auto":
        p = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return {"bf16": (torch.bfloat16, False), "fp16": (torch.float16, True),
            "fp32": (None, False)}[p]


def autocast_context(device: torch.device, dtype: torch.dtype | None) -> Any:
    """``torch.autocast`` to ``dtype`` on ``device``; no autocast for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# --------------------------------------------------------------------------------------------------
# optimiser


def make_optimizer(model: torch.nn.Module, cfg: RunConfig,
                   device: torch.device) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices (dim >= 2) only, not on norms or biases."""
    t = cfg.train
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": t.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    kwargs: dict[str, Any] = {"lr": t.lr, "betas": (t.beta1, t.beta2), "eps": t.eps}
    if device.type == "cuda":
        kwargs["fused"] = True
    return torch.optim.AdamW(groups, **kwargs)


def optimizer_step(model: torch.nn.Module, opt: torch.optim.Optimizer, scaler: Any,
                   grad_clip: float) -> torch.Tensor:
    """Unscale (fp16), clip the global gradient norm (0 = no clipping), step, zero the grads.
    Returns the norm before clipping."""
    if scaler is not None:
        scaler.unscale_(opt)
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(),
                                          grad_clip if grad_clip > 0 else float("inf"))
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    opt.zero_grad(set_to_none=True)
    return norm


# --------------------------------------------------------------------------------------------------
# the step's pieces on the device: batches gathered there, the loss compiled with the model


class DeviceBatches:
    """:class:`~lmablate.data.tokens.Batches` whose windows are gathered on the device.

    The window starts are the same numpy draws as ``Batches.starts`` (so a batch is still a pure
    function of (seed, index) and equal to the host path's), copied through pinned memory without
    blocking; the token split lives on the GPU as int32, so a step moves ``batch_size`` integers
    to the device instead of a (batch, seq_len + 1) matrix from pageable memory (a host sync).
    On the CPU, or when the split is larger than ``DEVICE_DATA_MAX_BYTES``, it is ``Batches.get``.
    """

    def __init__(self, batches: Batches, device: torch.device):
        self.batches, self.device = batches, device
        tokens = batches.tokens
        self.on_device = (device.type == "cuda" and batches.in_memory
                          and len(tokens) * 4 <= DEVICE_DATA_MAX_BYTES)
        if self.on_device:
            self.tokens = torch.from_numpy(np.asarray(tokens, dtype=np.int32)).to(device)
            self.offsets = torch.arange(batches.seq_len + 1, device=device)  # (T+1,)

    def get(self, index: int) -> torch.Tensor:
        """(batch_size, seq_len + 1) int64 windows of batch ``index``, on the device."""
        if not self.on_device:
            return torch.from_numpy(self.batches.get(index)).to(self.device, non_blocking=True)
        starts = torch.from_numpy(self.batches.starts(index)).pin_memory()
        starts = starts.to(self.device, non_blocking=True)  # (B,)
        return self.tokens[starts[:, None] + self.offsets].long()  # (B, T+1)


def loss_function(model: LM, cfg: RunConfig, device: torch.device,
                  autocast: torch.dtype | None) -> tuple[Any, bool]:
    """(fn, uses CUDA graphs): ``fn(windows) -> (lm loss, loss to backpropagate)``.

    Compiled (CUDA): the cross-entropy sits inside the compiled graph with the model, so inductor
    fuses the fp32 upcast of the logits into the log-softmax instead of writing a (tokens, vocab)
    fp32 copy. Eager fp32 (the CPU): the head and the loss are one chunked op
    (:func:`lmablate.engine.losses.linear_cross_entropy`) that never holds all the logits.
    """
    # F.cross_entropy in fp32, its Triton forward on CUDA (built here, not while compiling)
    if device.type == "cuda":
        fused_cross_entropy_op()
    t = cfg.train
    accum = t.grad_accum
    compiled = t.compile == "true" or (t.compile == "auto" and device.type == "cuda")
    chunked = not compiled and device.type == "cpu" and autocast is None  # eager fp32 CPU

    def fn(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        targets = w[:, 1:].reshape(-1)
        with autocast_context(device, autocast):
            if chunked:  # head and loss as one chunked op, no (tokens, vocab) logits
                h = model.hidden(w[:, :-1])  # (B, T, C)
                loss = linear_cross_entropy(h.reshape(-1, h.size(-1)), model.head.weight, targets)
            else:
                logits = model(w[:, :-1])  # (B, T, V)
                loss = cross_entropy(logits.view(-1, logits.size(-1)), targets)
            total = (loss + cfg.model.router_aux_loss * model.aux_loss()) / accum
        return loss, total

    if not compiled:
        return fn, False
    mode = CUDA_COMPILE_MODE if device.type == "cuda" else None
    if mode in _GRAPH_MODES and (cfg.model.num_experts or accum > 1):
        mode = _GRAPH_MODES[mode]  # MoE load counters and accumulated grads outlive a replay
    if device.type == "cuda" and CUDA_COMPILE_OPTIONS:  # torch.compile takes mode or options
        import torch._inductor as inductor
        from torch._inductor import config as inductor_config

        known = {k: v for k, v in CUDA_COMPILE_OPTIONS.items() if hasattr(inductor_config, k)}
        opts = {**(inductor.list_mode_options(mode) if mode else {}), **known}  # newer torch:
        # an option it no longer has is dropped, not an error
        return torch.compile(fn, options=opts), mode in _GRAPH_MODES
    return torch.compile(fn, mode=mode), mode in _GRAPH_MODES


# --------------------------------------------------------------------------------------------------
# all of it at once


@dataclass
class StepParts:
    """The model and what trains it: ``loss(windows) -> (lm loss, loss to backpropagate)``,
    ``graphs``: whether ``loss`` replays CUDA graphs (mark each step's begin)."""

    model: LM
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    autocast: torch.dtype | None
    loss: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    graphs: bool


def build_step(cfg: RunConfig, vocab_rows: int, max_len: int, device: torch.device) -> StepParts:
    """The run's model (initialised from ``train.seed``, ``vocab_rows`` embedding rows, already
    padded), its AdamW, GradScaler (fp16) and loss, on ``device``."""
    autocast, use_scaler = resolve_precision(cfg, device)
    torch.manual_seed(cfg.train.seed)
    model = LM(cfg.model, vocab_rows, max_seq_len=max_len).to(device)
    opt = make_optimizer(model, cfg, device)
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    loss, graphs = loss_function(model, cfg, device, autocast)
    return StepParts(model, opt, scaler, autocast, loss, graphs)
