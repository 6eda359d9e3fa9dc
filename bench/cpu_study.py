"""The CPU side: training tokens/s against transformers, and the default study's wall time.

(a) ``tokens``: one thread, the default study's shape (config.yaml: d_model 64, 2 layers, 4 heads,
    SwiGLU d_ff 171, tied, vocab 2048, seq 64, batch 16), fp32, the same full steps (forward,
    backward, clip, AdamW) for lmablate's step (what ``train()`` runs on a CPU: eager model, loss
    from :func:`lmablate.engine.step.loss_function`, windows from ``Batches``) and transformers'
    ``LlamaForCausalLM`` (eager; SDPA attention; loss from ``labels``). Each in a fresh process,
    timed after 3 warm-up steps, best of 2 repeats, the pair run twice in alternating order (the
    machine is shared). Target: lmablate >= 1.3x.
(b) ``study``: ``snakemake -c2`` of the default study (config.yaml) in a temporary directory,
    from nothing to the report's inputs, wall time. Target: <= 3 minutes. Run it on a quiet
    machine: every other process on the 2 cores slows it.

    PYTHONPATH=src python3 bench/cpu_study.py --part tokens
    PYTHONPATH=src python3 bench/cpu_study.py --part paired   # (a) in one process, paired chunks
    PYTHONPATH=src python3 bench/cpu_study.py --part study
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import run_workers

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# (vocab, ctx, d_model, layers, heads, d_ff, batch): config.yaml's defaults, d_ff = 8/3 * 64
DEFAULT_SHAPE = (2048, 64, 64, 2, 4, 171, 16)
TARGETS = {"tokens_ratio_vs_hf": 1.3, "study_wall_s": 180}


def part_tokens(steps: int, rounds: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="lmablate-cpu-"))
    rows = []
    for r in range(rounds):
        order = ("lm", "hf-eager") if r % 2 == 0 else ("hf-eager", "lm")
        specs = [{"impl": impl, "shape_name": "default", "shape": DEFAULT_SHAPE, "device": "cpu",
                  "steps": steps, "warmup": 3, "lock": None, "threads": 1,
                  "result": str(work / f"{impl}-{r}.json")} for impl in order]
        rows += run_workers(specs, parallel=1, timeout=600, budget=3600)
    rates = {impl: [r["tokens_per_s"] for r in rows if r["impl"] == impl and "error" not in r]
             for impl in ("lm", "hf-eager")}
    best = {impl: max(v) for impl, v in rates.items()}
    median = {impl: statistics.median(v) for impl, v in rates.items()}
    return {"shape": dict(zip(("vocab", "ctx", "d_model", "layers", "heads", "d_ff", "batch"),
                              DEFAULT_SHAPE)),
            "threads": 1, "steps": steps, "rows": rows, "best_tokens_per_s": best,
            "ratio_lm_vs_hf": best["lm"] / best["hf-eager"], "median_tokens_per_s": median,
            "ratio_lm_vs_hf_median": median["lm"] / median["hf-eager"]}


def part_paired(steps: int, rounds: int) -> dict[str, Any]:
    """Both steps built in one process (one thread), timed in alternating chunks of ``steps``
    steps, ``rounds`` pairs: each chunk pair shares the machine's load at that moment, so the
    median of the per-pair ratios is steadier on a shared machine than separate processes."""
    import torch
    from train_throughput import make_step

    torch.set_num_threads(1)
    built = {impl: make_step(impl, DEFAULT_SHAPE, "cpu") for impl in ("lm", "hf-eager")}
    for step, _, _ in built.values():
        for i in range(3):
            step(i)
    rates: dict[str, list[float]] = {"lm": [], "hf-eager": []}
    for r in range(rounds):
        order = ("lm", "hf-eager") if r % 2 == 0 else ("hf-eager", "lm")
        for impl in order:
            step, _, tps = built[impl]
            t0 = time.perf_counter()
            for i in range(steps):
                step(3 + r * steps + i)
            rates[impl].append(steps * tps / (time.perf_counter() - t0))
    ratios = [a / b for a, b in zip(rates["lm"], rates["hf-eager"])]
    return {"steps_per_chunk": steps, "pairs": rounds, "tokens_per_s": rates,
            "median_tokens_per_s": {k: statistics.median(v) for k, v in rates.items()},
            "pair_ratios": ratios, "ratio_lm_vs_hf_median": statistics.median(ratios)}


def part_study(cores: int) -> dict[str, Any]:
    """``snakemake -c<cores>`` of config.yaml in a fresh temporary directory, with every job's
    wall (Snakemake's benchmark files) and, for training jobs, what of it was start-up (job wall
    minus ``train()``'s own wall: interpreter, imports, Snakemake's job wrapper), training steps
    and evaluation (``final.json``'s ``train_wall_s``; the rest of ``wall_s``)."""
    with tempfile.TemporaryDirectory(prefix="lmablate-study-") as tmp:
        work = Path(tmp)
        (work / "config.yaml").write_text((REPO / "config.yaml").read_text())
        cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(work),
               "--configfile", str(work / "config.yaml"), f"-c{cores}"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=work, check=False,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
        wall = time.perf_counter() - t0
        out = {"cores": cores, "wall_s": wall, "returncode": proc.returncode,
               "jobs": job_breakdown(work)}
    if proc.returncode != 0:
        out["error"] = (proc.stdout + proc.stderr)[-2000:]
    return out


def job_breakdown(work: Path) -> dict[str, Any]:
    """Per rule: jobs and their summed wall; per training job: start-up, steps, evaluation."""
    rules: dict[str, dict[str, float]] = {}
    runs = []
    for tsv in sorted(work.glob("benchmarks/*/**/*.tsv")):
        rows = tsv.read_text().splitlines()
        job_s = float(rows[1].split("\t")[0])
        # benchmarks/<rule>/<x>.tsv, benchmarks/<study>/<rule>/<x>.tsv,
        # benchmarks/<study>/<rule>.tsv
        study_level = (work / "results" / tsv.parent.name).is_dir()
        rule = tsv.stem if study_level else tsv.parent.name
        r = rules.setdefault(rule, {"jobs": 0, "wall_s": 0.0})
        r["jobs"] += 1
        r["wall_s"] += job_s
        if rule == "train_model":
            final = json.loads(next(work.glob(f"results/*/runs/{tsv.stem}/final.json")).read_text())
            runs.append({"run_id": tsv.stem, "job_s": job_s,
                         "startup_s": job_s - final["wall_s"], "train_s": final["train_wall_s"],
                         "eval_and_save_s": final["wall_s"] - final["train_wall_s"]})
    total = {k: sum(r[k] for r in runs) for k in ("job_s", "startup_s", "train_s",
                                                 "eval_and_save_s")} if runs else {}
    return {"rules": rules, "train_runs": runs, "train_totals": total}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("tokens", "paired", "study", "all"), default="all")
    ap.add_argument("--steps", type=int, default=60, help="(a) timed steps per repeat")
    ap.add_argument("--rounds", type=int, default=2, help="(a) runs of each implementation")
    ap.add_argument("--cores", type=int, default=2, help="(b) snakemake -c")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    import torch

    result: dict[str, Any] = {"benchmark": "cpu_study", "date": time.strftime("%Y-%m-%d"),
                              "torch": torch.__version__, "cpu": platform.processor() or
                              platform.machine(), "cpu_count": os.cpu_count(),
                              "load_avg_at_start": os.getloadavg(), "targets": TARGETS}
    if args.part in ("tokens", "all"):
        result["tokens"] = t = part_tokens(args.steps, args.rounds)
        print(f"(a) one thread, default study shape: lmablate {t['best_tokens_per_s']['lm']:,.0f}"
              f" tok/s, transformers {t['best_tokens_per_s']['hf-eager']:,.0f} tok/s: "
              f"{t['ratio_lm_vs_hf']:.2f}x best of {args.rounds} processes each, "
              f"{t['ratio_lm_vs_hf_median']:.2f}x median (target {TARGETS['tokens_ratio_vs_hf']}x)")
    if args.part in ("paired", "all"):
        result["paired"] = t = part_paired(20, max(8, args.rounds * 4))
        print(f"(a') one process, alternating chunks of 20 steps: median lmablate "
              f"{t['median_tokens_per_s']['lm']:,.0f} tok/s, transformers "
              f"{t['median_tokens_per_s']['hf-eager']:,.0f} tok/s; median pair ratio "
              f"{t['ratio_lm_vs_hf_median']:.2f}x (target {TARGETS['tokens_ratio_vs_hf']}x)")
    if args.part in ("study", "all"):
        result["study"] = s = part_study(args.cores)
        print(f"(b) snakemake -c{args.cores} default study: {s['wall_s']:.1f} s "
              f"(target <= {TARGETS['study_wall_s']} s)" + (" FAILED" if "error" in s else ""))
        for rule, r in s["jobs"]["rules"].items():
            print(f"    {rule:<20} {r['jobs']:3d} jobs {r['wall_s']:8.1f} s summed")
        if s["jobs"]["train_totals"]:
            t = s["jobs"]["train_totals"]
            print(f"    training jobs: start-up {t['startup_s']:.1f} s, "
                  f"steps {t['train_s']:.1f} s, "
                  f"evaluation + saving {t['eval_and_save_s']:.1f} s "
                  f"(summed over jobs; {t['startup_s'] / t['job_s']:.0%} start-up)")
    result["load_avg_at_end"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{result['date']}-cpu-cpu_study-{args.part}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
