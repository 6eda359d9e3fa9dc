"""Which LR range-test suggestion predicts the best learning rate of real runs?

For one run of a study: the range test (``lmablate.engine.lrfind.lr_range_test``, 100 steps, as
``lmablate lr-find`` runs it) at each seed, then short real trainings (the study's schedule,
warmup and weight decay; ``--train-tokens`` tokens) at every suggestion, at the configured LR
and on a log grid around them. Prints and writes a JSON with, per seed and LR, the final
validation loss, and for each suggestion rule how far its pick was from the best LR of the grid.

    cd <dir with the token store> && python bench/lr_find_check.py config.yaml baseline \
        --train-tokens 200000 --seeds 0 1 --out bench/results/DATE-cpu-lr_find_check.json

Training threads default to 1 (the CPU runs are small: a few seconds to a minute each).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

RULES = ("lr_valley", "lr_steepest", "lr_min_loss", "lr_min_div10", "configured_lr")


def _machine() -> str:
    """The CPU model and count, e.g. ``AMD EPYC, 2 CPUs``."""
    import os

    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} CPUs"


def _train(run: dict, tokens: Path, lr: float, n_tokens: int, threads: int) -> dict:
    """Train ``run`` at ``lr`` for ``n_tokens`` tokens in a scratch dir; its final.json."""
    from lmablate.engine.train import train
    from lmablate.study.config import SECTIONS

    cfg = {k: copy.deepcopy(v) for k, v in run.items() if k in SECTIONS}
    cfg["train"]["lr"] = lr
    cfg["train"]["tokens"] = n_tokens
    cfg["train"]["eval_every"] = max(1, n_tokens // (cfg["train"]["batch_size"]
                                                     * cfg["train"]["seq_len"]))
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        final = train(cfg, tokens, d, device="cpu", threads=threads, progress=False,
                      resume=False)
        final["wall"] = time.perf_counter() - t0
    return final


def main(argv: list[str] | None = None) -> int:
    """Run the check; print one line per training and the verdict per rule."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("study", type=Path)
    p.add_argument("variant")
    p.add_argument("--config", "-C", action="append", default=[], metavar="KEY=VALUE",
                   help="study overrides, as for lmablate plan (another shape)")
    p.add_argument("--tokens-file", type=Path, default=None)
    p.add_argument("--train-tokens", type=int, default=200_000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--grid", type=float, nargs="*",
                   default=[1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2, 6.4e-2])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    import torch

    from lmablate.__main__ import _overrides, _pick_run, _tokens_file
    from lmablate.engine.lrfind import lr_range_test
    from lmablate.study.load import read_study

    torch.set_num_threads(args.threads)
    study = read_study(args.study, _overrides(args.config))
    base = _pick_run(study, args.variant, args.study)
    tokens = _tokens_file(base, args.tokens_file)
    result = {"study": str(args.study), "variant": args.variant, "overrides": args.config,
              "run_id": base.run_id, "train_tokens": args.train_tokens,
              "date": dt.date.today().isoformat(), "machine": _machine(), "threads": args.threads,
              "seeds": {}}
    for seed in args.seeds:
        run = base.to_dict()
        run["train"]["seed"] = seed
        found = lr_range_test(run, tokens, None, device="cpu", threads=args.threads)
        picks = {k: found[k] for k in ("lr_valley", "lr_steepest", "lr_min_loss")}
        picks["lr_min_div10"] = found["lr_min_loss"] / 10
        picks["configured_lr"] = found["configured_lr"]
        lrs = sorted({*args.grid, *picks.values()})
        losses = {}
        for lr in lrs:
            final = _train(run, tokens, lr, args.train_tokens, args.threads)
            losses[lr] = final.get("val_loss") if final.get("status") == "completed" \
                else math.inf
            print(f"seed {seed} lr {lr:.4g}: val loss {losses[lr]:.4f} "
                  f"({final['wall']:.0f} s)", flush=True)
        best = min(losses, key=lambda k: losses[k])
        result["seeds"][str(seed)] = {
            "suggestions": picks, "range_test_steps": found["steps"],
            "val_loss": {f"{k:.6g}": v for k, v in losses.items()}, "best_lr": best,
            "best_val_loss": losses[best],
            "rules": {r: {"lr": picks[r], "val_loss": losses[picks[r]],
                          "excess_loss": losses[picks[r]] - losses[best],
                          "decades_from_best": math.log10(picks[r] / best)} for r in RULES}}
    print("rule: mean excess val loss over the grid's best LR (per seed)")
    for r in RULES:
        ex = [s["rules"][r]["excess_loss"] for s in result["seeds"].values()]
        print(f"  {r:14s} {sum(ex) / len(ex):.4f}  " + " ".join(f"{e:.4f}" for e in ex))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
