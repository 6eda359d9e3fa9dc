"""lmablate.engine.losses.cross_entropy's Triton forward (FUSED_CROSS_ENTROPY) against
F.cross_entropy on fp32-upcast bf16 logits: loss and logits gradient, eager and under
torch.compile (CUDA only).

    PYTHONPATH=src python3 bench/ce_check.py
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from lmablate.engine import losses


def check(n: int, v: int, compiled: bool) -> bool:
    g = torch.Generator(device="cuda").manual_seed(0)
    logits = (torch.randn(n, v, device="cuda", generator=g) * 3).to(torch.bfloat16)
    targets = torch.randint(0, v, (n,), device="cuda", generator=g)

    def ours(x, t):
        return losses.cross_entropy(x, t)

    def ref(x, t):
        return F.cross_entropy(x.float(), t)

    losses.FUSED_CROSS_ENTROPY = True
    f_ours = torch.compile(ours) if compiled else ours
    f_ref = torch.compile(ref) if compiled else ref
    out = []
    for fn in (f_ours, f_ref):
        x = logits.clone().requires_grad_(True)
        loss = fn(x, targets)
        loss.backward()
        out.append((loss.detach(), x.grad.float()))
    (l1, g1), (l2, g2) = out
    rel = abs(l1.item() - l2.item()) / abs(l2.item())
    gerr = (g1 - g2).abs().max().item() / g2.abs().max().item()
    ok = rel < 1e-5 and gerr < 1e-2
    print(f"n={n} v={v} compiled={compiled}: loss {l1.item():.6f} vs {l2.item():.6f} "
          f"(rel {rel:.1e}); grad max |diff| / max |grad| {gerr:.1e}  {'OK' if ok else 'FAIL'}",
          flush=True)
    return ok


def main() -> int:
    assert losses.fused_cross_entropy_op() is not None, "no Triton op"
    ok = all([check(4096, 10000, False), check(2048, 50304, False), check(2050, 10000, True)])
    print("all OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
