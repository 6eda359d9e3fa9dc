"""The wall time of a whole sweep on one GPU, against the same runs with the transformers Trainer.

A 16-run sweep of the tiny5m shape (vocab 8192, ctx 512, d_model 160, 22 layers, 10 heads, d_ff
240, batch 64; 4 learning rates x 4 seeds, ``--tokens`` each, 10 evaluations per run) on a
synthetic token store (random ids: the timing does not depend on the text):

1. ``sweep``: ``snakemake --profile profiles/gpu`` of that study from nothing but the token
   files: the sweep's wall, token import, start-up, compile, training, evaluation, harvest and
   figures included, and where it went (each training job's start-up, steps, evaluations and
   outputs, from the workflow's own logs: ``bench/cpu_study.py``'s breakdown). Its compile cache
   is recorded: "cold" on a fresh machine, "warm" after an earlier run of the shape (``--part
   solo,sweep``), as a user's second sweep finds it.
2. ``solo``: one of its runs alone on the GPU. The sweep's ideal is all its tokens at that run's
   steady rate (the optimiser steps alone, ``final.json``'s ``tokens_per_s``): the GPU-bound
   time if nothing but training steps ran. Target: the sweep's wall <= 1.3x that ideal. (The
   sweep's own runs' ``train_wall_s`` are no reference: K runs share the GPU, each slowed by
   its neighbours.)
3. ``trainer``: the same runs one after another, each in its own process as a user's loop of
   jobs does, with ``transformers.Trainer`` (``torch_compile=True``, bf16, fused AdamW, cosine
   schedule with warmup, grad clip 1.0, the same evaluations), on the same token windows.
   Target: the sweep >= 8x faster. ``--trainer-runs N`` times only the first N of the 16 and
   scales their sum by 16/N (stated in the output) where the device time does not allow all 16.

    PYTHONPATH=src python3 bench/sweep_wall.py --part sweep --tokens 20M       # cold cache
    PYTHONPATH=src python3 bench/sweep_wall.py --part solo,sweep --tokens 20M  # warm cache
    PYTHONPATH=src python3 bench/sweep_wall.py --part trainer --tokens 20M --trainer-runs 4
    PYTHONPATH=src python3 bench/sweep_wall.py --combine results/<date>-<device>-sweep_wall-*.json
    PYTHONPATH=src python3 bench/sweep_wall.py --device cpu --quick     # smoke test, all parts

Writes ``bench/results/<date>-<device>-sweep_wall-<part>.json``; ``--combine`` prints the ratios
of parts measured on the same machine.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from cpu_study import job_breakdown, print_breakdown  # noqa: E402
from train_throughput import QUICK_SHAPES, SHAPES, device_info, hf_llama  # noqa: E402

LRS = (5e-4, 1e-3, 2e-3, 4e-3)
SEEDS = (0, 1, 2, 3)
EVALS = 10
EVAL_TOKENS = 32_768
TARGETS = {"wall_over_steady_train": 1.3, "speedup_vs_trainer": 8.0}


def parse_tokens(text: str) -> int:
    scale = {"k": 1e3, "m": 1e6, "g": 1e9}.get(text[-1].lower(), 1)
    return int(float(text[:-1] if scale != 1 else text) * scale)


def write_split(path: Path, vocab: int, n: int, seed: int) -> Path:
    import h5py

    ids = np.random.default_rng(seed).integers(0, vocab, size=n).astype(np.uint16)
    with h5py.File(path, "w") as f:
        f.create_dataset("ids", data=ids)
    return path


def study_yaml(work: Path, shape: tuple, tokens: int, device: str, lrs: tuple = LRS,
               seeds: tuple = SEEDS) -> Path:
    vocab, ctx, d, layers, heads, ff, batch = shape
    steps = max(1, tokens // (batch * ctx))
    train = {"tokens": tokens, "batch_size": batch, "seq_len": ctx, "warmup": 0.05,
             "weight_decay": 0.1, "grad_clip": 1.0, "eval_every": max(1, steps // EVALS),
             "eval_tokens": EVAL_TOKENS, "final_eval_tokens": EVAL_TOKENS}
    if device == "cpu":
        train["compile"] = "false"
    study = {
        "study": "sweep_wall",
        "corpora": {"synthetic": {"source": "hdf5", "train": str(work / "train.h5"),
                                  "val": str(work / "val.h5"), "dataset": "ids",
                                  "vocab_size": vocab}},
        "data": {"corpus": "synthetic"},
        "defaults": {"model": {"d_model": d, "n_layers": layers, "n_heads": heads, "d_ff": ff,
                               "context_length": ctx, "tie_embeddings": True},
                     "train": train},
        "sweep": {"grid": {"train.lr": list(lrs)}, "seeds": list(seeds)},
    }
    path = work / "study.yaml"
    path.write_text(json.dumps(study, indent=1))  # JSON is YAML
    return path


def part_sweep(shape: tuple, tokens: int, device: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="lmablate-sweep-wall-") as tmp:
        work = Path(tmp)
        vocab, ctx, *_ = shape
        write_split(work / "train.h5", vocab, max(4_000_000, 64 * ctx * 4), 1)
        write_split(work / "val.h5", vocab, 4 * EVAL_TOKENS, 2)
        study = study_yaml(work, shape, tokens, device)
        cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(work),
               "--configfile", str(study), "--profile", str(REPO / "profiles" / "gpu")]
        if device == "cpu":
            cmd = cmd[:-2] + ["-c2"]
        cache = compile_cache_state()
        t0, t0_epoch = time.perf_counter(), time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=work, check=False)
        wall = time.perf_counter() - t0
        if proc.returncode:
            sys.exit(f"snakemake failed ({proc.returncode}):\n"
                     f"{(proc.stdout + proc.stderr)[-4000:]}")
        paths = sorted(work.glob("results/sweep_wall/runs/*/final.json"))
        finals = [json.loads(p.read_text()) for p in paths]
        ends = [p.stat().st_mtime - t0_epoch for p in paths]
        rates = [steady_rate(p.parent) for p in paths]
        jobs = [float(p.read_text().splitlines()[1].split("\t")[0])
                for p in sorted(work.glob("benchmarks/sweep_wall/train_model/*.tsv"))]
        breakdown = job_breakdown(work, t0_epoch, wall)
        print_breakdown(breakdown)
        breakdown["stepping"] = stepping_profile(breakdown["jobs"], t0_epoch, wall)
        print_stepping(breakdown["stepping"])
    steady = sum(f["train_wall_s"] for f in finals)  # each slowed by its concurrent neighbours
    return {"wall_s": wall, "compile_cache": cache, "runs": len(finals), "steady_train_s": steady,
            "train_wall_s": [f["train_wall_s"] for f in finals],
            "run_wall_s": [f["wall_s"] for f in finals], "job_wall_s": jobs,
            "tokens_per_s_steady": rates,
            "run_end_s": ends, "tokens_total": tokens * len(finals),
            "sum_train_wall_s": steady, "breakdown": breakdown}


def stepping_profile(jobs: list[dict[str, Any]], t0: float, wall: float,
                     dt: float = 0.05) -> dict[str, Any]:
    """How long N training runs were in their training loops at once (steps and periodic
    evaluations, from each job's log; ``N = 0``: no run was using the GPU), over the sweep's wall
    from ``t0``; ``before_first_s``: the wall until the first run's loop began (parse, data, the
    first job's start-up); ``after_last_s``: from the last run's loop end to the sweep's end
    (final evaluation and outputs, harvest, figures, exit)."""
    spans = [(j["loop_start"] - t0, j["loop_end"] - t0) for j in jobs if "loop_start" in j]
    if not spans:
        return {}
    first, last = min(a for a, _ in spans), max(b for _, b in spans)
    seconds: dict[int, float] = {}
    for i in range(int((last - first) / dt)):
        t = first + (i + 0.5) * dt
        n = sum(1 for a, b in spans if a <= t < b)
        seconds[n] = seconds.get(n, 0.0) + dt
    return {"before_first_s": first, "after_last_s": wall - last,
            "seconds_with_n_running": {str(n): v for n, v in sorted(seconds.items())}}


def print_stepping(p: dict[str, Any]) -> None:
    if not p:
        return
    counts = ", ".join(f"{n}: {v:.1f} s" for n, v in p["seconds_with_n_running"].items())
    print(f"    runs in their training loops at once (steps and evaluations): {counts}; before "
          f"the first loop {p['before_first_s']:.1f} s, after the last {p['after_last_s']:.1f} s")


def compile_cache_state() -> str:
    """"warm" where TorchInductor's cache (TORCHINDUCTOR_CACHE_DIR, else
    /tmp/torchinductor_<user>) holds compiled code already (an earlier part or sweep of this
    shape on this machine), else "cold"."""
    d = Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR") or f"/tmp/torchinductor_{getpass.getuser()}")
    return "warm" if d.is_dir() and any(d.rglob("*.py")) else "cold"


def bytecode_state() -> str:
    """"cached" where this Python reads and writes bytecode caches (what a pip install gives),
    else why not: each process (Snakemake, every job, every Trainer run) then compiles torch's
    Python afresh, which the per-job start-up shows."""
    import torch

    from lmablate.gpu import bytecode_uncached

    if not bytecode_uncached(torch):
        return "cached"
    return (f"uncached (PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE')}, "
            f"PYTHONPYCACHEPREFIX={os.environ.get('PYTHONPYCACHEPREFIX')})")


def steady_rate(run_dir: Path) -> float:
    """Median tokens/s of a run's train log windows after the first (the first holds the
    compilation): the optimiser steps' steady rate."""
    rates = [json.loads(line)["tokens_per_s"]
             for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if '"split": "train"' in line and '"step": 1,' not in line]
    return statistics.median(rates[1:] or rates)


