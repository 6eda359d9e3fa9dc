"""Launch settings of lmablate's fused head + loss kernel (``torch.ops.lmablate.linear_ce``), timed
on the logits of the benchmark shapes against the unfused pair it replaces (the head's matmul, the
Triton loss forward ``ce_rows`` and the backward's pointwise softmax - one-hot), CUDA only.

    PYTHONPATH=src python3 bench/lce_tune.py
"""

from __future__ import annotations

import itertools
import sys

import torch

from lmablate import model as lm_model

SHAPES = {"tiny5m": (32768, 160, 8192), "cs336": (32768, 512, 10048), "gpt2s": (32768, 768, 50304)}


def timed(fn, reps: int = 20) -> float:
    """Median ms of fn() over reps runs (CUDA events)."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[len(times) // 2]


def main() -> int:
    lm_model.fused_cross_entropy_op()
    lce, ce_rows = torch.ops.lmablate.linear_ce, torch.ops.lmablate.ce_rows
    for name, (n, c, v) in SHAPES.items():
        g = torch.Generator(device="cuda").manual_seed(0)
        h = torch.randn(n, c, device="cuda", generator=g).to(torch.bfloat16)
        w = (torch.randn(v, c, device="cuda", generator=g) * 0.05).to(torch.bfloat16)
        t = torch.randint(0, v, (n,), device="cuda", generator=g)
        mm = timed(lambda: torch.mm(h, w.t()))
        logits = torch.mm(h, w.t())
        cols = torch.arange(v, device="cuda")

        def softmax_minus_onehot(x, lse, t):  # the unfused backward, one pointwise kernel compiled
            return ((torch.exp(x.float() - lse[:, None]) - (cols == t[:, None]).float())
                    * (1.0 / n)).to(x.dtype)

        bwd = torch.compile(softmax_minus_onehot)
        _, lse = ce_rows(logits, t)
        fwd_ms = timed(lambda: ce_rows(logits, t))
        bwd_ms = timed(lambda: bwd(logits, lse, t))
        print(f"{name}: head matmul {mm:.3f} ms; unfused: loss forward {fwd_ms:.3f} ms + backward "
              f"pointwise {bwd_ms:.3f} ms = {fwd_ms + bwd_ms:.3f} ms", flush=True)
        gb = n * v * 2 / 1e9
        for rows, block, warps in itertools.product((1, 2, 4), (1024, 2048, 4096), (4, 8, 16)):
            if rows * block > 8192:
                continue
            lm_model.LINEAR_CE_ROWS, lm_model.LINEAR_CE_BLOCK = rows, block
            lm_model.LINEAR_CE_WARPS = warps
            ms = timed(lambda: lce(h, w, t)) - mm
            print(f"  rows {rows} block {block:5d} warps {warps:2d}: {ms:.3f} ms (kernel; "
                  f"{2 * gb / ms:.2f} TB/s for one read + one write)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
