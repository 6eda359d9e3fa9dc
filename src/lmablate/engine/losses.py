"""The training losses: three implementations of one mean next-token cross-entropy.

- :func:`cross_entropy`: ``F.cross_entropy(logits.float(), targets)`` on (N, V) logits. On CUDA
  with Triton its forward is one kernel (:func:`fused_cross_entropy_op`) for 128-byte rows; on the
  CPU an autograd function with a shorter backward (``_CrossEntropyCPU``).
- :func:`linear_cross_entropy`: the head matmul and the loss as one chunked op that never holds
  the (N, V) logits (eager fp32 CPU training).

Every one computes the same loss as ``F.cross_entropy`` (tests/test_perf_paths.py); the choice
among them is :func:`lmablate.engine.step.loss_function`'s.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["FUSED_CROSS_ENTROPY", "LINEAR_CE_CHUNK", "cross_entropy", "fused_cross_entropy_op",
           "linear_cross_entropy"]


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
    without the (N, V) logits: CPU training's loss (:func:`lmablate.engine.step.loss_function`).

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
    """The Triton cross-entropy op, built on first use (CUDA runs; step.loss_function builds it
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
