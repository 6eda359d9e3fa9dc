"""Causal attention forward + backward per SDPA backend and q/k/v layout, on the benchmark shapes.

``bshd``: q/k/v made as (B, T, nh, hs) and transposed to (B, nh, T, hs) (lmablate's layout);
``bhsd``: contiguous (B, nh, T, hs) (transformers' layout after RoPE). Backends: cuDNN,
FlashAttention 2, memory-efficient, and ``flex`` (``flex_attention`` compiled, causal block
mask). Times are the median of ``triton.testing.do_bench`` (ms), forward + backward of one
layer's attention.

    PYTHONPATH=src python3 bench/attn_backends.py [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# name: (batch, heads, seq, head_dim), from train_throughput.SHAPES (+ the fused sweep's K=8)
SHAPES = {"tiny5m": (64, 10, 512, 16), "cs336": (128, 16, 256, 32), "gpt2s": (32, 12, 1024, 64),
          "tiny5m-k8": (512, 10, 512, 16)}


def main(argv: list[str] | None = None) -> int:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from triton.testing import do_bench

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--no-flex", action="store_true")
    args = ap.parse_args(argv)
    backends = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION}
    flex = None
    if not args.no_flex:
        try:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention
            flex = torch.compile(flex_attention)
        except Exception as e:  # noqa: BLE001
            print("no flex_attention:", e)
    rows = []
    for name, (B, H, T, D) in SHAPES.items():
        g = torch.Generator(device="cuda").manual_seed(0)
        for layout in ("bshd", "bhsd"):
            shape = (B, T, H, D) if layout == "bshd" else (B, H, T, D)
            qkv = [torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=g)
                   .requires_grad_() for _ in range(3)]
            dy = torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16, generator=g)

            def views(layout=layout, qkv=qkv):
                return [t.transpose(1, 2) if layout == "bshd" else t for t in qkv]

            ref = None
            for bname, be in list(backends.items()) + [("flex", None)]:
                if be is None and (flex is None or layout == "bshd"):
                    continue
                try:
                    if be is None:
                        mask = create_block_mask(lambda b, h, q, k: q >= k, None, None, T, T)

                        def run(mask=mask, dy=dy, views=views):
                            y = flex(*views(), block_mask=mask)
                            y.backward(dy)
                            return y
                    else:
                        def run(be=be, dy=dy, views=views):
                            with sdpa_kernel(be):
                                y = F.scaled_dot_product_attention(*views(), is_causal=True)
                            y.backward(dy)
                            return y
                    y = run().detach().float()
                    for t in qkv:
                        t.grad = None
                    if ref is None:
                        ref = y
                    err = float((y - ref).norm() / ref.norm())
                    ms = do_bench(run, warmup=50, rep=200, return_mode="median")
                    rows.append({"shape": name, "layout": layout, "backend": bname, "ms": ms,
                                 "rel_err_vs_first": err})
                except Exception as e:  # noqa: BLE001
                    rows.append({"shape": name, "layout": layout, "backend": bname,
                                 "error": str(e)[:200]})
                r = rows[-1]
                what = (f"{r['ms']:.3f} ms  err {r['rel_err_vs_first']:.1e}" if "ms" in r
                        else r["error"])
                print(f"{name:10s} {layout} {bname:9s} " + what, flush=True)
    if args.out:
        args.out.write_text(json.dumps({"benchmark": "attn_backends", "torch": torch.__version__,
                                        "device_name": torch.cuda.get_device_name(),
                                        "shapes": SHAPES, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