def part_solo(shape: tuple, tokens: int, device: str) -> dict[str, Any]:
    """One run of the sweep (the first LR, seed 0) alone on the GPU: its steady tokens/s is the
    rate the sweep's ideal is computed with (tokens of all runs / this rate). Concurrent runs
    share the GPU, so the sweep's own runs' train_wall_s (each slowed by its neighbours) are no
    reference."""
    with tempfile.TemporaryDirectory(prefix="lmablate-sweep-solo-") as tmp:
        work = Path(tmp)
        vocab, ctx, *_ = shape
        write_split(work / "train.h5", vocab, max(4_000_000, 64 * ctx * 4), 1)
        write_split(work / "val.h5", vocab, 4 * EVAL_TOKENS, 2)
        study = study_yaml(work, shape, tokens, device, lrs=LRS[:1], seeds=SEEDS[:1])
        cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(work),
               "--configfile", str(study), "-c4", "--resources", "gpu=1", "--until",
               "train_model"]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=work, check=False)
        if proc.returncode:
            sys.exit(f"snakemake failed ({proc.returncode}):\n"
                     f"{(proc.stdout + proc.stderr)[-4000:]}")
        path = next(work.glob("results/sweep_wall/runs/*/final.json"))
        final = json.loads(path.read_text())
        rate = steady_rate(path.parent)
    return {"tokens_per_s": rate, "train_wall_s": final["train_wall_s"],
            "run_wall_s": final["wall_s"], "tokens": tokens,
            "final_tokens_per_s": final["tokens_per_s"]}


