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
    machine: every other process on the 2 cores slows it. Where the wall goes, from what the
    workflow already writes (Snakemake's log and benchmark files, each training job's log,
    final.json and metrics.jsonl): the timeline (parse, data, training, aggregates), each rule's
    summed job wall, and per training job its start-up (process start and exit, imports and
    device claim, setup: model, optimizer, data) against its training steps, periodic
    evaluations and the rest (final evaluation, checkpoints, outputs).

    PYTHONPATH=src python3 bench/cpu_study.py --part tokens
    PYTHONPATH=src python3 bench/cpu_study.py --part paired   # (a) in one process, paired chunks
    PYTHONPATH=src python3 bench/cpu_study.py --part study
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
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
    """``snakemake -c<cores>`` of config.yaml in a fresh temporary directory: its wall, the
    phases of its timeline and every job's share (:func:`job_breakdown`)."""
    with tempfile.TemporaryDirectory(prefix="lmablate-study-") as tmp:
        work = Path(tmp)
        (work / "config.yaml").write_text((REPO / "config.yaml").read_text())
        cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(work),
               "--configfile", str(work / "config.yaml"), f"-c{cores}"]
        started = time.time()
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=work, check=False,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
        wall = time.perf_counter() - t0
        out = {"cores": cores, "wall_s": wall, "returncode": proc.returncode,
               "jobs": job_breakdown(work, started, wall)}
    if proc.returncode != 0:
        out["error"] = (proc.stdout + proc.stderr)[-2000:]
    return out


def job_breakdown(work: Path, started: float, wall: float) -> dict[str, Any]:
    """What the study's wall is made of, from what the workflow already writes: Snakemake's log
    (each job's start and end, to the second), its benchmark files (each job's wall and CPU
    time) and, per training job, its log's timestamps, final.json and metrics.jsonl
    (:func:`train_parts`)."""
    jobs = snakemake_jobs(work)
    for job in jobs:
        tsv = (work / job["benchmark"]) if job.get("benchmark") else None
        if tsv and tsv.is_file():
            head, row = tsv.read_text().splitlines()[:2]
            values = dict(zip(head.split("\t"), row.split("\t")))
            job["wall_s"], job["cpu_s"] = float(values["s"]), float(values["cpu_time"])
        if job["rule"] == "train_model" and "wall_s" in job:
            job.update(train_parts(work, job["wildcards"]["run_id"], job["wall_s"]))
    rules: dict[str, dict[str, float]] = {}
    for job in jobs:
        r = rules.setdefault(job["rule"], {"jobs": 0, "wall_s": 0.0})
        r["jobs"] += 1
        r["wall_s"] += job.get("wall_s", 0.0)
    trains = [j for j in jobs if j["rule"] == "train_model" and "steps_s" in j]
    total = {k: sum(j[k] for j in trains) for k in TRAIN_PARTS} if trains else {}
    return {"rules": rules, "timeline": timeline(jobs, started, wall), "jobs": jobs,
            "train_totals": total}


# a training job's wall, in order: the process (interpreter start, Snakemake's script
# preamble, exit), imports (torch, the engine) and device claim, setup (model build, data open,
# compile where enabled, checkpoint lookup), the training steps, the periodic evaluations, and
# the rest of the loop (final evaluation, latency, checkpoints, outputs); spacing: of the imports,
# the wait for the GPU's previous job start (lmablate.gpu.space_start; GPU slots only)
TRAIN_PARTS = ("wall_s", "process_s", "imports_s", "setup_s", "steps_s", "evals_s", "final_s",
               "spacing_s")
SPACING = re.compile(r"starting ([\d.]+) s later")
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ [\w.]+: (.*)$")


def train_parts(work: Path, run_id: str, wall: float) -> dict[str, float]:
    """One training job's wall split into :data:`TRAIN_PARTS` from its log lines (``device``,
    ``starting``/``resumed``, ``done``, ``step finished in``), final.json's ``train_wall_s`` and
    metrics.jsonl's ``eval_s``; ``loop_start``, ``loop_end``: when (epoch seconds) its training
    loop began and its steps and periodic evaluations ended."""
    events: dict[str, float] = {}
    step_s, spacing = None, 0.0
    for line in next(work.glob(f"logs/*/train_model/{run_id}.log")).read_text().splitlines():
        m = LOG_TIME.match(line)
        if not m:
            continue
        t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        msg = m.group(2)
        for key in ("device", "starting", "resumed", "done", "step finished in"):
            if msg.startswith(key):
                events[key] = t
        if msg.startswith("step finished in"):
            step_s = float(msg.split()[3])
        if m := SPACING.search(msg):
            spacing = float(m.group(1))
    run_dir = next(work.glob(f"results/*/runs/{run_id}"))
    final = json.loads((run_dir / "final.json").read_text())
    evals = sum(json.loads(ln).get("eval_s", 0.0)
                for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip())
    begin = events["step finished in"] - step_s
    loop_start = events.get("starting", events.get("resumed"))
    loop = events["done"] - loop_start
    return {"process_s": wall - step_s, "imports_s": events["device"] - begin,
            "setup_s": loop_start - events["device"], "steps_s": final["train_wall_s"],
            "evals_s": evals, "final_s": loop - final["train_wall_s"] - evals,
            "spacing_s": spacing, "loop_start": loop_start,
            "loop_end": loop_start + final["train_wall_s"] + evals}


