"""Aggregate throughput of a 16-run tiny5m sweep (4 LRs x 4 seeds) on one GPU, per executor.

==================  ===============================================================================
``sequential``      one process trains the 16 runs one after another; the step (lmablate's, CUDA
                    graphs) is compiled once and reused: parameters re-initialised in place, a new
                    AdamW per run
``processes-N``     N such processes at once, 16 / N runs each (what ``LMABLATE_RUNS_PER_GPU=N``
                    slots of :func:`lmablate.gpu.claim_device` give a Snakemake sweep)
``fused-K``         one process, :class:`lmablate.engine.fused.FusedTrainer`: K members as one
batched
                    model (stacked parameters, per-member LR / seed / schedule), 16 / K groups,
                    compiled once (:meth:`~lmablate.engine.fused.FusedTrainer.reset` between groups)
``fused-KxP``       P processes of ``fused-K`` at once
==================  ===============================================================================

Every run trains ``--steps`` full steps (batch 64 x 512 tokens). Two numbers per executor:
``tokens_per_s_wall``, every token over the wall time from launching the processes to the last
one's end (Python start, compilation and re-initialisation included), and
``tokens_per_s_steady``, the sum over processes of tokens after each one's first step over the
time since then (the rate once compiled). Target: >= 5M tokens/s aggregate on one H100.

    PYTHONPATH=src python3 bench/sweep_throughput.py [--executors sequential,processes-4,fused-8]
    PYTHONPATH=src python3 bench/sweep_throughput.py --device cpu --quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import (
    QUICK_SHAPES,
    SHAPES,
    TRAIN_TOKENS,
    device_info,
    random_tokens,
    run_config,
)

HERE = Path(__file__).resolve().parent
LRS = (1e-3, 2e-3, 4e-3, 8e-3)
SEEDS = (0, 1, 2, 3)
TARGET = 5e6
EXECUTORS = ("sequential", "processes-4", "fused-4", "fused-8", "fused-4x4")


def member_cfgs(runs: list[tuple[float, int]], shape: tuple, device: str, steps: int):
    batch, ctx = shape[6], shape[1]
    return [run_config(shape, device, tokens=steps * batch * ctx, lr=lr, seed=seed,
                       warmup=0.1) for lr, seed in runs]


def worker_single(runs, shape, device, steps) -> dict[str, Any]:
    """Runs one after another, lmablate's step compiled once."""
    import torch

    from lmablate.data.tokens import Batches
    from lmablate.engine import step as st
    from lmablate.engine.model import LM
    from lmablate.engine.schedule import get_lr, make_plan

    dev = torch.device(device)
    cfgs = member_cfgs(runs, shape, device, steps)
    vocab, ctx, *_, batch = shape
    tokens = random_tokens(vocab, TRAIN_TOKENS if device == "cuda" else 50_000)
    autocast = torch.bfloat16 if device == "cuda" else None
    torch.manual_seed(cfgs[0].train.seed)
    model = LM(cfgs[0].model, vocab, max_seq_len=ctx).to(dev)
    loss_fn, graphs = st.loss_function(model, cfgs[0], dev, autocast)
    finals, marks = [], []
    for r, cfg in enumerate(cfgs):
        torch.manual_seed(cfg.train.seed)
        model.init_weights()
        opt = st.make_optimizer(model, cfg, dev)
        plan = make_plan(cfg, len(tokens))
        data = st.DeviceBatches(Batches(tokens, ctx, batch, cfg.train.seed), dev)
        for step in range(plan.total_steps):
            for g in opt.param_groups:
                g["lr"] = get_lr(step, cfg, plan)
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()
            loss, total = loss_fn(data.get(step))
            total.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if r == 0 and step == 0:
                marks.append(_synced(dev))
        finals.append(float(loss))
    return {"finals": finals, "steady_start": marks[0], "end": _synced(dev),
            "steady_tokens": (len(cfgs) * steps - 1) * batch * ctx}


def worker_fused(runs, shape, device, steps, k) -> dict[str, Any]:
    """Groups of k members, one FusedTrainer compiled once."""
    import torch

    from lmablate.engine.fused import FusedBatches, FusedTrainer

    dev = torch.device(device)
    cfgs = member_cfgs(runs, shape, device, steps)
    vocab, ctx, *_, batch = shape
    tokens = random_tokens(vocab, TRAIN_TOKENS if device == "cuda" else 50_000)
    finals, marks, trainer = [], [], None
    for g in range(0, len(cfgs), k):
        group = cfgs[g:g + k]
        if trainer is None:
            trainer = FusedTrainer(group, vocab, len(tokens), dev)
        else:
            trainer.reset(group, len(tokens))
        data = FusedBatches(tokens, ctx, batch, [c.train.seed for c in group], dev)
        for step in range(trainer.total_steps):
            losses = trainer.step(data.get(step))
            if g == 0 and step == 0:
                marks.append(_synced(dev))
        finals += [float(x) for x in losses]
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    return {"finals": finals, "steady_start": marks[0], "end": _synced(dev), "peak_mem_mb": peak,
            "steady_tokens": (len(cfgs) * steps - k) * batch * ctx}


def _synced(dev) -> float:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return time.time()


def parse(executor: str) -> tuple[str, int, int]:
    """("single" | "fused", members per process, processes)."""
    if executor == "sequential":
        return "single", 1, 1
    if executor.startswith("processes-"):
        return "single", 1, int(executor.split("-")[1])
    k, _, p = executor.split("-")[1].partition("x")
    return "fused", int(k), int(p or 1)