def trainer_one(h5_dir: str, shape: tuple, tokens: int, lr: float, seed: int,
                device: str) -> None:
    """One Trainer run (the child process of ``part_trainer``)."""
    import h5py
    import torch
    from transformers import Trainer, TrainingArguments

    vocab, ctx, *_, batch = shape
    with h5py.File(Path(h5_dir) / "train.h5") as f:
        train_ids = torch.from_numpy(f["ids"][:].astype(np.int64))
    with h5py.File(Path(h5_dir) / "val.h5") as f:
        val_ids = torch.from_numpy(f["ids"][:EVAL_TOKENS + 1].astype(np.int64))

    class Windows(torch.utils.data.Dataset):
        def __init__(self, ids: torch.Tensor):
            self.ids, self.n = ids, (len(ids) - 1) // ctx

        def __len__(self) -> int:
            return self.n

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            w = self.ids[i * ctx:(i + 1) * ctx]
            return {"input_ids": w, "labels": w}

    steps = max(1, tokens // (batch * ctx))
    cuda = device == "cuda"
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="hf-trainer-"), max_steps=steps,
        per_device_train_batch_size=batch, per_device_eval_batch_size=batch,
        learning_rate=lr, warmup_steps=max(1, int(0.05 * steps)), lr_scheduler_type="cosine",
        weight_decay=0.1, adam_beta2=0.95, max_grad_norm=1.0, bf16=cuda, torch_compile=cuda,
        optim="adamw_torch_fused" if cuda else "adamw_torch", eval_strategy="steps",
        eval_steps=max(1, steps // EVALS), logging_steps=max(1, steps // EVALS),
        save_strategy="no", report_to=[], seed=seed, dataloader_num_workers=2,
        use_cpu=not cuda, disable_tqdm=True)
    torch.manual_seed(seed)
    model = hf_llama(shape)
    Trainer(model=model, args=args, train_dataset=Windows(train_ids),
            eval_dataset=Windows(val_ids)).train()