JOB_START = re.compile(r"^(local)?rule (\w+):$")
JOB_END = re.compile(r"^Finished jobid: (\d+) \(Rule: (\w+)\)$")


def snakemake_jobs(work: Path) -> list[dict[str, Any]]:
    """Every job of the run in Snakemake's log: rule, jobid, wildcards, benchmark file, start and
    end (epoch seconds, to the second)."""
    log = sorted(work.glob(".snakemake/log/*.snakemake.log"))[-1]
    jobs: dict[str, dict[str, Any]] = {}
    stamp, current = None, None
    for line in log.read_text().splitlines():
        text = line.strip()
        if text.startswith("[") and text.endswith("]"):
            stamp = datetime.strptime(text[1:-1], "%a %b %d %H:%M:%S %Y").timestamp()
        elif m := JOB_START.match(text):
            current = {"rule": m.group(2), "start": stamp, "wildcards": {}}
        elif current is not None and text.startswith("jobid: "):
            jobs[text.split()[1]] = current
        elif current is not None and text.startswith("benchmark: "):
            current["benchmark"] = text.split(": ", 1)[1]
        elif current is not None and text.startswith("wildcards: "):
            current["wildcards"] = dict(kv.split("=", 1)
                                        for kv in text.split(": ", 1)[1].split(", "))
        elif m := JOB_END.match(text):
            jobs[m.group(1)]["end"] = stamp
            current = None
    return list(jobs.values())


def timeline(jobs: list[dict[str, Any]], started: float, wall: float) -> dict[str, float]:
    """The study's wall in phases (to the second): parse and DAG until the first job, data
    preparation, training (first training job's start to the last one's end), the aggregate
    jobs after it, and the exit after the last job."""
    def span(rules: tuple[str, ...]) -> tuple[float, float]:
        sel = [j for j in jobs if j["rule"] in rules]
        return min(j["start"] for j in sel), max(j["end"] for j in sel)

    data = span(("prepare_corpus", "train_tokenizer", "tokenize_corpus"))
    train = span(("train_model",))
    first, last = min(j["start"] for j in jobs), max(j["end"] for j in jobs)
    return {"parse_and_dag_s": first - started, "data_s": data[1] - data[0],
            "training_s": train[1] - train[0], "after_training_s": last - train[1],
            "exit_s": started + wall - last}


def print_breakdown(jobs: dict[str, Any]) -> None:
    """The study's timeline, each rule's summed job wall, and the training jobs' parts."""
    line = jobs["timeline"]
    print("    timeline: " + ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {v:.0f} s"
                                       for k, v in line.items()))
    for rule, r in jobs["rules"].items():
        print(f"    {rule:<20} {r['jobs']:3d} jobs {r['wall_s']:8.1f} s summed")
    t = jobs["train_totals"]
    if not t:
        return
    startup = t["process_s"] + t["imports_s"] + t["setup_s"]
    print(f"    training jobs, summed: {t['wall_s']:.1f} s = start-up {startup:.1f} s "
          f"({startup / t['wall_s']:.0%}: process start/exit {t['process_s']:.1f}, imports "
          f"{t['imports_s']:.1f} of which start spacing {t['spacing_s']:.1f}, setup "
          f"{t['setup_s']:.1f}) + steps {t['steps_s']:.1f} s "
          f"({t['steps_s'] / t['wall_s']:.0%}) + periodic evaluation {t['evals_s']:.1f} s + "
          f"final evaluation, checkpoints, outputs {t['final_s']:.1f} s")
    print(f"    {'run':<28} {'job s':>6} {'process':>8} {'imports':>8} {'setup':>6} "
          f"{'steps':>6} {'evals':>6} {'final':>6} {'spacing':>8}")
    for j in jobs["jobs"]:
        if "steps_s" in j:
            print(f"    {j['wildcards']['run_id'][:28]:<28} " + " ".join(
                f"{j[k]:{w}.1f}" for k, w in zip(TRAIN_PARTS, (6, 8, 8, 6, 6, 6, 6, 8))))


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
                              "platform": platform.platform(), "python": platform.python_version(),
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
        print_breakdown(s["jobs"])
    result["load_avg_at_end"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{result['date']}-cpu-cpu_study-{args.part}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