def run_executor(executor: str, shape: tuple, device: str, steps: int, work: Path,
                 timeout: float) -> dict[str, Any]:
    kind, k, procs = parse(executor)
    runs = [(lr, s) for lr in LRS for s in SEEDS]
    per = len(runs) // procs
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src") + os.pathsep +
           os.environ.get("PYTHONPATH", "")}
    t0 = time.time()
    children = []
    for p in range(procs):
        spec = {"kind": kind, "k": k, "runs": runs[p * per:(p + 1) * per], "shape": shape,
                "device": device, "steps": steps, "result": str(work / f"{executor}-{p}.json")}
        log = open(spec["result"] + ".log", "w")  # noqa: SIM115 (open while it runs)
        children.append((subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(spec)],
                                          stdout=log, stderr=subprocess.STDOUT, env=env), spec,
                         log))
    outs, errors = [], []
    for proc, spec, log in children:
        try:
            proc.wait(timeout=max(1.0, timeout - (time.time() - t0)))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        if proc.returncode == 0:
            outs.append(json.loads(Path(spec["result"]).read_text()))
        else:
            errors.append(f"exit {proc.returncode}: "
                          f"{Path(spec['result'] + '.log').read_text()[-1200:]}")
    wall = time.time() - t0
    batch, ctx = shape[6], shape[1]
    row: dict[str, Any] = {"executor": executor, "members_per_model": k, "processes": procs,
                           "runs": len(runs), "steps_per_run": steps, "wall_s": wall}
    if errors:
        row["error"] = errors[0]
        return row
    row.update({
        "tokens": len(runs) * steps * batch * ctx,
        "tokens_per_s_wall": len(runs) * steps * batch * ctx / wall,
        "tokens_per_s_steady": sum(o["steady_tokens"] / (o["end"] - o["steady_start"])
                                   for o in outs),
        "startup_s": max(o["steady_start"] for o in outs) - t0,
        "final_losses": [x for o in outs for x in o["finals"]],
        "peak_mem_mb": max((o.get("peak_mem_mb") or 0) for o in outs) or None,
    })
    return row


def write_result(args: argparse.Namespace, info: dict[str, Any], shape: tuple, steps: int,
                 rows: list[dict[str, Any]]) -> None:
    date = args.date or time.strftime("%Y-%m-%d")
    tag = info.get("device_name", "cpu").replace(" ", "-")
    tag = f"{args.tag}-{tag}" if args.tag else tag
    result = {"benchmark": "sweep_throughput", "date": date, "quick": args.quick,
              "shape": shape, "steps_per_run": steps, "lrs": LRS, "seeds": SEEDS,
              "target_tokens_per_s": TARGET, **info,
              "rows": rows}
    for dest in [args.out] + ([args.copy_to] if args.copy_to else []):
        dest.mkdir(parents=True, exist_ok=True)
        path = dest / f"{date}-{tag}-sweep_throughput{'-quick' if args.quick else ''}.json"
        path.write_text(json.dumps(result, indent=1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--executors", default=",".join(EXECUTORS))
    ap.add_argument("--steps", type=int, default=None, help="steps per run")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per executor")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--copy-to", type=Path, default=None)
    ap.add_argument("--date", default=None, help="date in the file name (default today)")
    ap.add_argument("--tag", default="", help="tag after the date in the file name")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        runs = [tuple(r) for r in spec["runs"]]
        if spec["kind"] == "single":
            res = worker_single(runs, tuple(spec["shape"]), spec["device"], spec["steps"])
        else:
            res = worker_fused(runs, tuple(spec["shape"]), spec["device"], spec["steps"],
                               spec["k"])
        Path(spec["result"]).write_text(json.dumps(res))
        return 0
    shape = (QUICK_SHAPES if args.quick else SHAPES)["tiny5m"]
    steps = args.steps or (3 if args.quick else 100)
    work = Path(tempfile.mkdtemp(prefix="lmablate-sweep-"))
    info = device_info(args.device)
    rows: list[dict[str, Any]] = []
    for ex in args.executors.split(","):
        row = run_executor(ex, shape, args.device, steps, work, args.timeout)
        rows.append(row)
        print(f"  {ex:12s} " + (f"{row['tokens_per_s_wall']:>12,.0f} tok/s wall, "
                                f"{row['tokens_per_s_steady']:>12,.0f} steady"
                                if "error" not in row else row["error"][-400:]), flush=True)
        write_result(args, info, shape, steps, rows)  # after each: a later one may time out
    print(f"\n16 tiny5m runs x {steps} steps, {info.get('device_name', 'cpu')}, torch "
          f"{info['torch']}; target {TARGET:,.0f} tok/s")
    print(f"{'executor':12s} {'wall s':>7s} {'startup s':>9s} {'tok/s wall':>12s} "
          f"{'tok/s steady':>13s} {'peak MiB':>9s}")
    for r in rows:
        if "error" in r:
            print(f"{r['executor']:12s} ERROR")
            continue
        print(f"{r['executor']:12s} {r['wall_s']:>7.1f} {r['startup_s']:>9.1f} "
              f"{r['tokens_per_s_wall']:>12,.0f} {r['tokens_per_s_steady']:>13,.0f} "
              f"{r['peak_mem_mb'] or 0:>9,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