def part_trainer(shape: tuple, tokens: int, device: str, n_runs: int) -> dict[str, Any]:
    points = [(lr, seed) for lr in LRS for seed in SEEDS][:n_runs]
    walls = []
    with tempfile.TemporaryDirectory(prefix="lmablate-sweep-wall-hf-") as tmp:
        work = Path(tmp)
        vocab, ctx, *_ = shape
        write_split(work / "train.h5", vocab, max(4_000_000, 64 * ctx * 4), 1)
        write_split(work / "val.h5", vocab, 4 * EVAL_TOKENS, 2)
        for lr, seed in points:
            spec = json.dumps({"h5_dir": str(work), "shape": list(shape), "tokens": tokens,
                               "lr": lr, "seed": seed, "device": device})
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, __file__, "--trainer-child", spec],
                                  capture_output=True, text=True, check=False)
            walls.append(time.perf_counter() - t0)
            if proc.returncode:
                sys.exit(f"Trainer run failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
            print(f"  Trainer lr={lr:g} seed={seed}: {walls[-1]:.1f} s", flush=True)
    return {"runs_timed": len(walls), "run_wall_s": walls, "sum_s": sum(walls),
            "median_run_s": statistics.median(walls), **trainer_total(walls)}


def trainer_total(walls: list[float]) -> dict[str, Any]:
    """The 16 runs' wall from the timed ones: the first run (cold compile cache) as timed, each
    other run at the median of the later timed ones."""
    total = len(LRS) * len(SEEDS)
    later = statistics.median(walls[1:]) if len(walls) > 1 else walls[0]
    return {"wall_s": walls[0] + later * (total - 1) if len(walls) < total else sum(walls),
            "scaled_from": f"{len(walls)} of {total} runs" if len(walls) < total else None}


def combine(paths: list[Path]) -> None:
    parts = {}
    for p in paths:
        doc = json.loads(p.read_text())
        parts[doc["part"]] = doc["result"]
    s, solo = parts["sweep"], parts["solo"]
    ideal = s["runs"] * solo["tokens"] / solo["tokens_per_s"]
    print(f"sweep wall {s['wall_s']:.1f} s ({s.get('compile_cache', 'cold')} compile cache); "
          f"its {s['runs']} runs' tokens at one run's steady rate "
          f"alone ({solo['tokens_per_s'] / 1e6:.2f}M tok/s): {ideal:.1f} s; "
          f"{s['wall_s'] / ideal:.2f}x (target <= {TARGETS['wall_over_steady_train']}x)")
    if "trainer" in parts:
        t = {**parts["trainer"], **trainer_total(parts["trainer"]["run_wall_s"])}
        print(f"Trainer, 16 runs one after another: {t['wall_s']:.1f} s"
              + (f" (scaled from {t['scaled_from']})" if t["scaled_from"] else "")
              + f": sweep {t['wall_s'] / s['wall_s']:.2f}x faster "
              f"(target >= {TARGETS['speedup_vs_trainer']}x)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", default="all",
                    help="sweep, solo, trainer, all, or several in order: solo,sweep (the solo "
                    "run first warms the compile cache the sweep then finds)")
    ap.add_argument("--tokens", default="20M", help="training tokens per run (20M, 500k, ...)")
    ap.add_argument("--trainer-runs", type=int, default=16, help="Trainer runs to time (of 16)")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny shapes and budget (smoke test)")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--combine", nargs="+", type=Path, metavar="JSON")
    ap.add_argument("--trainer-child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.trainer_child:
        spec = json.loads(args.trainer_child)
        trainer_one(spec["h5_dir"], tuple(spec["shape"]), spec["tokens"], spec["lr"],
                    spec["seed"], spec["device"])
        return 0
    if args.combine:
        combine(args.combine)
        return 0
    shape = QUICK_SHAPES["tiny5m"] if args.quick else SHAPES["tiny5m"]
    tokens = parse_tokens("64k" if args.quick else args.tokens)
    parts = {"sweep": lambda: part_sweep(shape, tokens, args.device),
             "solo": lambda: part_solo(shape, tokens, args.device),
             "trainer": lambda: part_trainer(shape, tokens, args.device, args.trainer_runs)}
    written = []
    chosen = list(parts) if args.part == "all" else args.part.split(",")
    if unknown := [p for p in chosen if p not in parts]:
        ap.error(f"--part: unknown {', '.join(unknown)} (sweep, solo, trainer, all)")
    bytecode = bytecode_state()
    if bytecode != "cached":
        print(f"warning: Python bytecode {bytecode}: every job and Trainer run compiles torch's "
              "Python afresh (~5 s each on an H100 host); run with PYTHONDONTWRITEBYTECODE "
              "unset and PYTHONPYCACHEPREFIX=/tmp/pyc to time what a pip install gives",
              flush=True)
    for part in chosen:
        t0 = time.time()
        result = parts[part]()
        info = device_info(args.device)  # after the runs: no CUDA context held beside them
        doc = {"benchmark": "sweep_wall", "part": part, "date": time.strftime("%Y-%m-%d"),
               "started": t0, "shape": list(shape), "tokens_per_run": tokens, "lrs": list(LRS),
               "seeds": list(SEEDS), "targets": TARGETS, **info, "python_bytecode": bytecode,
               "runs_per_gpu": int(os.environ.get("LMABLATE_RUNS_PER_GPU", "4")),
               "result": result}
        name = info.get("device_name", args.device).replace(" ", "-")
        quick = "-quick" if args.quick else ""
        out = args.out / f"{doc['date']}-{name}-sweep_wall-{part}{quick}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=1) + "\n")
        print(json.dumps({k: v for k, v in result.items() if not isinstance(v, (list, dict))}))
        print(f"wrote {out}")
        written.append(out)
    if {"sweep", "solo"} <= {json.loads(p.read_text())["part"] for p in written}:
        combine(written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
